//! Legacy `chats`: `participants`, `participantsKey` (often missing, or the old `a_b` form that
//! collides as soon as an id holds `_`), `createdAt`. The key is always recomputed from the
//! participants, so one chat is kept per group; every legacy `_id` maps to the kept chat's id.

use super::{
    extjson, is_participant_id, record_sources, Collection, Group, Importer, MapRow, Outcome, Parsed, Summary,
};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

const MAX_PARTICIPANTS: usize = 32;

pub struct Chats;

pub struct Chat {
    participants: Vec<String>,
    created_at: Option<DateTime<Utc>>,
}

impl Importer for Chats {
    type Doc = Chat;

    fn parse(&self, doc: &Value) -> Result<Parsed<Chat>, String> {
        let listed = extjson::field(doc, "participants")
            .and_then(Value::as_array)
            .ok_or("participants: missing or not an array")?;
        let mut participants = Vec::with_capacity(listed.len());
        for (i, value) in listed.iter().enumerate() {
            let id = extjson::id(value).ok_or_else(|| format!("participants[{i}]: not a string or ObjectId"))?;
            if !is_participant_id(&id) {
                return Err(format!("participants[{i}]: {id:?} is not 1-128 of [A-Za-z0-9._@:-]"));
            }
            participants.push(id);
        }
        // Byte order, as the API sorts; repeats removed.
        participants.sort();
        participants.dedup();
        if !(2..=MAX_PARTICIPANTS).contains(&participants.len()) {
            return Err(format!(
                "participants: {} distinct ids, a chat has 2 to {MAX_PARTICIPANTS}",
                participants.len()
            ));
        }
        let key = participants.join(",");
        let fixes = match extjson::string(doc, "participantsKey")? {
            None => vec!["participantsKey backfilled"],
            Some(old) if old != key => vec!["participantsKey recomputed from participants"],
            Some(_) => Vec::new(),
        };
        let created_at = extjson::date(doc, "createdAt")?;
        Ok(Parsed { key, doc: Chat { participants, created_at }, fixes })
    }

    async fn write(
        &mut self,
        tx: &mut PgConnection,
        groups: &[Group<Chat>],
        summary: &mut Summary,
    ) -> anyhow::Result<()> {
        for group in groups {
            let first = &group.docs[0].doc;
            let created_at = group.docs.iter().filter_map(|d| d.doc.created_at).min();
            let inserted = sqlx::query_scalar!(
                "INSERT INTO chats (id, participants, participants_key, created_at) VALUES ($1, $2, $3,
                    coalesce($4, now()))
                 ON CONFLICT (participants_key) DO NOTHING
                 RETURNING id",
                Uuid::now_v7(),
                &first.participants,
                group.key,
                created_at,
            )
            .fetch_optional(&mut *tx)
            .await?;
            let (chat_id, outcome) = match inserted {
                Some(id) => (id, Outcome::Inserted),
                None => {
                    let id = sqlx::query_scalar!("SELECT id FROM chats WHERE participants_key = $1", group.key)
                        .fetch_one(&mut *tx)
                        .await?;
                    (id, Outcome::Unchanged)
                }
            };
            summary.count(outcome);
            let sources: Vec<String> = group.docs.iter().map(|d| d.source_id.clone()).collect();
            record_sources(tx, Collection::Chats, &sources, &vec![chat_id; sources.len()]).await?;
            summary.map.extend(sources.into_iter().map(|source_id| MapRow {
                source_id,
                target_id: chat_id,
                key: group.key.clone(),
            }));
        }
        Ok(())
    }
}
