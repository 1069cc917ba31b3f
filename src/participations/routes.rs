//! Thin handlers for participations and the overlay.

use super::model::{not_found, ParticipationId};
use super::model::{
    ChatCommandBody, ClickBody, CreateBody, Delta, EarningsBody, ImpressionsBody, Overlay, Participation,
    ViewerSampleBody,
};
use super::{qr, store};
use crate::domain::BrowserSourceToken;
use crate::error::{ApiError, ApiResult, JsonWrite, JsonWriteTo, Lookup, PublicLookup, WriteTo};
use crate::extract::{path_segment, InPath, JsonBody, PathSegment};
use crate::idempotency::{KeyHeader, Writer};
use crate::reply::{Outcome, Reply};
use crate::state::{Counters, Db, Lookups, PublicBaseUrl};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};

type ParticipationPath = InPath<ParticipationId>;

// An overlay's browser source token in a path.
path_segment!(
    BrowserSourceToken,
    "token",
    "unknown browser source token",
    |raw| BrowserSourceToken::parse("token", raw).ok(),
    BrowserSourceToken::schema().into()
);
type TokenPath = InPath<BrowserSourceToken>;

fn updated(participation: Option<super::model::Participation>) -> ApiResult<Reply> {
    let participation = participation.ok_or_else(not_found)?;
    Ok(Reply::written("participation", Outcome::Updated, &participation, || participation.location()))
}

#[utoipa::path(
    post,
    path = "/api/participations",
    operation_id = "create_participation",
    tag = "participations",
    request_body = CreateBody,
    params(KeyHeader),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Inserted", body = Participation),
        (status = 200, description = "Existed", body = Participation),
        JsonWrite
    )
)]
pub async fn create(
    writer: Writer,
    lookups: web::Data<Lookups<store::ByPair>>,
    body: JsonBody<CreateBody>,
) -> ApiResult<HttpResponse> {
    let (campaign, streamer) = body.0.validate()?;
    let reply = |(p, outcome): (Participation, Outcome)| Reply::written("participation", outcome, &p, || p.location());
    if let Some(found) = lookups.find((campaign.as_str().to_owned(), streamer.as_str().to_owned())).await? {
        return writer.answer(reply((found, Outcome::Unchanged))).await;
    }
    let mut conn = writer.begin().await?;
    let result = store::insert_or_find(&mut conn, &campaign, &streamer).await;
    writer.finish(conn, result.map(reply)).await
}

#[utoipa::path(
    get,
    path = "/api/participations/{id}",
    operation_id = "get_participation",
    tag = "participations",
    params(ParticipationPath),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Participation),
        Lookup
    )
)]
pub async fn get(db: web::Data<Db>, path: ParticipationPath) -> ApiResult<HttpResponse> {
    let participation = store::get(&mut *db.conn().await?, path.0 .0).await?.ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(participation))
}

/// Counter writes go through the batcher, which coalesces concurrent writes to one row.
async fn record(
    counters: web::Data<Counters>,
    writer: Writer,
    path: ParticipationPath,
    delta: ApiResult<Delta>,
) -> ApiResult<HttpResponse> {
    let reply = counters.apply(path.0 .0, delta?, writer.into_claim()).await?;
    Ok(reply.into_response())
}

#[utoipa::path(
    post,
    path = "/api/participations/{id}/impressions",
    tag = "participations",
    request_body = Option<ImpressionsBody>,
    params(
        ParticipationPath,
        KeyHeader
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Updated", body = Participation),
        JsonWriteTo
    )
)]
pub async fn impressions(
    counters: web::Data<Counters>,
    writer: Writer,
    path: ParticipationPath,
    body: JsonBody<ImpressionsBody>,
) -> ApiResult<HttpResponse> {
    record(counters, writer, path, body.0.delta()).await
}

#[utoipa::path(
    post,
    path = "/api/participations/{id}/clicks",
    tag = "participations",
    request_body = Option<ClickBody>,
    params(
        ParticipationPath,
        KeyHeader
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Updated", body = Participation),
        JsonWriteTo
    )
)]
pub async fn clicks(
    counters: web::Data<Counters>,
    writer: Writer,
    path: ParticipationPath,
    body: JsonBody<ClickBody>,
) -> ApiResult<HttpResponse> {
    record(counters, writer, path, body.0.delta()).await
}

#[utoipa::path(
    post,
    path = "/api/participations/{id}/viewer-samples",
    tag = "participations",
    request_body = ViewerSampleBody,
    params(
        ParticipationPath,
        KeyHeader
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Updated", body = Participation),
        JsonWriteTo
    )
)]
pub async fn viewer_samples(
    counters: web::Data<Counters>,
    writer: Writer,
    path: ParticipationPath,
    body: JsonBody<ViewerSampleBody>,
) -> ApiResult<HttpResponse> {
    record(counters, writer, path, body.0.delta()).await
}

#[utoipa::path(
    post,
    path = "/api/participations/{id}/earnings",
    tag = "participations",
    request_body = EarningsBody,
    params(
        ParticipationPath,
        KeyHeader
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Updated", body = Participation),
        JsonWriteTo
    )
)]
pub async fn earnings(
    counters: web::Data<Counters>,
    writer: Writer,
    path: ParticipationPath,
    body: JsonBody<EarningsBody>,
) -> ApiResult<HttpResponse> {
    record(counters, writer, path, body.0.delta()).await
}

/// The tracking URL of a participation is its overlay URL: this prefix and the token.
fn overlay_base(public: &PublicBaseUrl) -> String {
    format!("{}/api/overlay/", public.0)
}

#[utoipa::path(
    post,
    path = "/api/participations/{id}/chat-command",
    tag = "participations",
    request_body = Option<ChatCommandBody>,
    params(
        ParticipationPath,
        KeyHeader
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Updated", body = Participation),
        JsonWriteTo
    )
)]
pub async fn chat_command(
    public: web::Data<PublicBaseUrl>,
    writer: Writer,
    path: ParticipationPath,
    body: JsonBody<ChatCommandBody>,
) -> ApiResult<HttpResponse> {
    let command = body.0.validate()?;
    let mut conn = writer.begin().await?;
    let result = store::set_chat_command(&mut conn, path.0 .0, command.as_deref(), &overlay_base(&public)).await;
    writer.finish(conn, result.map_err(ApiError::from).and_then(updated)).await
}

/// Makes the QR code of the tracking URL. Rendering happens before a connection is taken.
#[utoipa::path(
    post,
    path = "/api/participations/{id}/qr-code",
    tag = "participations",
    params(
        ParticipationPath,
        KeyHeader
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Updated", body = Participation),
        WriteTo
    )
)]
pub async fn make_qr_code(
    db: web::Data<Db>,
    public: web::Data<PublicBaseUrl>,
    writer: Writer,
    path: ParticipationPath,
) -> ApiResult<HttpResponse> {
    let id = path.0 .0;
    let current = store::get(&mut *db.conn().await?, id).await?.ok_or_else(not_found)?;
    let url = format!("{}{}", overlay_base(&public), current.browser_source_token);
    let image = qr::png(&url)?;
    // The overlay holds only its token: the image it shows is served by token, publicly.
    let image_url = format!("{url}/qr-code.png");
    let mut conn = writer.begin().await?;
    let result = store::set_qr_code(&mut conn, id, &image, &url, &image_url).await;
    writer.finish(conn, result.map_err(ApiError::from).and_then(updated)).await
}

#[utoipa::path(
    get,
    path = "/api/participations/{id}/qr-code.png",
    tag = "participations",
    params(ParticipationPath),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "PNG image", content_type = "image/png"),
        Lookup
    )
)]
pub async fn qr_code_png(db: web::Data<Db>, path: ParticipationPath) -> ApiResult<HttpResponse> {
    let png = store::qr_code_png(&mut *db.conn().await?, path.0 .0)
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
    params(TokenPath),
    responses(
        (status = 200, body = Overlay),
        PublicLookup
    )
)]
pub async fn overlay(db: web::Data<Db>, path: TokenPath) -> ApiResult<HttpResponse> {
    let view = store::overlay(&mut *db.conn().await?, path.0.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(BrowserSourceToken::NOT_FOUND.into()))?;
    Ok(HttpResponse::Ok().json(view))
}

#[utoipa::path(
    get,
    path = "/api/overlay/{token}/qr-code.png",
    tag = "participations",
    description = "The QR image of the participation that holds this browser source token, as its overlay shows \
                   it: public like the overlay (no bearer token), and what `qr_code_url` points at.",
    params(TokenPath),
    responses(
        (status = 200, description = "PNG image", content_type = "image/png"),
        PublicLookup
    )
)]
pub async fn overlay_qr_code_png(db: web::Data<Db>, path: TokenPath) -> ApiResult<HttpResponse> {
    let png = store::overlay_qr_code_png(&mut *db.conn().await?, path.0.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound("unknown browser source token, or no QR code made for it yet".into()))?;
    Ok(png_response(png))
}
