//! All SQL of conversations, messages and audio files.

use super::model::{
    AnalysisUpsert, AudioFile, Conversation, ConversationRow, Expected, Message, NewConversation, NewMessage, Shape,
};
use crate::coalesce::Lookup;
use crate::db::{rejects, vanished, Guards, StoreError, StoreResult};
use crate::domain::SessionId;
use crate::idempotency::{self, Claim, ClaimColumns, IdempotencyConfig, KeyHeld};
use crate::pagination::{Cursor, Page, PageRequest};
use crate::reply::Outcome;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use std::collections::HashMap;
use std::sync::OnceLock;
use uuid::Uuid;

/// What a conversation's row refuses, by the field it guards.
const CONVERSATION_GUARDS: Guards =
    &[("conversations_session_id_format", "session_id"), ("conversations_audio_id_fkey", "audio_id")];
/// What a message's row refuses, by the field it guards.
const MESSAGE_GUARDS: Guards =
    &[("messages_audio_id_fkey", "messages[].audio_id"), ("messages_role_is_user_or_bot", "messages[].role")];

/// The read of create-or-get by `session_id`, shared by concurrent callers
/// (`coalesce::Reads`): an existing conversation is returned as it is, with no write and no
/// connection of the caller's own; read first for the reason `chats::store::ByKey` gives.
pub struct BySessionId;

impl Lookup for BySessionId {
    type Key = String;
    type Row = Conversation;
    const WHAT: &'static str = "conversation read";

    async fn find_one(conn: &mut PgConnection, session_id: &String) -> StoreResult<Option<Conversation>> {
        match find_row(conn, session_id).await? {
            Some(row) => Ok(Some(with_audio(conn, row).await?)),
            None => Ok(None),
        }
    }

    async fn find_many(conn: &mut PgConnection, session_ids: &[&String]) -> StoreResult<Vec<Conversation>> {
        let rows = sqlx::query_as!(
            ConversationRow,
            "SELECT * FROM conversations WHERE session_id = ANY($1)",
            session_ids as &[&String]
        )
        .fetch_all(&mut *conn)
        .await?;
        with_audios(conn, rows).await
    }

    fn key_of(conversation: &Conversation) -> String {
        conversation.session_id.clone()
    }
}

/// The write of create-or-get, after a read found nothing (or with no `session_id`, when the
/// server makes one): an existing conversation is returned as it is, no write, no new version.
pub async fn insert_or_find(conn: &mut PgConnection, new: NewConversation) -> StoreResult<(Conversation, Outcome)> {
    let session_id = new.session_id.unwrap_or_else(SessionId::generate);
    let inserted = sqlx::query_as!(
        ConversationRow,
        "INSERT INTO conversations (id, session_id, user_id, language) VALUES ($1, $2, $3, $4)
         ON CONFLICT (session_id) DO NOTHING
         RETURNING *",
        Uuid::now_v7(),
        session_id.as_str(),
        new.user_id,
        new.language,
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(rejects(CONVERSATION_GUARDS))?;
    // DO NOTHING waited for any concurrent inserter to commit, so the row is visible now.
    let (row, outcome) = match inserted {
        Some(row) => (row, Outcome::Inserted),
        None => {
            (find_row(conn, session_id.as_str()).await?.ok_or_else(|| vanished("conversation"))?, Outcome::Unchanged)
        }
    };
    Ok((with_audio(conn, row).await?, outcome))
}

/// The one write behind both steps of the legacy flow, save-analysis and upload-audio, for one
/// request on its own connection (see [`upsert_many`]). With `If-Match` the stored version is
/// checked under a row lock first, in the same transaction.
pub async fn upsert_analysis(conn: &mut PgConnection, input: &AnalysisUpsert) -> StoreResult<(Conversation, Outcome)> {
    let Some(expected) = input.expected_version else {
        return upsert_one(conn, input).await;
    };
    let mut tx = conn.begin().await?;
    let stored = sqlx::query_scalar!(
        "SELECT version FROM conversations WHERE session_id = $1 FOR UPDATE",
        input.session_id.as_str()
    )
    .fetch_optional(&mut *tx)
    .await?;
    match (stored, expected) {
        (None, _) => return Err(StoreError::VersionMismatch("If-Match: no conversation has this session_id".into())),
        (Some(stored), Expected::Version(wanted)) if stored != wanted => {
            return Err(StoreError::VersionMismatch(format!("If-Match: the stored version is {stored}, not {wanted}")))
        }
        _ => {}
    }
    let result = upsert_one(&mut tx, input).await?;
    tx.commit().await?;
    Ok(result)
}

async fn upsert_one(conn: &mut PgConnection, input: &AnalysisUpsert) -> StoreResult<(Conversation, Outcome)> {
    Ok(upsert_many(conn, &[input]).await?.pop().expect("one row in, one row out"))
}

/// The upsert of save-analysis and upload-audio, for one or many conversations: one
/// `INSERT ... ON CONFLICT (session_id) DO UPDATE`, whose `WHERE` skips the update when every
/// given field already holds its value, so a repeat writes no row version and leaves `version`
/// alone. Answers in the order of `inputs`.
///
/// The inputs must have distinct session ids (a statement may not update a row twice) and one
/// [`Shape`](super::model::Shape). Rows are written in session-id order, so two statements that lock the same rows
/// take their locks in the same order and cannot deadlock.
pub async fn upsert_many(
    conn: &mut PgConnection,
    inputs: &[&AnalysisUpsert],
) -> StoreResult<Vec<(Conversation, Outcome)>> {
    let Some(shape) = inputs.first().map(|input| input.shape()) else { return Ok(Vec::new()) };
    let written =
        upsert_rows(conn, inputs, &statements(shape).plain, None).await.map_err(rejects(CONVERSATION_GUARDS))?;
    answers(conn, inputs, written).await
}

/// [`upsert_many`] with an `Idempotency-Key` per input, in one autocommit statement that also
/// records the key of each write it applies (inserted or updated), with its answer's row kept in
/// the record (`response_row`: the row as written, rendered again by a replay,
/// [`recorded`]). No transaction around it: one round trip and one commit for the effect and its
/// records, where `BEGIN`, the upsert, the records with their rendered answers and `COMMIT`
/// took four (bench/PROFILE.md, twelfth round).
///
/// The records are plain inserts, in primary-key order: a key that already has one (a retry,
/// or the key under another body) fails the whole statement, which writes nothing, and the
/// caller learns it as [`KeyHeld`]. A write that changed nothing gets no record here: its answer is
/// the row as read after the statement, which the caller records itself.
pub async fn upsert_recorded(
    conn: &mut PgConnection,
    inputs: &[&AnalysisUpsert],
    claims: &[&Claim],
    config: IdempotencyConfig,
) -> StoreResult<Result<Vec<(Conversation, Outcome)>, KeyHeld>> {
    debug_assert_eq!(inputs.len(), claims.len(), "one key per write");
    let Some(shape) = inputs.first().map(|input| input.shape()) else { return Ok(Ok(Vec::new())) };
    let keys = ClaimColumns::of(claims);
    let ttl = config.ttl.as_millis() as f64;
    match upsert_rows(conn, inputs, &statements(shape).keyed, Some((&keys, ttl))).await {
        Ok(written) => Ok(Ok(answers(conn, inputs, written).await?)),
        Err(error) if idempotency::is_key_held(&error) => Ok(Err(KeyHeld)),
        Err(error) => Err(rejects(CONVERSATION_GUARDS)(error)),
    }
}

/// The rows one of [`statements`] wrote; `keys` (with the TTL in ms) for the keyed one. One
/// input takes the statement for one row, with one value a column ([`Rows`]).
async fn upsert_rows(
    conn: &mut PgConnection,
    inputs: &[&AnalysisUpsert],
    statement: &'static Rows,
    keys: Option<(&ClaimColumns<'_>, f64)>,
) -> Result<Vec<ConversationRow>, sqlx::Error> {
    debug_assert!(inputs.iter().all(|input| input.shape() == inputs[0].shape()), "one statement, one shape");
    let alone = inputs.len() == 1;
    let mut query = Columns { query: sqlx::query_as(if alone { &statement.one } else { &statement.many }), alone }
        .column(inputs.iter().map(|_| Uuid::now_v7()).collect())
        .column(inputs.iter().map(|input| input.session_id.as_str()).collect())
        .column(inputs.iter().map(|input| input.user_id.value().map(String::as_str)).collect())
        .column(inputs.iter().map(|input| input.language.value().map(String::as_str)).collect())
        .column(inputs.iter().map(|input| input.transcript.value().map(String::as_str)).collect())
        .column(inputs.iter().map(|input| input.analysis.value().cloned()).collect())
        .column(inputs.iter().map(|input| input.audio_id.value().copied()).collect());
    if let Some((keys, ttl)) = keys {
        query = query
            .column(keys.scope.clone())
            .column(keys.key.clone())
            .column(keys.method.clone())
            .column(keys.path.clone())
            .column(keys.shard.clone())
            .column(keys.fingerprint.clone())
            .column(keys.claim_id.clone())
            .value(ttl)
            .column(keys.digest.clone());
    }
    query.query.fetch_all(&mut *conn).await
}

/// A statement of [`statements`] being bound, a column at a time: an array of the inputs'
/// values, or for one input ([`Rows::one`]) its value.
struct Columns<'q> {
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, ConversationRow, sqlx::postgres::PgArguments>,
    alone: bool,
}

impl<'q> Columns<'q> {
    fn column<T>(self, values: Vec<T>) -> Self
    where
        T: 'q + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + sqlx::postgres::PgHasArrayType,
    {
        let query = match self.alone {
            true => self.query.bind(values.into_iter().next().expect("one input, one value")),
            false => self.query.bind(values),
        };
        Self { query, ..self }
    }

    /// One value for every input.
    fn value<T: 'q + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(self, value: T) -> Self {
        Self { query: self.query.bind(value), ..self }
    }
}

/// Each input's answer, in input order, from the rows its statement wrote: those it did not
/// return were left as they were, and are read back.
async fn answers(
    conn: &mut PgConnection,
    inputs: &[&AnalysisUpsert],
    written: Vec<ConversationRow>,
) -> StoreResult<Vec<(Conversation, Outcome)>> {
    // Inserts start at version 1 and every update adds one, so a returned version 1 can only
    // be this statement's insert. A row not returned was left as it was.
    let mut found: HashMap<String, (ConversationRow, Outcome)> = written
        .into_iter()
        .map(|row| {
            let outcome = if row.version == 1 { Outcome::Inserted } else { Outcome::Updated };
            (row.session_id.clone(), (row, outcome))
        })
        .collect();
    let session_ids: Vec<&str> = inputs.iter().map(|input| input.session_id.as_str()).collect();
    let unchanged: Vec<&str> = session_ids.iter().copied().filter(|sid| !found.contains_key(*sid)).collect();
    if !unchanged.is_empty() {
        let rows = sqlx::query_as!(
            ConversationRow,
            "SELECT * FROM conversations WHERE session_id = ANY($1)",
            &unchanged as &[&str]
        )
        .fetch_all(&mut *conn)
        .await?;
        found.extend(rows.into_iter().map(|row| (row.session_id.clone(), (row, Outcome::Unchanged))));
    }
    let audio = audio_by_id(conn, found.values().filter_map(|(row, _)| row.audio_id).collect()).await?;
    session_ids
        .iter()
        .map(|sid| {
            let (row, outcome) = found.remove(*sid).ok_or_else(|| vanished("conversation"))?;
            let file = row.audio_id.and_then(|id| audio.iter().find(|a| a.id == id).cloned());
            Ok((Conversation::new(row, file), outcome))
        })
        .collect()
}

/// The answer a keyed upsert's record keeps as a row ([`upsert_recorded`]): that row, typed
/// again by PostgreSQL itself, with its audio file, so every value is the one the live answer
/// was rendered from. An audio file's row never changes once written. These rows live for the
/// key TTL: a migration that adds a NOT NULL column to `conversations` must also add it to
/// the records already written, or their replays fail.
pub async fn recorded(conn: &mut PgConnection, row: Value) -> StoreResult<Conversation> {
    // Unchecked at compile time: `jsonb_populate_record` hides the columns' nullability from
    // the macros, and `*` keeps this in step with the table.
    let row: ConversationRow = sqlx::query_as("SELECT * FROM jsonb_populate_record(NULL::conversations, $1)")
        .bind(row)
        .fetch_one(&mut *conn)
        .await?;
    with_audio(conn, row).await
}

/// The upsert statements of one [`Shape`].
struct Statements {
    /// The upsert alone ([`upsert_many`]).
    plain: Rows,
    /// The upsert and the records of its keys ([`upsert_recorded`]).
    keyed: Rows,
}

/// One statement in two forms: for many rows, each parameter an array of their values; for
/// one, each its value. A lone write (every write, when one client writes at a time) then
/// sends no arrays to unpack and no rows to sort: about 15 µs less of PostgreSQL and 5-8%
/// more requests at one connection (bench/PROFILE.md, sixteenth round). On Citus, a
/// single-row `INSERT ... VALUES` runs on its shard, where an `INSERT ... SELECT` is pulled
/// through the coordinator.
struct Rows {
    many: String,
    one: String,
}

/// The statements of one [`Shape`]: a field the shape sets takes the row's value when it
/// differs from the stored one (then `version` grows by one), the others keep theirs.
///
/// Made once per shape, rather than one with the shape as parameters: a Citus coordinator runs
/// a multi-row `INSERT ... SELECT` in two steps and cannot pass parameters to the `DO UPDATE`
/// part (README, "Scaling out"). Unchecked at compile time: the API tests run each shape
/// (`conversations::every_subset_of_fields_is_saved_and_only_its_fields_change`, and the
/// upload tests for the shapes that set the audio) and the keyed statement
/// (`idempotency::retried_save_analysis_upserts_apply_once...`).
fn statements(shape: Shape) -> &'static Statements {
    static STATEMENTS: OnceLock<Vec<Statements>> = OnceLock::new();
    let statements = STATEMENTS.get_or_init(|| {
        (0..32)
            .map(|bits: u8| {
                let set: Vec<&str> = UPSERT_FIELDS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| bits & (1 << i) != 0)
                    .map(|(_, field)| *field)
                    .collect();
                let assign: String = set.iter().map(|f| format!("{f} = EXCLUDED.{f}, ")).collect();
                let changed: Vec<String> = set.iter().map(|f| format!("c.{f} IS DISTINCT FROM EXCLUDED.{f}")).collect();
                let changed = if changed.is_empty() { "false".to_owned() } else { changed.join(" OR ") };
                let upsert = |rows: &str| {
                    format!(
                        "INSERT INTO conversations AS c
                             (id, session_id, user_id, language, transcript, analysis, audio_id)
                         {rows}
                         ON CONFLICT (session_id) DO UPDATE
                         SET {assign}version = c.version + 1, updated_at = EXCLUDED.updated_at
                         WHERE {changed}
                         RETURNING *"
                    )
                };
                let plain = Rows {
                    many: upsert(
                        "SELECT id, session_id, user_id, language, transcript, analysis, audio_id
                         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
                                     $7::uuid[])
                              AS i (id, session_id, user_id, language, transcript, analysis, audio_id)
                         ORDER BY session_id",
                    ),
                    one: upsert("VALUES ($1::uuid, $2::text, $3::text, $4::text, $5::text, $6::jsonb, $7::uuid)"),
                };
                // Status 201 for an insert (version 1, as in `answers`), else 200; a replay
                // renders the outcome from it.
                let recorded = |upsert: &str, keys: &str| {
                    format!(
                        "WITH up AS ({upsert}), recorded AS (
                             INSERT INTO idempotency_keys
                                 (scope, key, method, path, shard, digest, fingerprint, claim_id, locked_until,
                                  expires_at, response_status, response_row, completed_at)
                             SELECT k.scope, k.key, k.method, k.path, k.shard, k.digest, k.fingerprint, k.claim_id,
                                    now(), now() + make_interval(secs => $15::float8 / 1000),
                                    CASE WHEN up.version = 1 THEN 201 ELSE 200 END, to_jsonb(up), now()
                             FROM {keys}
                             ORDER BY k.shard, k.digest
                         )
                         SELECT * FROM up"
                    )
                };
                let keyed = Rows {
                    many: recorded(
                        &plain.many,
                        "unnest($2::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::uuid[],
                                $13::bytea[], $14::uuid[], $16::bytea[])
                             AS k (session_id, scope, key, method, path, shard, fingerprint, claim_id, digest)
                         JOIN up USING (session_id)",
                    ),
                    one: recorded(
                        &plain.one,
                        "(VALUES ($8::text, $9::text, $10::text, $11::text, $12::uuid, $13::bytea, $14::uuid,
                                  $16::bytea))
                             AS k (scope, key, method, path, shard, fingerprint, claim_id, digest),
                         up",
                    ),
                };
                Statements { plain, keyed }
            })
            .collect()
    });
    let bits = [shape.user_id, shape.language, shape.transcript, shape.analysis, shape.audio_id]
        .iter()
        .enumerate()
        .fold(0, |bits, (i, set)| bits | (usize::from(*set) << i));
    &statements[bits]
}

/// The fields an upsert may set, in the order of [`statements`]' shape bits.
const UPSERT_FIELDS: [&str; 5] = ["user_id", "language", "transcript", "analysis", "audio_id"];

pub async fn get(conn: &mut PgConnection, session_id: &SessionId) -> StoreResult<Option<Conversation>> {
    BySessionId::find_one(conn, &session_id.as_str().to_owned()).await
}

async fn find_row(conn: &mut PgConnection, session_id: &str) -> StoreResult<Option<ConversationRow>> {
    Ok(sqlx::query_as!(ConversationRow, "SELECT * FROM conversations WHERE session_id = $1", session_id)
        .fetch_optional(conn)
        .await?)
}

/// Newest first, keyed on (created_at, id).
pub async fn list(
    conn: &mut PgConnection,
    user_id: Option<&str>,
    page: PageRequest,
) -> StoreResult<Page<Conversation>> {
    let after = page.after.map(|c| (DateTime::<Utc>::from_timestamp_micros(c.position), c.id));
    let rows = sqlx::query_as!(
        ConversationRow,
        r#"SELECT * FROM conversations
           WHERE ($1::text IS NULL OR user_id = $1)
             AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
           ORDER BY created_at DESC, id DESC
           LIMIT $4"#,
        user_id,
        after.and_then(|(at, _)| at),
        after.map(|(_, id)| id),
        page.fetch_limit(),
    )
    .fetch_all(&mut *conn)
    .await?;
    let page = Page::from_rows(rows, page, |row| Cursor { position: row.created_at.timestamp_micros(), id: row.id });
    let (items, next_cursor) = (page.items, page.next_cursor);
    Ok(Page { items: with_audios(conn, items).await?, next_cursor })
}

/// The conversations of these rows, each with its audio file, in one more statement.
async fn with_audios(conn: &mut PgConnection, rows: Vec<ConversationRow>) -> StoreResult<Vec<Conversation>> {
    let audio = audio_by_id(conn, rows.iter().filter_map(|row| row.audio_id).collect()).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let file = row.audio_id.and_then(|id| audio.iter().find(|a| a.id == id).cloned());
            Conversation::new(row, file)
        })
        .collect())
}

async fn with_audio(conn: &mut PgConnection, row: ConversationRow) -> StoreResult<Conversation> {
    let audio = match row.audio_id {
        Some(id) => audio_by_id(conn, vec![id]).await?.pop(),
        None => None,
    };
    Ok(Conversation::new(row, audio))
}

async fn audio_by_id(conn: &mut PgConnection, ids: Vec<Uuid>) -> StoreResult<Vec<AudioFile>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows =
        sqlx::query!("SELECT id, sha256, content_type, bytes, analysis FROM audio_files WHERE id = ANY($1)", &ids)
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|r| AudioFile {
            id: r.id,
            sha256: r.sha256,
            content_type: r.content_type,
            bytes: r.bytes,
            url: AudioFile::url_for(r.id),
            analysis: r.analysis,
        })
        .collect())
}

pub async fn get_audio(conn: &mut PgConnection, id: Uuid) -> StoreResult<Option<AudioFile>> {
    Ok(audio_by_id(conn, vec![id]).await?.pop())
}

/// Catalogues a stored file once per content hash and returns its id; a repeat finds the
/// existing entry's. The upsert of its conversation reads the entry back with the row.
pub async fn save_audio(
    conn: &mut PgConnection,
    sha256: &str,
    content_type: &str,
    bytes: i64,
    analysis: &Value,
) -> StoreResult<Uuid> {
    let inserted = sqlx::query_scalar!(
        "INSERT INTO audio_files (id, sha256, content_type, bytes, analysis) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (sha256) DO NOTHING
         RETURNING id",
        Uuid::now_v7(),
        sha256,
        content_type,
        bytes,
        analysis,
    )
    .fetch_optional(&mut *conn)
    .await?;
    match inserted {
        Some(id) => Ok(id),
        None => sqlx::query_scalar!("SELECT id FROM audio_files WHERE sha256 = $1", sha256)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| vanished("audio file")),
    }
}

/// Appends messages in one transaction and returns them as stored, in the request's order.
///
/// The conversation row is created if missing and locked, which serialises appends to one
/// conversation: each takes the `seq` values after the conversation's last one, in commit
/// order. Messages whose id the conversation already holds are skipped (`ON CONFLICT DO
/// NOTHING`), which makes a retried append with client ids add nothing; an id that another
/// conversation holds is refused.
pub async fn append_messages(
    conn: &mut PgConnection,
    session_id: &SessionId,
    messages: &[NewMessage],
) -> StoreResult<(Conversation, Vec<Message>, Outcome)> {
    let mut tx = conn.begin().await?;
    let (conversation_id, created) = lock_or_create(&mut tx, session_id).await?;
    let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    let roles: Vec<&str> = messages.iter().map(|m| m.role.as_str()).collect();
    let texts: Vec<&str> = messages.iter().map(|m| m.text.as_str()).collect();
    let translations: Vec<Option<String>> = messages.iter().map(|m| m.translation.clone()).collect();
    let suggestions: Vec<Option<String>> = messages.iter().map(|m| m.grammar_suggestion.clone()).collect();
    let audio_ids: Vec<Option<Uuid>> = messages.iter().map(|m| m.audio_id).collect();
    let phonemes: Vec<Option<Value>> = messages.iter().map(|m| m.phonemes.clone()).collect();
    let feedback: Vec<Option<Value>> = messages.iter().map(|m| m.feedback.clone()).collect();
    let updated = sqlx::query_as!(
        ConversationRow,
        r#"WITH added AS (
               INSERT INTO messages (id, conversation_id, session_id, seq, role, text, translation,
                   grammar_suggestion, audio_id, phonemes, feedback)
               SELECT m.id, $1, $11, (SELECT coalesce(max(seq), 0) FROM messages WHERE session_id = $11) + m.ord,
                      m.role, m.text, m.translation, m.grammar_suggestion, m.audio_id, m.phonemes, m.feedback
               FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::uuid[], $8::jsonb[],
                   $9::jsonb[])
                    WITH ORDINALITY AS m(id, role, text, translation, grammar_suggestion, audio_id, phonemes,
                        feedback, ord)
               ORDER BY m.ord
               ON CONFLICT (session_id, id) DO NOTHING
               RETURNING 1
           )
           UPDATE conversations
           SET message_count = message_count + (SELECT count(*) FROM added),
               version = version + CASE WHEN $10 THEN 0 ELSE 1 END,
               updated_at = now()
           WHERE session_id = $11 AND EXISTS (SELECT 1 FROM added)
           RETURNING *"#,
        conversation_id,
        &ids,
        &roles as &[&str],
        &texts as &[&str],
        &translations as &[Option<String>],
        &suggestions as &[Option<String>],
        &audio_ids as &[Option<Uuid>],
        &phonemes as &[Option<Value>],
        &feedback as &[Option<Value>],
        created,
        session_id.as_str(),
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(rejects(MESSAGE_GUARDS))?;
    let mut stored =
        sqlx::query_as!(Message, "SELECT * FROM messages WHERE id = ANY($1)", &ids).fetch_all(&mut *tx).await?;
    if let Some(i) = stored.iter().position(|m| m.session_id != session_id.as_str()) {
        let index = ids.iter().position(|id| *id == stored[i].id).unwrap_or_default();
        return Err(StoreError::Taken { field: format!("messages[{index}].id"), by: "conversation" });
    }
    stored.sort_by_key(|m| ids.iter().position(|id| *id == m.id));
    let outcome = if updated.is_some() { Outcome::Inserted } else { Outcome::Unchanged };
    let row = match updated {
        Some(row) => row,
        None => find_row(&mut tx, session_id.as_str()).await?.ok_or_else(|| vanished("conversation"))?,
    };
    let conversation = with_audio(&mut tx, row).await?;
    tx.commit().await?;
    Ok((conversation, stored, outcome))
}

/// Returns the conversation's id with its row locked until commit, inserting it if missing.
async fn lock_or_create(tx: &mut PgConnection, session_id: &SessionId) -> StoreResult<(Uuid, bool)> {
    let inserted = sqlx::query_scalar!(
        "INSERT INTO conversations (id, session_id) VALUES ($1, $2) ON CONFLICT (session_id) DO NOTHING RETURNING id",
        Uuid::now_v7(),
        session_id.as_str()
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(rejects(CONVERSATION_GUARDS))?;
    if let Some(id) = inserted {
        return Ok((id, true));
    }
    let existing =
        sqlx::query_scalar!("SELECT id FROM conversations WHERE session_id = $1 FOR UPDATE", session_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    existing.map(|id| (id, false)).ok_or_else(|| vanished("conversation"))
}

/// Oldest first, keyed on `seq`. `None` when the conversation does not exist.
pub async fn list_messages(
    conn: &mut PgConnection,
    session_id: &SessionId,
    page: PageRequest,
) -> StoreResult<Option<Page<Message>>> {
    let exists = sqlx::query_scalar!("SELECT id FROM conversations WHERE session_id = $1", session_id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let rows = sqlx::query_as!(
        Message,
        "SELECT * FROM messages WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        session_id.as_str(),
        page.after.map_or(0, |c| c.position),
        page.fetch_limit(),
    )
    .fetch_all(conn)
    .await?;
    Ok(Some(Page::from_rows(rows, page, |m| Cursor { position: m.seq, id: m.id })))
}
