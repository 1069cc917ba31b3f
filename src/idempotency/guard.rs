//! The middleware that claims keys before handlers run and settles them afterwards.

use super::store::{self, Claimed, StoredResponse};
use super::Claim;
use crate::domain::IdempotencyKey;
use crate::error::{ApiError, ApiResult};
use crate::extract::read_limited;
use crate::reply::Reply;
use crate::startup::AppState;
use actix_web::body::{self, BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderName;
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse, ResponseError};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::time::{Duration, Instant};

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED: &str = "idempotent-replayed";
/// How long a duplicate waits for the first request before answering 409.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(2);
/// Response headers a replay repeats; the rest (date, length) belong to the transport.
const REPLAYED_HEADERS: [&str; 5] = ["content-type", "location", "etag", "upsert-outcome", "retry-after"];

fn problem(req: ServiceRequest, error: ApiError) -> ServiceResponse<BoxBody> {
    req.into_response(error.error_response())
}

pub async fn guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let keyed_write = req.method() == Method::POST && req.path().starts_with("/api/");
    let Some(raw_key) = req.headers().get(HEADER).filter(|_| keyed_write).cloned() else {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };
    let key = match IdempotencyKey::parse(raw_key.as_bytes()) {
        Ok(key) => key,
        Err(why) => return Ok(problem(req, ApiError::InvalidIdempotencyKey(why.into()))),
    };
    let state = req.app_data::<web::Data<AppState>>().expect("AppState is registered").clone();
    // Multipart uploads are the largest bodies a POST may carry.
    let limit = state.max_upload_bytes as usize + 1024 * 1024;
    let body = match read_limited(&mut req.take_payload(), limit).await {
        Ok(body) => body.freeze(),
        Err(error) => return Ok(problem(req, error)),
    };
    let fingerprint = fingerprint(&req, &body);
    req.set_payload(Payload::from(body));
    let claim = Claim {
        scope: req.extensions().get::<Scope>().map(|s| s.0.clone()).unwrap_or_default(),
        key: key.as_str().to_owned(),
        method: req.method().to_string(),
        path: req.path().to_owned(),
        claim_id: uuid::Uuid::new_v4(),
        deferred: crate::participations::routes::claims_in_batch(req.path()),
        fingerprint,
        completed: Default::default(),
    };
    if !claim.deferred {
        match wait_for_claim(&state, &claim).await.map(held) {
            Ok(None) => {}
            Ok(Some(answer)) => return Ok(req.into_response(respond(answer))),
            Err(error) => return Ok(problem(req, error)),
        }
    }
    req.extensions_mut().insert(claim.clone());
    let response = next.call(req).await?.map_into_boxed_body();
    settle(&state, &claim, response).await
}

/// The auth layer's scope for keys (a hash of the caller's token), when auth is on.
#[derive(Debug, Clone)]
pub struct Scope(pub String);

/// Method, path and body. A multipart body's boundary is chosen afresh by most clients on
/// every attempt, so it is replaced by a fixed token before hashing: a retried upload of the
/// same parts matches its original.
fn fingerprint(req: &ServiceRequest, body: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(req.method().as_str());
    hasher.update(b"\n");
    hasher.update(req.path());
    hasher.update(b"\n");
    let boundary = req
        .mime_type()
        .ok()
        .flatten()
        .filter(|mime| mime.essence_str() == "multipart/form-data")
        .and_then(|mime| mime.get_param("boundary").map(|b| b.as_str().to_owned()));
    match boundary.filter(|b| !b.is_empty()) {
        Some(boundary) => {
            let mut rest = body;
            while let Some(at) = find(rest, boundary.as_bytes()) {
                hasher.update(&rest[..at]);
                hasher.update(b"<boundary>");
                rest = &rest[at + boundary.len()..];
            }
            hasher.update(rest);
        }
        None => hasher.update(body),
    }
    hasher.finalize().to_vec()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// Claims the key, waiting up to [`WAIT_FOR_FIRST`] (between short polls that each borrow a
/// connection only for one statement) for a concurrent first request to finish.
async fn wait_for_claim(state: &AppState, claim: &Claim) -> Result<Claimed, ApiError> {
    let deadline = Instant::now() + WAIT_FOR_FIRST;
    let mut pause = Duration::from_millis(5);
    loop {
        let claimed = state.claims.claim(&state.pool, claim, state.idempotency).await?;
        if !matches!(claimed, Claimed::InFlight(_)) || Instant::now() + pause > deadline {
            return Ok(claimed);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// The answer for a key another request holds: its stored response (a replay), 422 when that
/// request had another body, 409 while it still runs. `None`: the key is ours.
fn held(claimed: Claimed) -> Option<ApiResult<Reply>> {
    match claimed {
        Claimed::Ours => None,
        Claimed::Replay(stored) => {
            crate::ops::metrics::replayed();
            let mut headers: Vec<(HeaderName, String)> =
                stored.headers.into_iter().filter_map(|(name, value)| Some((name.try_into().ok()?, value))).collect();
            headers.push((HeaderName::from_static(REPLAYED), "true".to_owned()));
            let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
            Some(Ok(Reply { status, headers, body: stored.body }))
        }
        Claimed::Mismatch => Some(Err(ApiError::IdempotencyKeyReused)),
        Claimed::InFlight(left) => {
            let retry_after_secs = left.as_secs_f64().ceil().max(1.0) as u64;
            Some(Err(ApiError::IdempotencyKeyInFlight { retry_after_secs }))
        }
    }
}

fn respond(answer: ApiResult<Reply>) -> HttpResponse {
    answer.map_or_else(|error| error.error_response(), Reply::into_response)
}

/// For a write that claims its key itself and lost it to an earlier request: that request's
/// answer, which the guard then leaves as it is.
pub async fn held_elsewhere(pool: &PgPool, claim: &Claim) -> ApiResult<Reply> {
    claim.mark_completed();
    held(store::inspect(pool, claim).await?).unwrap_or(Err(ApiError::Conflict))
}

/// Stores an answer the handler did not store itself (below 500), or gives the key back (5xx).
async fn settle(
    state: &AppState,
    claim: &Claim,
    response: ServiceResponse<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if claim.is_completed() {
        return Ok(response);
    }
    if response.status().is_server_error() {
        if claim.deferred {
            return Ok(response);
        }
        if let Err(error) = store::release(&state.pool, claim).await {
            tracing::warn!(%error, "could not release an idempotency key; it frees itself when its lease ends");
        }
        return Ok(response);
    }
    let (req, res) = response.into_parts();
    let (head, body) = res.into_parts();
    let body = body::to_bytes(body).await.map_err(|_| actix_web::error::ErrorInternalServerError("body"))?;
    let headers = REPLAYED_HEADERS
        .iter()
        .filter_map(|name| Some((name.to_string(), head.headers().get(*name)?.to_str().ok()?.to_owned())))
        .collect();
    let stored = StoredResponse { status: head.status().as_u16(), headers, body: body.to_vec() };
    if claim.deferred {
        // Answered without a write (a 4xx): claim and record together, unless an earlier
        // request holds the key, whose answer then wins.
        if let Some(answer) = held(store::claim_and_store(&state.pool, claim, &stored, state.idempotency).await?) {
            return Ok(ServiceResponse::new(req, respond(answer)));
        }
    } else {
        let mut conn = state.conn().await?;
        store::complete(&mut conn, claim, &stored).await?;
    }
    Ok(ServiceResponse::new(req, head.set_body(body).map_into_boxed_body()))
}
