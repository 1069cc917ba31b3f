//! Thin handlers: parse, call one store function, shape the answer.

use super::model::{
    parse_if_match, AnalysisUpsert, AppendBody, Appended, Conversation, CreateConversationBody, IfMatchHeader,
    ListConversationsQuery, Message, SaveAnalysisBody, UploadForm,
};
use super::{audio, store, upload};
use crate::domain::{Patch, SessionId};
use crate::error::{
    ApiError, ApiResult, ConditionalWrite, JsonWrite, JsonWriteTo, Listing, ListingOf, Lookup, UploadWrite,
};
use crate::extract::{path_segment, uuid_path_id, InPath, JsonBody, PathSegment};
use crate::idempotency::{KeyHeader, Writer};
use crate::pagination::{page_request, Page, PageQuery};
use crate::reply::{Outcome, Reply};
use crate::state::{Db, Lookups, Uploads, Upserts};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

// A session id in a path: one that cannot exist is simply not found.
path_segment!(
    SessionId,
    "session_id",
    "no conversation has this session_id",
    |raw| SessionId::parse("session_id", raw).ok(),
    SessionId::schema().into()
);
type SessionPath = InPath<SessionId>;

uuid_path_id!(
    /// A stored audio file's id in a path.
    AudioId,
    "no audio file has this id"
);

fn no_conversation() -> ApiError {
    ApiError::NotFound(<SessionId as PathSegment>::NOT_FOUND.into())
}

#[utoipa::path(
    post,
    path = "/api/conversations",
    operation_id = "create_conversation",
    tag = "conversations",
    request_body = Option<CreateConversationBody>,
    params(KeyHeader),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Inserted", body = Conversation),
        (status = 200, description = "Existed", body = Conversation),
        JsonWrite
    )
)]
pub async fn create(
    writer: Writer,
    lookups: web::Data<Lookups<store::BySessionId>>,
    body: JsonBody<CreateConversationBody>,
) -> ApiResult<HttpResponse> {
    let new = body.0.validate()?;
    if let Some(session_id) = &new.session_id {
        if let Some(found) = lookups.find(session_id.as_str().to_owned()).await? {
            return writer.answer(found.reply(Outcome::Unchanged)).await;
        }
    }
    let mut conn = writer.begin().await?;
    let result = store::insert_or_find(&mut conn, new).await;
    writer.finish(conn, result.map(|(c, outcome)| c.reply(outcome))).await
}

#[utoipa::path(
    get,
    path = "/api/conversations/{session_id}",
    operation_id = "get_conversation",
    tag = "conversations",
    params(SessionPath),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Conversation),
        Lookup
    )
)]
pub async fn get(db: web::Data<Db>, path: SessionPath) -> ApiResult<HttpResponse> {
    let conversation = store::get(&mut *db.conn().await?, &path.0).await?.ok_or_else(no_conversation)?;
    Ok(HttpResponse::Ok().insert_header((header::ETAG, conversation.etag())).json(conversation))
}

#[utoipa::path(
    get,
    path = "/api/conversations",
    operation_id = "list_conversations",
    tag = "conversations",
    params(ListConversationsQuery, PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Page<Conversation>),
        Listing
    )
)]
pub async fn list(
    db: web::Data<Db>,
    filter: web::Query<ListConversationsQuery>,
    page: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let page = page_request(&page)?;
    let items = store::list(&mut *db.conn().await?, filter.user_id()?, page).await?;
    Ok(HttpResponse::Ok().json(items))
}

#[utoipa::path(
    post,
    path = "/api/save-analysis",
    tag = "conversations",
    request_body = SaveAnalysisBody,
    params(
        IfMatchHeader,
        KeyHeader
    ),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Inserted", body = Conversation),
        (status = 200, description = "Existed or updated", body = Conversation),
        ConditionalWrite
    )
)]
pub async fn save_analysis(
    upserts: web::Data<Upserts>,
    req: HttpRequest,
    writer: Writer,
    body: JsonBody<SaveAnalysisBody>,
) -> ApiResult<HttpResponse> {
    let if_match = req.headers().get(header::IF_MATCH).map(|v| v.to_str().unwrap_or("?"));
    let input = body.0.validate(parse_if_match(if_match)?)?;
    // An If-Match check belongs to its own transaction; the rest share statements with
    // concurrent upserts, and keyed ones store their records in their batch's transaction.
    if input.expected_version.is_none() {
        return Ok(upserts.upsert(input, writer.into_claim()).await?.into_response());
    }
    let mut conn = writer.begin().await?;
    let result = store::upsert_analysis(&mut conn, &input).await;
    writer.finish(conn, result.map(|(c, outcome)| c.reply(outcome))).await
}

/// Stores and analyses the audio, transcribes it when STT is configured, then performs the
/// same upsert as save-analysis. The slow part runs before a database connection is taken.
#[utoipa::path(
    post,
    path = "/api/upload-audio",
    tag = "conversations",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    params(KeyHeader),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Inserted", body = Conversation),
        (status = 200, description = "Existed or updated", body = Conversation),
        UploadWrite
    )
)]
pub async fn upload_audio(
    uploads: web::Data<Uploads>,
    writer: Writer,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let form = upload::form(&req, payload, uploads.max_bytes)?;
    let upload = upload::receive(form, &uploads.audio, uploads.max_bytes).await?;
    let received = upload.audio;
    let (sha256, format, bytes) = (received.sha256.clone(), received.format, received.bytes);
    let store_dir = uploads.audio.clone();
    let (path, analysis) = web::block(move || {
        let path = store_dir.keep(&received.file.into_path(), &received.sha256)?;
        let analysis = audio::analyse(&path, format, bytes);
        std::io::Result::Ok((path, analysis))
    })
    .await
    .map_err(anyhow::Error::from)?
    .map_err(anyhow::Error::from)?;
    let transcript = match &uploads.stt {
        Some(stt) => Some(stt.transcribe(&path, format.content_type(), upload.language.as_deref()).await?),
        None => upload.transcript,
    };
    let mut conn = writer.begin().await?;
    let result = async {
        let audio_id = store::save_audio(&mut conn, &sha256, format.content_type(), bytes as i64, &analysis).await?;
        let input = AnalysisUpsert {
            session_id: upload.session_id.unwrap_or_else(SessionId::generate),
            transcript: Patch::given(transcript),
            analysis: Patch::Set(Some(upload.analysis.unwrap_or(analysis))),
            language: Patch::given(upload.language),
            user_id: Patch::given(upload.user_id),
            audio_id: Patch::Set(Some(audio_id)),
            expected_version: None,
        };
        store::upsert_analysis(&mut conn, &input).await
    }
    .await;
    writer.finish(conn, result.map(|(c, outcome)| c.reply(outcome))).await
}

#[utoipa::path(
    post,
    path = "/api/conversations/{session_id}/messages",
    tag = "conversations",
    request_body = AppendBody,
    params(
        SessionPath,
        KeyHeader
    ),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Inserted (the conversation too, if it did not exist)", body = Appended),
        (status = 200, description = "Existed or updated", body = Appended),
        JsonWriteTo
    )
)]
pub async fn append_messages(path: SessionPath, writer: Writer, body: JsonBody<AppendBody>) -> ApiResult<HttpResponse> {
    let session_id = path.0;
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
    params(
        SessionPath,
        PageQuery
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Page<Message>),
        ListingOf
    )
)]
pub async fn list_messages(
    db: web::Data<Db>,
    path: SessionPath,
    page: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let page = page_request(&page)?;
    let messages = store::list_messages(&mut *db.conn().await?, &path.0, page).await?.ok_or_else(no_conversation)?;
    Ok(HttpResponse::Ok().json(messages))
}

#[utoipa::path(
    get,
    path = "/api/audio/{id}",
    tag = "conversations",
    params(InPath<AudioId>),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The stored bytes (Range requests are answered too)", content_type = "audio/*"),
        Lookup
    )
)]
pub async fn get_audio(
    db: web::Data<Db>,
    uploads: web::Data<Uploads>,
    req: HttpRequest,
    path: InPath<AudioId>,
) -> ApiResult<HttpResponse> {
    let not_found = || ApiError::NotFound(AudioId::NOT_FOUND.into());
    let file = store::get_audio(&mut *db.conn().await?, path.0 .0).await?.ok_or_else(not_found)?;
    let content_type =
        file.content_type.parse().map_err(|_| anyhow::anyhow!("stored content type {:?}", file.content_type))?;
    // Streamed from the file, never read whole; its content address is its entity tag.
    let audio = actix_files::NamedFile::open_async(uploads.audio.path_for(&file.sha256))
        .await
        .map_err(|_| not_found())?
        .set_content_type(content_type)
        .use_etag(false);
    let mut response = audio.into_response(&req);
    let etag = header::HeaderValue::from_str(&format!("\"{}\"", file.sha256)).map_err(anyhow::Error::from)?;
    response.headers_mut().insert(header::ETAG, etag);
    Ok(response)
}
