//! Thin handlers: parse, call one store function, shape the answer.

use super::model::{
    parse_if_match, AnalysisUpsert, AppendBody, Appended, Conversation, CreateConversationBody, ListConversationsQuery,
    Message, SaveAnalysisBody,
};
use super::{audio, store, upload};
use crate::domain::{Patch, SessionId};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::JsonBody;
use crate::idempotency::Writer;
use crate::pagination::{page_request, Page, PageQuery};
use crate::reply::{Outcome, Reply};
use crate::state::AppState;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use uuid::Uuid;

fn conversation_reply(conversation: &Conversation, outcome: Outcome) -> Reply {
    Reply::written("conversation", outcome, conversation, || conversation.location())
        .header(header::ETAG, conversation.etag())
}

/// A session id in a path that cannot exist is simply not found.
fn path_session_id(raw: &str) -> ApiResult<SessionId> {
    SessionId::parse("session_id", raw).map_err(|_| ApiError::NotFound("no conversation has this session_id".into()))
}

#[utoipa::path(
    post,
    path = "/api/conversations",
    tag = "conversations",
    request_body = CreateConversationBody,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request count once (API.md §2)")
    ),
    responses(
        (status = 201, description = "Inserted", body = Conversation),
        (status = 200, description = "Existed or updated", body = Conversation),
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
pub async fn create(writer: Writer, body: JsonBody<CreateConversationBody>) -> ApiResult<HttpResponse> {
    let new = body.0.validate()?;
    let mut conn = writer.begin().await?;
    let result = store::create_or_get(&mut conn, new).await;
    writer.finish(conn, result.map(|(c, outcome)| conversation_reply(&c, outcome))).await
}

#[utoipa::path(
    get,
    path = "/api/conversations/{session_id}",
    tag = "conversations",
    params(("session_id" = String, Path)),
    responses(
        (status = 200, body = Conversation),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn get(state: web::Data<AppState>, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let session_id = path_session_id(&path)?;
    let conversation = store::get(&mut *state.conn().await?, &session_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no conversation has this session_id".into()))?;
    Ok(HttpResponse::Ok().insert_header((header::ETAG, conversation.etag())).json(conversation))
}

#[utoipa::path(
    get,
    path = "/api/conversations",
    tag = "conversations",
    params(("user_id" = Option<String>, Query), ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)),
    responses(
        (status = 200, body = Page<Conversation>),
        (status = 422, description = "Invalid values", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn list(
    state: web::Data<AppState>,
    filter: web::Query<ListConversationsQuery>,
    page: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let page = page_request(&page)?;
    let items = store::list(&mut *state.conn().await?, filter.user_id.as_deref(), page).await?;
    Ok(HttpResponse::Ok().json(items))
}

#[utoipa::path(
    post,
    path = "/api/save-analysis",
    tag = "conversations",
    request_body = SaveAnalysisBody,
    params(
        ("If-Match" = Option<String>, Header, description = "Update only at this version"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request count once (API.md §2)")
    ),
    responses(
        (status = 201, description = "Inserted", body = Conversation),
        (status = 200, description = "Existed or updated", body = Conversation),
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
pub async fn save_analysis(
    state: web::Data<AppState>,
    req: HttpRequest,
    writer: Writer,
    body: JsonBody<SaveAnalysisBody>,
) -> ApiResult<HttpResponse> {
    let if_match = req.headers().get(header::IF_MATCH).map(|v| v.to_str().unwrap_or("?"));
    let input = body.0.validate(parse_if_match(if_match)?)?;
    // A keyed upsert's record and an If-Match check belong to its own transaction; the rest
    // share statements with concurrent upserts.
    if writer.claim().is_none() && input.expected_version.is_none() {
        let (conversation, outcome) = state.upserts.upsert(&state.pool, input).await?;
        return Ok(conversation_reply(&conversation, outcome).into_response());
    }
    let mut conn = writer.begin().await?;
    let result = store::upsert_analysis(&mut conn, &input).await;
    writer.finish(conn, result.map(|(c, outcome)| conversation_reply(&c, outcome))).await
}

/// Stores and analyses the audio, transcribes it when STT is configured, then performs the
/// same upsert as save-analysis. The slow part runs before a database connection is taken.
#[utoipa::path(
    post,
    path = "/api/upload-audio",
    tag = "conversations",
    request_body(
        content_type = "multipart/form-data",
        description = "Part `audio` (the file) and optional text parts session_id, language, user_id, transcript, \
                       analysis (JSON)"
    ),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request count once (API.md §2)")
    ),
    responses(
        (status = 201, description = "Inserted", body = Conversation),
        (status = 200, description = "Existed or updated", body = Conversation),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (
            status = 409,
            description = "Idempotency key in flight or version mismatch",
            body = Problem,
            content_type = "application/problem+json"
        ),
        (status = 422, description = "Invalid values", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem),
        (status = 415, body = Problem)
    )
)]
pub async fn upload_audio(
    state: web::Data<AppState>,
    writer: Writer,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let form = upload::form(&req, payload, state.max_upload_bytes)?;
    let upload = upload::receive(form, &state.audio, state.max_upload_bytes).await?;
    let received = upload.audio;
    let (sha256, format, bytes) = (received.sha256.clone(), received.format, received.bytes);
    let store_dir = state.audio.clone();
    let (path, analysis) = web::block(move || {
        let path = store_dir.keep(&received.file.into_path(), &received.sha256)?;
        let analysis = audio::analyse(&path, format, bytes);
        std::io::Result::Ok((path, analysis))
    })
    .await
    .map_err(anyhow::Error::from)?
    .map_err(anyhow::Error::from)?;
    let transcript = match &state.stt {
        Some(stt) => Some(stt.transcribe(&path, format.content_type(), upload.language.as_deref()).await?),
        None => upload.transcript,
    };
    let mut conn = writer.begin().await?;
    let result = async {
        let file = store::save_audio(&mut conn, &sha256, format.content_type(), bytes as i64, &analysis).await?;
        let input = AnalysisUpsert {
            session_id: upload.session_id.unwrap_or_else(SessionId::generate),
            transcript: Patch::given(transcript),
            analysis: Patch::Set(Some(upload.analysis.unwrap_or(analysis))),
            language: Patch::given(upload.language),
            user_id: Patch::given(upload.user_id),
            audio_id: Patch::Set(Some(file.id)),
            expected_version: None,
        };
        store::upsert_analysis(&mut conn, &input).await
    }
    .await;
    writer.finish(conn, result.map(|(c, outcome)| conversation_reply(&c, outcome))).await
}

#[utoipa::path(
    post,
    path = "/api/conversations/{session_id}/messages",
    tag = "conversations",
    request_body = AppendBody,
    params(
        ("session_id" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request count once (API.md §2)")
    ),
    responses(
        (status = 201, description = "Inserted", body = Appended),
        (status = 200, description = "Existed or updated", body = Appended),
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
pub async fn append_messages(
    path: web::Path<String>,
    writer: Writer,
    body: JsonBody<AppendBody>,
) -> ApiResult<HttpResponse> {
    let session_id = SessionId::parse("session_id", &path).map_err(|e| ApiError::Validation(vec![e]))?;
    let messages = body.0.validate()?;
    let mut conn = writer.begin().await?;
    let result =
        store::append_messages(&mut conn, &session_id, &messages).await.map(|(conversation, messages, outcome)| {
            let location = format!("{}/messages", conversation.location());
            Reply::written("message", outcome, &Appended { conversation, messages }, || location)
        });
    writer.finish(conn, result).await
}

#[utoipa::path(
    get,
    path = "/api/conversations/{session_id}/messages",
    tag = "conversations",
    params(("session_id" = String, Path), ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)),
    responses(
        (status = 200, body = Page<Message>),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid values", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn list_messages(
    state: web::Data<AppState>,
    path: web::Path<String>,
    page: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let session_id = path_session_id(&path)?;
    let page = page_request(&page)?;
    let messages = store::list_messages(&mut *state.conn().await?, &session_id, page)
        .await?
        .ok_or_else(|| ApiError::NotFound("no conversation has this session_id".into()))?;
    Ok(HttpResponse::Ok().json(messages))
}

#[utoipa::path(
    get,
    path = "/api/audio/{id}",
    tag = "conversations",
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "The stored bytes", content_type = "audio/*"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn get_audio(state: web::Data<AppState>, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let not_found = || ApiError::NotFound("no audio file has this id".into());
    let id: Uuid = path.parse().map_err(|_| not_found())?;
    let file = store::get_audio(&mut *state.conn().await?, id).await?.ok_or_else(not_found)?;
    let bytes = tokio::fs::read(state.audio.path_for(&file.sha256)).await.map_err(|_| not_found())?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, file.content_type))
        .insert_header((header::ETAG, format!("\"{}\"", file.sha256)))
        .body(bytes))
}
