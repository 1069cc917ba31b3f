//! All SQL of chats.

use crate::coalesce::Lookup;
use crate::db::{rejects, vanished, StoreResult};
use crate::domain::ParticipantsKey;
use crate::pagination::{Cursor, Page, PageRequest};
use crate::reply::Outcome;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Chat {
    pub id: Uuid,
    pub participants: Vec<String>,
    pub participants_key: String,
    pub created_at: DateTime<Utc>,
}

impl Chat {
    pub fn location(&self) -> String {
        format!("/api/chats/{}", self.id)
    }
}

/// The read of create-or-get, shared by concurrent callers (`coalesce::Reads`).
///
/// Most create-or-get calls ask for a chat that already exists. Measured with pgbench on this
/// machine, `INSERT ... ON CONFLICT DO UPDATE SET <no-op> RETURNING` writes a new row version
/// and flushes WAL on every call (~23k TPS at 64 clients), while a plain read of the unique
/// index does 1.8-4x that. So a read comes first (the common path, no write, no lock), and
/// [`insert_or_find`] only when it found nothing.
pub struct ByKey;

impl Lookup for ByKey {
    type Key = String;
    type Row = Chat;
    const WHAT: &'static str = "chat read";

    async fn find_one(conn: &mut PgConnection, key: &String) -> StoreResult<Option<Chat>> {
        find_by_key(conn, key).await
    }

    async fn find_many(conn: &mut PgConnection, keys: &[&String]) -> StoreResult<Vec<Chat>> {
        Ok(sqlx::query_as!(
            Chat,
            "SELECT id, participants, participants_key, created_at FROM chats WHERE participants_key = ANY($1)",
            keys as &[&String]
        )
        .fetch_all(conn)
        .await?)
    }

    fn key_of(chat: &Chat) -> String {
        chat.participants_key.clone()
    }
}

/// The write of create-or-get, after a read found no chat: `INSERT ... ON CONFLICT DO NOTHING
/// RETURNING`, which never raises a unique violation; when that returns nothing, a concurrent
/// caller inserted the chat since the read and committed (DO NOTHING waits for it), so a
/// second `SELECT` sees it.
pub async fn insert_or_find(conn: &mut PgConnection, key: &ParticipantsKey) -> StoreResult<(Chat, Outcome)> {
    let inserted = sqlx::query_as!(
        Chat,
        "INSERT INTO chats (id, participants, participants_key) VALUES ($1, $2, $3)
         ON CONFLICT (participants_key) DO NOTHING
         RETURNING id, participants, participants_key, created_at",
        Uuid::now_v7(),
        &key.participants(),
        key.as_str(),
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(rejects(&[("chats_has_2_to_32_participants", "participants")]))?;
    match inserted {
        Some(chat) => Ok((chat, Outcome::Inserted)),
        None => Ok((find_by_key(conn, key.as_str()).await?.ok_or_else(|| vanished("chat"))?, Outcome::Unchanged)),
    }
}

async fn find_by_key(conn: &mut PgConnection, key: &str) -> StoreResult<Option<Chat>> {
    Ok(sqlx::query_as!(
        Chat,
        "SELECT id, participants, participants_key, created_at FROM chats WHERE participants_key = $1",
        key
    )
    .fetch_optional(conn)
    .await?)
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> StoreResult<Option<Chat>> {
    Ok(sqlx::query_as!(Chat, "SELECT id, participants, participants_key, created_at FROM chats WHERE id = $1", id)
        .fetch_optional(conn)
        .await?)
}

/// Chats that include `participant`, newest first. `participants @> ARRAY[$1]` is answered
/// by the GIN index `chats_participants_gin`.
pub async fn list_for(conn: &mut PgConnection, participant: &str, page: PageRequest) -> StoreResult<Page<Chat>> {
    let after = page.after.map(|c| (DateTime::<Utc>::from_timestamp_micros(c.position), c.id));
    let rows = sqlx::query_as!(
        Chat,
        r#"SELECT id, participants, participants_key, created_at FROM chats
           WHERE participants @> ARRAY[$1::text]
             AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
           ORDER BY created_at DESC, id DESC
           LIMIT $4"#,
        participant,
        after.and_then(|(at, _)| at),
        after.map(|(_, id)| id),
        page.fetch_limit(),
    )
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page, |chat| Cursor { position: chat.created_at.timestamp_micros(), id: chat.id }))
}
