//! Legacy `conversations`: `sessionId` (sometimes null or missing: the bug behind the E11000
//! errors), `userId`, `language`, `transcript`, `analysis`, `messages[]`, `createdAt`,
//! `updatedAt`. Documents with the same sessionId become one conversation holding the union
//! of their messages in timestamp order; a message's id is derived from the message, so a
//! message seen twice (or in a second run) is stored once.

use super::{extjson, record_sources, transaction_time, Collection, Group, Importer, MapRow, Outcome, Parsed, Summary};
use crate::conversations::model::{MAX_LANGUAGE_CHARS, MAX_USER_ID_CHARS};
use crate::domain::{check_json_storable, optional_text, SessionId};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// Keys of documents without a session id start with this: it can never start a session id,
/// so each such document stays a group of its own.
const NO_SESSION: char = '#';

pub struct Conversations;

pub struct Conversation {
    user_id: Option<String>,
    language: Option<String>,
    transcript: Option<String>,
    analysis: Option<Value>,
    messages: Vec<Message>,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
}

struct Message {
    legacy_id: Option<String>,
    role: &'static str,
    text: String,
    translation: Option<String>,
    grammar_suggestion: Option<String>,
    phonemes: Option<Value>,
    feedback: Option<Value>,
    timestamp: Option<DateTime<Utc>>,
}

impl Message {
    /// Deterministic (a UUIDv8 over SHA-256): the legacy `_id` when there is one, else the
    /// message's session, time, role and text.
    fn id(&self, session_id: &str) -> Uuid {
        let mut hash = Sha256::new();
        for part in [session_id, "\0"] {
            hash.update(part);
        }
        match &self.legacy_id {
            Some(id) => hash.update(format!("_id\0{id}")),
            None => {
                let at = self.timestamp.map(|t| t.to_rfc3339()).unwrap_or_default();
                hash.update(format!("{at}\0{}\0{}", self.role, self.text));
            }
        }
        let digest = hash.finalize();
        let mut bytes = [0_u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }
}

fn text(doc: &Value, name: &str, max_chars: usize) -> Result<Option<String>, String> {
    let value = extjson::string(doc, name)?;
    optional_text(name, value.as_deref(), max_chars).map_err(|e| format!("{}: {}", e.field, e.message))?;
    Ok(value)
}

fn json(doc: &Value, name: &str) -> Result<Option<Value>, String> {
    let Some(value) = extjson::field(doc, name).map(extjson::plain) else { return Ok(None) };
    check_json_storable(name, &value).map_err(|e| format!("{}: {}", e.field, e.message))?;
    Ok(Some(value))
}

fn message(doc: &Value, fixes: &mut Vec<&'static str>) -> Result<Message, String> {
    let role = match extjson::string(doc, "role")?.as_deref() {
        Some("user") => "user",
        Some("bot") => "bot",
        Some("assistant") => {
            fixes.push("message role assistant stored as bot");
            "bot"
        }
        Some(other) => return Err(format!("role: {other:?} is not user or bot")),
        None => return Err("role: missing".into()),
    };
    Ok(Message {
        legacy_id: extjson::field(doc, "_id").and_then(extjson::id),
        role,
        text: text(doc, "text", usize::MAX)?.ok_or("text: missing")?,
        translation: text(doc, "translation", usize::MAX)?,
        grammar_suggestion: text(doc, "grammarSuggestion", usize::MAX)?,
        phonemes: json(doc, "phonemes")?,
        feedback: json(doc, "feedback")?,
        timestamp: extjson::date(doc, "timestamp")?,
    })
}

impl Importer for Conversations {
    type Doc = Conversation;

    fn parse(&self, doc: &Value) -> Result<Parsed<Conversation>, String> {
        let session_id = extjson::string(doc, "sessionId")?.filter(|s| !s.is_empty());
        let key = match session_id {
            Some(raw) => {
                SessionId::parse("sessionId", &raw).map_err(|e| format!("{}: {}", e.field, e.message))?.to_string()
            }
            None => format!("{NO_SESSION}{}", super::source_id(doc)),
        };
        let mut fixes = Vec::new();
        let listed = match extjson::field(doc, "messages") {
            None => &[][..],
            Some(Value::Array(items)) => items.as_slice(),
            Some(_) => return Err("messages: not an array".into()),
        };
        let messages = listed
            .iter()
            .enumerate()
            .map(|(i, m)| message(m, &mut fixes).map_err(|reason| format!("messages[{i}].{reason}")))
            .collect::<Result<_, _>>()?;
        let conversation = Conversation {
            user_id: text(doc, "userId", MAX_USER_ID_CHARS)?,
            language: text(doc, "language", MAX_LANGUAGE_CHARS)?,
            transcript: text(doc, "transcript", usize::MAX)?,
            analysis: json(doc, "analysis")?,
            messages,
            created_at: extjson::date(doc, "createdAt")?,
            updated_at: extjson::date(doc, "updatedAt")?,
        };
        Ok(Parsed { key, doc: conversation, fixes })
    }

    async fn write(
        &mut self,
        tx: &mut PgConnection,
        groups: &[Group<Conversation>],
        summary: &mut Summary,
    ) -> anyhow::Result<()> {
        let pending: Vec<String> =
            groups.iter().filter(|g| g.key.starts_with(NO_SESSION)).map(|g| g.docs[0].source_id.clone()).collect();
        let earlier: HashMap<String, String> = sqlx::query!(
            "SELECT s.source_id, c.session_id FROM import_sources s JOIN conversations c ON c.id = s.target_id
             WHERE s.collection = 'conversations' AND s.source_id = ANY($1)",
            &pending,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| (r.source_id, r.session_id))
        .collect();
        let now = transaction_time(tx).await?;
        for group in groups {
            let session_id = match group.key.strip_prefix(NO_SESSION) {
                None => group.key.clone(),
                Some(source_id) => match earlier.get(source_id) {
                    Some(session_id) => session_id.clone(),
                    None => {
                        summary.fix("missing or null sessionId given a fresh one");
                        SessionId::generate().to_string()
                    }
                },
            };
            let id = write_group(tx, &session_id, group, now, summary).await?;
            let sources: Vec<String> = group.docs.iter().map(|d| d.source_id.clone()).collect();
            record_sources(tx, Collection::Conversations, &sources, &vec![id; sources.len()]).await?;
            summary.map.extend(sources.into_iter().map(|source_id| MapRow {
                source_id,
                target_id: id,
                key: session_id.clone(),
            }));
        }
        Ok(())
    }
}

/// Upserts the conversation (filling only fields it lacks, so live data is never overwritten)
/// and appends the messages it does not hold yet, oldest first. Returns its id.
async fn write_group(
    tx: &mut PgConnection,
    session_id: &str,
    group: &Group<Conversation>,
    now: DateTime<Utc>,
    summary: &mut Summary,
) -> anyhow::Result<Uuid> {
    // Newest document last, so its values win.
    let mut docs: Vec<&Conversation> = group.docs.iter().map(|d| &d.doc).collect();
    docs.sort_by_key(|d| d.updated_at.or(d.created_at));
    let user_id = newest(&docs, |d| d.user_id.as_ref());
    let language = newest(&docs, |d| d.language.as_ref());
    let transcript = newest(&docs, |d| d.transcript.as_ref());
    let analysis = newest(&docs, |d| d.analysis.as_ref());
    let created_at = docs.iter().filter_map(|d| d.created_at).min();
    let updated_at = docs.iter().filter_map(|d| d.updated_at).max();
    let upserted = sqlx::query!(
        r#"INSERT INTO conversations AS c (id, session_id, user_id, language, transcript, analysis, created_at,
            updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now()), coalesce($8, $7, now()))
           ON CONFLICT (session_id) DO UPDATE SET
               user_id = coalesce(c.user_id, EXCLUDED.user_id),
               language = coalesce(c.language, EXCLUDED.language),
               transcript = coalesce(c.transcript, EXCLUDED.transcript),
               analysis = coalesce(c.analysis, EXCLUDED.analysis),
               created_at = least(c.created_at, EXCLUDED.created_at),
               version = c.version + 1,
               updated_at = $9
           WHERE (c.user_id IS NULL AND EXCLUDED.user_id IS NOT NULL)
              OR (c.language IS NULL AND EXCLUDED.language IS NOT NULL)
              OR (c.transcript IS NULL AND EXCLUDED.transcript IS NOT NULL)
              OR (c.analysis IS NULL AND EXCLUDED.analysis IS NOT NULL)
              OR EXCLUDED.created_at < c.created_at
           RETURNING id, version"#,
        Uuid::now_v7(),
        session_id,
        user_id,
        language,
        transcript,
        analysis,
        created_at,
        updated_at,
        now,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let (id, mut outcome) = match upserted {
        // Inserts start at version 1 and every update adds one.
        Some(row) if row.version == 1 => (row.id, Outcome::Inserted),
        Some(row) => (row.id, Outcome::Updated),
        // Locked as an insert or update would have: the messages draw their seq after the
        // conversation's last one, which an append running meanwhile must not draw too.
        None => {
            let id = sqlx::query_scalar!("SELECT id FROM conversations WHERE session_id = $1 FOR UPDATE", session_id)
                .fetch_one(&mut *tx)
                .await?;
            (id, Outcome::Unchanged)
        }
    };
    let added = append_messages(tx, id, session_id, group, outcome, summary).await?;
    if added > 0 && outcome == Outcome::Unchanged {
        outcome = Outcome::Updated;
    }
    summary.count(outcome);
    Ok(id)
}

/// The value of the newest document that has one (`docs` is sorted oldest first).
fn newest<T: Clone>(docs: &[&Conversation], pick: impl Fn(&Conversation) -> Option<&T>) -> Option<T> {
    docs.iter().rev().find_map(|d| pick(d)).cloned()
}

/// The group's messages, each once, in timestamp order (a message without one takes its
/// document's creation time); the append counts as one change of the conversation.
async fn append_messages(
    tx: &mut PgConnection,
    conversation_id: Uuid,
    session_id: &str,
    group: &Group<Conversation>,
    outcome: Outcome,
    summary: &mut Summary,
) -> anyhow::Result<u64> {
    let mut seen = HashSet::new();
    let mut messages: Vec<(Uuid, Option<DateTime<Utc>>, &Message)> = Vec::new();
    for doc in group.docs.iter().map(|d| &d.doc) {
        for m in &doc.messages {
            let id = m.id(session_id);
            if seen.insert(id) {
                messages.push((id, m.timestamp.or(doc.created_at), m));
            }
        }
    }
    messages.sort_by_key(|(_, at, _)| (at.is_none(), *at));
    summary.add("messages read", group.docs.iter().map(|d| d.doc.messages.len() as u64).sum());
    let added = sqlx::query_scalar!(
        r#"WITH added AS (
               INSERT INTO messages (id, conversation_id, session_id, seq, role, text, translation,
                   grammar_suggestion, phonemes, feedback, created_at)
               SELECT m.id, $1, $12, (SELECT coalesce(max(seq), 0) FROM messages WHERE session_id = $12) + m.ord,
                      m.role, m.text, m.translation, m.grammar_suggestion, m.phonemes, m.feedback,
                      coalesce(m.created_at, now())
               FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[], $8::jsonb[],
                           $9::timestamptz[])
                    WITH ORDINALITY AS m(id, role, text, translation, grammar_suggestion, phonemes, feedback,
                        created_at, ord)
               ORDER BY m.ord
               ON CONFLICT (session_id, id) DO NOTHING
               RETURNING 1
           ), counted AS (
               UPDATE conversations
               SET message_count = message_count + (SELECT count(*) FROM added),
                   version = version + CASE WHEN $10 THEN 0 ELSE 1 END,
                   updated_at = CASE WHEN $11 THEN updated_at ELSE now() END
               WHERE session_id = $12 AND EXISTS (SELECT 1 FROM added)
           )
           SELECT count(*) AS "added!" FROM added"#,
        conversation_id,
        &messages.iter().map(|(id, _, _)| *id).collect::<Vec<_>>(),
        &messages.iter().map(|(_, _, m)| m.role).collect::<Vec<_>>() as &[&str],
        &messages.iter().map(|(_, _, m)| m.text.as_str()).collect::<Vec<_>>() as &[&str],
        &messages.iter().map(|(_, _, m)| m.translation.clone()).collect::<Vec<_>>() as &[Option<String>],
        &messages.iter().map(|(_, _, m)| m.grammar_suggestion.clone()).collect::<Vec<_>>() as &[Option<String>],
        &messages.iter().map(|(_, _, m)| m.phonemes.clone()).collect::<Vec<_>>() as &[Option<Value>],
        &messages.iter().map(|(_, _, m)| m.feedback.clone()).collect::<Vec<_>>() as &[Option<Value>],
        &messages.iter().map(|(_, at, _)| *at).collect::<Vec<_>>() as &[Option<DateTime<Utc>>],
        outcome != Outcome::Unchanged,
        outcome == Outcome::Inserted,
        session_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    let added = added as u64;
    summary.add("messages stored", added);
    Ok(added)
}
