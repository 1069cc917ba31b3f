//! Thin handlers for chats.

use super::store::{self, Chat};
use crate::domain::{ParticipantId, ParticipantsKey};
use crate::error::{ApiError, ApiResult, FieldError, JsonWrite, Listing, Lookup};
use crate::extract::{uuid_path_id, InPath, JsonBody};
use crate::idempotency::{KeyHeader, Writer};
use crate::pagination::{page_request, Page, PageQuery};
use crate::reply::{Outcome, Reply};
use crate::state::{Db, Lookups};
use actix_web::{web, HttpResponse};
use serde::Deserialize;

uuid_path_id!(
    /// A chat's id in a path.
    ChatId,
    "no chat has this id"
);
type ChatPath = InPath<ChatId>;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"participants": ["alice", "bob"]}))]
pub struct CreateChatBody {
    #[schema(schema_with = ParticipantsKey::schema, required = true)]
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
    operation_id = "create_chat",
    tag = "chats",
    request_body = CreateChatBody,
    params(KeyHeader),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Inserted", body = Chat),
        (status = 200, description = "Existed", body = Chat),
        JsonWrite
    )
)]
pub async fn create(
    writer: Writer,
    lookups: web::Data<Lookups<store::ByKey>>,
    body: JsonBody<CreateChatBody>,
) -> ApiResult<HttpResponse> {
    let key = body.0.validate()?;
    let reply = |(chat, outcome): (Chat, Outcome)| Reply::written("chat", outcome, &chat, || chat.location());
    if let Some(chat) = lookups.find(key.as_str().to_owned()).await? {
        return writer.answer(reply((chat, Outcome::Unchanged))).await;
    }
    let mut conn = writer.begin().await?;
    let result = store::insert_or_find(&mut conn, &key).await;
    writer.finish(conn, result.map(reply)).await
}

#[utoipa::path(
    get,
    path = "/api/chats/{id}",
    operation_id = "get_chat",
    tag = "chats",
    params(ChatPath),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Chat),
        Lookup
    )
)]
pub async fn get(db: web::Data<Db>, path: ChatPath) -> ApiResult<HttpResponse> {
    let InPath(ChatId(id)) = path;
    let not_found = || ApiError::NotFound(<ChatId as crate::extract::PathSegment>::NOT_FOUND.into());
    let chat = store::get(&mut *db.conn().await?, id).await?.ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(chat))
}

#[derive(Debug, Deserialize)]
pub struct ListChatsQuery {
    participant: Option<String>,
}

/// Written out because the derive drops `required` and the description of a field whose schema
/// comes from a function (utoipa 5.5).
impl utoipa::IntoParams for ListChatsQuery {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        let participant = ParameterBuilder::new()
            .name("participant")
            .parameter_in(ParameterIn::Query)
            .required(utoipa::openapi::Required::True)
            .description(Some("The chats this participant is in"))
            .schema(Some(ParticipantId::schema()));
        vec![participant.build()]
    }
}

#[utoipa::path(
    get,
    path = "/api/chats",
    operation_id = "list_chats",
    tag = "chats",
    params(ListChatsQuery, PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Page<Chat>),
        Listing
    )
)]
pub async fn list(
    db: web::Data<Db>,
    filter: web::Query<ListChatsQuery>,
    page: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let participant = filter.participant.as_deref().ok_or_else(|| ApiError::invalid("participant", "is required"))?;
    let participant =
        ParticipantId::parse("participant", participant).map_err(|e: FieldError| ApiError::Validation(vec![e]))?;
    let page = page_request(&page)?;
    let chats = store::list_for(&mut *db.conn().await?, participant.as_str(), page).await?;
    Ok(HttpResponse::Ok().json(chats))
}
