//! Legacy `chats`: `participants`, `participantsKey` (often missing, or the old `a_b` form that
//! collides as soon as an id holds `_`), `createdAt`. The key is always recomputed from the
//! participants, so one chat is kept per group; every legacy `_id` maps to the kept chat's id.

use super::{
    extjson, participant_id, reason, record_sources, Collection, Group, Importer, MapRow, Outcome, Parsed, Summary,
};
use crate::domain::ParticipantsKey;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

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
        let mut ids = Vec::with_capacity(listed.len());
        for (i, value) in listed.iter().enumerate() {
            let id = extjson::id(value).ok_or_else(|| format!("participants[{i}]: not a string or ObjectId"))?;
            ids.push(participant_id(&format!("participants[{i}]"), &id)?);
        }
        let key = ParticipantsKey::from_ids(ids).map_err(reason)?;
        let fixes = match extjson::string(doc, "participantsKey")? {
            None => vec!["participantsKey backfilled"],
            Some(old) if old != key.as_str() => vec!["participantsKey recomputed from participants"],
            Some(_) => Vec::new(),
        };
        let created_at = extjson::date(doc, "createdAt")?;
        let doc = Chat { participants: key.participants(), created_at };
        Ok(Parsed { key: key.as_str().to_owned(), doc, fixes })
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
