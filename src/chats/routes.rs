//! Thin handlers for chats.

use super::store;
use crate::domain::{ParticipantId, ParticipantsKey};
use crate::error::{ApiError, ApiResult, FieldError};
use crate::extract::JsonBody;
use crate::idempotency::Writer;
use crate::pagination::{page_request, PageQuery};
use crate::reply::Reply;
use crate::startup::AppState;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use uuid::Uuid;

#[derive(Debug, Deserialize)]
pub struct CreateChatBody {
    participants: Option<Vec<String>>,
}

impl CreateChatBody {
    fn validate(self) -> ApiResult<ParticipantsKey> {
        let raw = self.participants.ok_or_else(|| ApiError::invalid("participants", "is required"))?;
        let mut errors = Vec::new();
        let ids: Vec<ParticipantId> = raw
            .iter()
            .enumerate()
            .filter_map(|(i, id)| {
                ParticipantId::parse(&format!("participants[{i}]"), id).map_err(|e| errors.push(e)).ok()
            })
            .collect();
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        ParticipantsKey::from_ids(ids).map_err(|e| ApiError::Validation(vec![e]))
    }
}

pub async fn create(writer: Writer, body: JsonBody<CreateChatBody>) -> ApiResult<HttpResponse> {
    let key = body.0.validate()?;
    let mut conn = writer.begin().await?;
    let result = store::create_or_get(&mut conn, &key).await;
    writer.finish(conn, result.map(|(chat, outcome)| Reply::written("chat", outcome, &chat, || chat.location()))).await
}

pub async fn get(state: web::Data<AppState>, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let not_found = || ApiError::NotFound("no chat has this id".into());
    let id: Uuid = path.parse().map_err(|_| not_found())?;
    let chat = store::get(&mut *state.pool.acquire().await?, id).await?.ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(chat))
}

#[derive(Debug, Deserialize)]
pub struct ListChatsQuery {
    participant: Option<String>,
}

pub async fn list(
    state: web::Data<AppState>,
    filter: web::Query<ListChatsQuery>,
    page: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let participant = filter.participant.as_deref().ok_or_else(|| ApiError::invalid("participant", "is required"))?;
    let participant =
        ParticipantId::parse("participant", participant).map_err(|e: FieldError| ApiError::Validation(vec![e]))?;
    let page = page_request(&page)?;
    let chats = store::list_for(&mut *state.pool.acquire().await?, participant.as_str(), page).await?;
    Ok(HttpResponse::Ok().json(chats))
}
