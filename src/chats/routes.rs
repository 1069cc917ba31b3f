//! Thin handlers for chats.

use super::store::{self, Chat};
use crate::domain::{ParticipantId, ParticipantsKey};
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::extract::JsonBody;
use crate::idempotency::Writer;
use crate::pagination::{page_request, Page, PageQuery};
use crate::reply::Reply;
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use uuid::Uuid;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
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

#[utoipa::path(
    post,
    path = "/api/chats",
    tag = "chats",
    request_body = CreateChatBody,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request count once (API.md §2)")
    ),
    responses(
        (status = 201, description = "Inserted", body = Chat),
        (status = 200, description = "Existed or updated", body = Chat),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (
            status = 409,
            description = "Idempotency key in flight or version mismatch",
            body = Problem,
            content_type = "application/problem+json"
        ),
        (status = 422, description = "Invalid values", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn create(writer: Writer, body: JsonBody<CreateChatBody>) -> ApiResult<HttpResponse> {
    let key = body.0.validate()?;
    let mut conn = writer.begin().await?;
    let result = store::create_or_get(&mut conn, &key).await;
    writer.finish(conn, result.map(|(chat, outcome)| Reply::written("chat", outcome, &chat, || chat.location()))).await
}

#[utoipa::path(
    get,
    path = "/api/chats/{id}",
    tag = "chats",
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, body = Chat),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn get(state: web::Data<AppState>, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let not_found = || ApiError::NotFound("no chat has this id".into());
    let id: Uuid = path.parse().map_err(|_| not_found())?;
    let chat = store::get(&mut *state.conn().await?, id).await?.ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(chat))
}

#[derive(Debug, Deserialize)]
pub struct ListChatsQuery {
    participant: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/chats",
    tag = "chats",
    params(("participant" = String, Query), ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)),
    responses(
        (status = 200, body = Page<Chat>),
        (status = 422, description = "Invalid values", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn list(
    state: web::Data<AppState>,
    filter: web::Query<ListChatsQuery>,
    page: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let participant = filter.participant.as_deref().ok_or_else(|| ApiError::invalid("participant", "is required"))?;
    let participant =
        ParticipantId::parse("participant", participant).map_err(|e: FieldError| ApiError::Validation(vec![e]))?;
    let page = page_request(&page)?;
    let chats = store::list_for(&mut *state.conn().await?, participant.as_str(), page).await?;
    Ok(HttpResponse::Ok().json(chats))
}
