//! Thin handlers for participations and the overlay.

use super::model::{
    ChatCommandBody, ClickBody, CreateBody, Delta, EarningsBody, ImpressionsBody, Overlay, Participation,
    ViewerSampleBody,
};
use super::{not_found, qr, store};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::JsonBody;
use crate::idempotency::Writer;
use crate::reply::{Outcome, Reply};
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use uuid::Uuid;

fn path_id(raw: &str) -> ApiResult<Uuid> {
    raw.parse().map_err(|_| not_found())
}

fn updated(participation: Option<super::model::Participation>) -> ApiResult<Reply> {
    let participation = participation.ok_or_else(not_found)?;
    Ok(Reply::written("participation", Outcome::Updated, &participation, || participation.location()))
}

#[utoipa::path(
    post,
    path = "/api/participations",
    tag = "participations",
    request_body = CreateBody,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request count once (API.md §2)")
    ),
    responses(
        (status = 201, description = "Inserted", body = Participation),
        (status = 200, description = "Existed or updated", body = Participation),
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
pub async fn create(writer: Writer, body: JsonBody<CreateBody>) -> ApiResult<HttpResponse> {
    let (campaign, streamer) = body.0.validate()?;
    let mut conn = writer.begin().await?;
    let result = store::create_or_get(&mut conn, &campaign, &streamer).await;
    writer.finish(conn, result.map(|(p, outcome)| Reply::written("participation", outcome, &p, || p.location()))).await
}

#[utoipa::path(
    get,
    path = "/api/participations/{id}",
    tag = "participations",
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, body = Participation),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn get(state: web::Data<AppState>, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let participation = store::get(&mut *state.conn().await?, path_id(&path)?).await?.ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(participation))
}

/// Counter writes go through the batcher, which coalesces concurrent writes to one row.
async fn record(
    state: web::Data<AppState>,
    writer: Writer,
    id: &str,
    delta: ApiResult<Delta>,
) -> ApiResult<HttpResponse> {
    let (id, delta) = (path_id(id)?, delta?);
    let reply = state.counters.apply(&state.pool, state.idempotency, id, delta, writer.claim()).await?;
    Ok(reply.into_response())
}

#[utoipa::path(
    post,
    path = "/api/participations/{id}/impressions",
    tag = "participations",
    request_body = ImpressionsBody,
    params(
        ("id" = uuid::Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request count once (API.md §2)")
    ),
    responses(
        (status = 200, description = "Existed or updated", body = Participation),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (
            status = 409,
            description = "Idempotency key in flight or version mismatch",
            body = Problem,
            content_type = "application/problem+json"
        ),
        (status = 422, description = "Invalid values", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn impressions(
    state: web::Data<AppState>,
    writer: Writer,
    path: web::Path<String>,
    body: JsonBody<ImpressionsBody>,
) -> ApiResult<HttpResponse> {
    record(state, writer, &path, body.0.delta()).await
}

#[utoipa::path(
    post,
    path = "/api/participations/{id}/clicks",
    tag = "participations",
    request_body = ClickBody,
    params(
        ("id" = uuid::Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request count once (API.md §2)")
    ),
    responses(
        (status = 200, description = "Existed or updated", body = Participation),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (
            status = 409,
            description = "Idempotency key in flight or version mismatch",
            body = Problem,
            content_type = "application/problem+json"
        ),
        (status = 422, description = "Invalid values", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn clicks(
    state: web::Data<AppState>,
    writer: Writer,
    path: web::Path<String>,
    body: JsonBody<ClickBody>,
) -> ApiResult<HttpResponse> {
    record(state, writer, &path, body.0.delta()).await
}

#[utoipa::path(
    post,
    path = "/api/participations/{id}/viewer-samples",
    tag = "participations",
    request_body = ViewerSampleBody,
    params(
        ("id" = uuid::Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request count once (API.md §2)")
    ),
    responses(
        (status = 200, description = "Existed or updated", body = Participation),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (
            status = 409,
            description = "Idempotency key in flight or version mismatch",
            body = Problem,
            content_type = "application/problem+json"
        ),
        (status = 422, description = "Invalid values", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn viewer_samples(
    state: web::Data<AppState>,
    writer: Writer,
    path: web::Path<String>,
    body: JsonBody<ViewerSampleBody>,
) -> ApiResult<HttpResponse> {
    record(state, writer, &path, body.0.delta()).await
}

#[utoipa::path(
    post,
    path = "/api/participations/{id}/earnings",
    tag = "participations",
    request_body = EarningsBody,
    params(
        ("id" = uuid::Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request count once (API.md §2)")
    ),
    responses(
        (status = 200, description = "Existed or updated", body = Participation),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (
            status = 409,
            description = "Idempotency key in flight or version mismatch",
            body = Problem,
            content_type = "application/problem+json"
        ),
        (status = 422, description = "Invalid values", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn earnings(
    state: web::Data<AppState>,
    writer: Writer,
    path: web::Path<String>,
    body: JsonBody<EarningsBody>,
) -> ApiResult<HttpResponse> {
    record(state, writer, &path, body.0.delta()).await
}

/// The tracking URL of a participation is its overlay URL: this prefix and the token.
fn overlay_base(state: &AppState) -> String {
    format!("{}/api/overlay/", state.public_base_url)
}

#[utoipa::path(
    post,
    path = "/api/participations/{id}/chat-command",
    tag = "participations",
    request_body = ChatCommandBody,
    params(
        ("id" = uuid::Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request count once (API.md §2)")
    ),
    responses(
        (status = 200, description = "Existed or updated", body = Participation),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (
            status = 409,
            description = "Idempotency key in flight or version mismatch",
            body = Problem,
            content_type = "application/problem+json"
        ),
        (status = 422, description = "Invalid values", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn chat_command(
    state: web::Data<AppState>,
    writer: Writer,
    path: web::Path<String>,
    body: JsonBody<ChatCommandBody>,
) -> ApiResult<HttpResponse> {
    let (id, command) = (path_id(&path)?, body.0.validate()?);
    let mut conn = writer.begin().await?;
    let result = store::set_chat_command(&mut conn, id, command.as_deref(), &overlay_base(&state)).await;
    writer.finish(conn, result.and_then(updated)).await
}

/// Makes the QR code of the tracking URL. Rendering happens before a connection is taken.
#[utoipa::path(
    post,
    path = "/api/participations/{id}/qr-code",
    tag = "participations",
    params(
        ("id" = uuid::Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request count once (API.md §2)")
    ),
    responses(
        (status = 200, description = "Existed or updated", body = Participation),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (
            status = 409,
            description = "Idempotency key in flight or version mismatch",
            body = Problem,
            content_type = "application/problem+json"
        ),
        (status = 422, description = "Invalid values", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn make_qr_code(
    state: web::Data<AppState>,
    writer: Writer,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = path_id(&path)?;
    let current = store::get(&mut *state.conn().await?, id).await?.ok_or_else(not_found)?;
    let url = format!("{}{}", overlay_base(&state), current.browser_source_token);
    let image = qr::png(&url)?;
    // The overlay holds only its token: the image it shows is served by token, publicly.
    let image_url = format!("{url}/qr-code.png");
    let mut conn = writer.begin().await?;
    let result = store::set_qr_code(&mut conn, id, &image, &url, &image_url).await;
    writer.finish(conn, result.and_then(updated)).await
}

#[utoipa::path(
    get,
    path = "/api/participations/{id}/qr-code.png",
    tag = "participations",
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "PNG image", content_type = "image/png"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn qr_code_png(state: web::Data<AppState>, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let png = store::qr_code_png(&mut *state.conn().await?, path_id(&path)?)
        .await?
        .ok_or_else(|| ApiError::NotFound("no QR code has been made for this participation".into()))?;
    Ok(png_response(png))
}

fn png_response(png: Vec<u8>) -> HttpResponse {
    HttpResponse::build(StatusCode::OK).content_type("image/png").body(png)
}

#[utoipa::path(
    get,
    path = "/api/overlay/{token}",
    tag = "participations",
    params(("token" = String, Path)),
    responses(
        (status = 200, body = Overlay),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn overlay(state: web::Data<AppState>, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let view = store::overlay(&mut *state.conn().await?, &path)
        .await?
        .ok_or_else(|| ApiError::NotFound("unknown browser source token".into()))?;
    Ok(HttpResponse::Ok().json(view))
}

#[utoipa::path(
    get,
    path = "/api/overlay/{token}/qr-code.png",
    tag = "participations",
    description = "The QR image of the participation that holds this browser source token, as its overlay shows \
                   it: public like the overlay (no bearer token), and what `qr_code_url` points at.",
    params(("token" = String, Path)),
    responses(
        (status = 200, description = "PNG image", content_type = "image/png"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn overlay_qr_code_png(state: web::Data<AppState>, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let png = store::overlay_qr_code_png(&mut *state.conn().await?, &path)
        .await?
        .ok_or_else(|| ApiError::NotFound("unknown browser source token, or no QR code made for it yet".into()))?;
    Ok(png_response(png))
}
