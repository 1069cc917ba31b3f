//! The middleware that claims keys before handlers run and settles them afterwards.
//!
//! It is attached to each route that takes keys where the route is registered
//! ([`keys`], in `startup::routes`), with that route's [`Keys`] policy: which routes take keys
//! and how is decided by the router, never by reading the URL. The key's scope is the routed
//! path (see [`routed_target`]), so every spelling of a URL that reaches one route with one set
//! of parameters shares one key.

use super::claim::Claim;
use super::layer::Layer;
use super::store::{self, Claimed, StoredResponse};
use crate::domain::{optional_header, IdempotencyKey};
use crate::error::{ApiError, ApiResult, Transient};
use crate::extract::JsonConfig;
use crate::extract::{multipart_boundary, read_limited};
use crate::reply::Reply;
use actix_web::body::{self, BoxBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::HeaderName;
use actix_web::http::StatusCode;
use actix_web::middleware::{from_fn, Next};
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

/// Longest routed path stored as it is; a longer one (no valid target is near it) is stored as
/// its digest, so a claim's index row has a bounded size whatever a client sends.
const MAX_STORED_PATH: usize = 512;

/// The `Idempotency-Key` header as the OpenAPI document describes it, on every keyed route:
/// the rules of [`IdempotencyKey::parse`].
pub struct KeyHeader;

impl utoipa::IntoParams for KeyHeader {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(IdempotencyKey::MAX_LEN))
            .pattern(Some("^[\\x21-\\x7E]+$"))
            .examples(["7c1e3a9e-5f0b-4c2d-9a51-0e6f2b8d4c11"]);
        optional_header(
            "Idempotency-Key",
            "Makes a retried request take effect once (API.md §2): 1-255 visible ASCII characters",
            schema.build(),
        )
    }
}

/// How a route takes `Idempotency-Key`s: declared where the route is registered.
#[derive(Debug, Clone, Copy)]
pub struct Keys {
    /// The route's write records the key itself, in the statement or the transaction of its
    /// effect (the counters, the JSON writes), instead of the guard claiming it before the
    /// handler runs.
    pub claimed_in_statement: bool,
    /// A multipart body (upload-audio): the larger limit, and the boundary is not fingerprinted.
    pub multipart: bool,
    /// The route parameter naming the row whose statement records the key: its record lives
    /// beside that row (on Citus, on its shard), so record and effect commit on one shard.
    pub beside: Option<&'static str>,
}

impl Keys {
    /// A multipart upload, claimed before its handler runs: its slow work (storing, analysing
    /// and transcribing the audio) comes before its transaction, and a duplicate must not
    /// repeat it.
    pub const MULTIPART: Keys = Keys { claimed_in_statement: false, multipart: true, beside: None };
    /// A coalesced counter write, whose batch statement records the key beside the
    /// participation it counts for.
    pub const IN_STATEMENT: Keys = Keys { claimed_in_statement: true, multipart: false, beside: Some("id") };
    /// A JSON write that records its key in the transaction of its effect (`Writer`, or the
    /// batches of save-analysis), or alone when it wrote nothing: no claim before, no lease.
    pub const IN_TRANSACTION: Keys = Keys { claimed_in_statement: true, multipart: false, beside: None };
}

/// The guard as a route's middleware (`web::post().to(handler).wrap(keys(Keys::IN_TRANSACTION))`).
pub fn keys<S>(
    policy: Keys,
) -> impl Transform<S, ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error, InitError = ()>
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error> + 'static,
{
    from_fn(move |req: ServiceRequest, next: Next<BoxBody>| guard(policy, req, next))
}

fn problem(req: ServiceRequest, error: ApiError) -> ServiceResponse<BoxBody> {
    req.into_response(error.error_response())
}

async fn guard(
    policy: Keys,
    mut req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(raw_key) = req.headers().get(HEADER).cloned() else {
        return next.call(req).await;
    };
    let key = match IdempotencyKey::parse(raw_key.as_bytes()) {
        Ok(key) => key,
        Err(why) => return Ok(problem(req, ApiError::InvalidIdempotencyKey(why.into()))),
    };
    let layer = req.app_data::<web::Data<Layer>>().expect("the idempotency layer is registered").clone();
    let boundary = match policy.multipart.then(|| multipart_boundary(&req)).flatten() {
        Some(Err(error)) => return Ok(problem(req, error)),
        boundary => boundary.and_then(Result::ok),
    };
    let limit = match policy.multipart {
        // The parts' headers and boundaries come on top of the audio itself.
        true => layer.max_multipart_bytes,
        false => req.app_data::<JsonConfig>().copied().unwrap_or_default().limit,
    };
    let body = match read_limited(&mut req.take_payload(), limit).await {
        Ok(body) => body.freeze(),
        Err(error) => return Ok(problem(req, error)),
    };
    let target = routed_target(&req);
    let fingerprint = fingerprint(req.method().as_str(), &target, boundary.as_deref(), &body);
    req.set_payload(Payload::from(body));
    let scope = req.extensions().get::<Scope>().map(|s| s.0.clone()).unwrap_or_default();
    let method = req.method().to_string();
    let claim = Claim {
        shard: shard(policy, &req, key.as_str()),
        digest: super::claim::digest(&scope, &method, &target, key.as_str()),
        scope,
        key: key.as_str().to_owned(),
        method,
        path: target,
        claim_id: uuid::Uuid::new_v4(),
        deferred: policy.claimed_in_statement,
        fingerprint,
        completed: Default::default(),
    };
    if !claim.deferred {
        match wait_for_claim(&layer, &claim).await.map(held) {
            Ok(None) => {}
            Ok(Some(answer)) => return Ok(req.into_response(respond(answer))),
            Err(error) => return Ok(problem(req, error)),
        }
    }
    req.extensions_mut().insert(claim.clone());
    let response = next.call(req).await?;
    settle(&layer, &claim, response).await
}

/// The auth layer's scope for keys (a hash of the caller's token), when auth is on.
#[derive(Debug, Clone)]
pub struct Scope(pub String);

/// The path the router matched, as the router reads it: percent-decoded except `%`, `/` and
/// `+`, which it keeps encoded so that a `%2F` inside a parameter stays inside it. Two
/// spellings that reach one route with one set of parameters read the same here. A path too
/// long or holding a control character (a decoded `%00`, which PostgreSQL's text refuses) is
/// stored as its digest: it matches no valid resource, and its claim must not fail for it.
fn routed_target(req: &ServiceRequest) -> String {
    let routed = req.match_info().as_str();
    if routed.len() <= MAX_STORED_PATH && !routed.contains(char::is_control) {
        routed.to_owned()
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(routed.as_bytes())))
    }
}

/// Where the key's record lives: the id of the row the route names, when the path spells it in
/// the canonical 36-character form (migration 21 reads the paths of older records by the same
/// rule), else the first 16 bytes of the key's SHA-256. A function of the routed path and the
/// key, as the record's primary key requires.
fn shard(policy: Keys, req: &ServiceRequest, key: &str) -> uuid::Uuid {
    let beside = policy.beside.and_then(|name| req.match_info().get(name)).filter(|id| id.len() == 36);
    match beside.and_then(|id| uuid::Uuid::try_parse(id).ok()) {
        Some(id) => id,
        None => uuid::Uuid::from_slice(&Sha256::digest(key.as_bytes())[..16]).expect("16 bytes"),
    }
}

/// Method, routed path and body. A multipart body's boundary is chosen afresh by most clients
/// on every attempt, so it is replaced by a fixed token before hashing: a retried upload of the
/// same parts matches its original. The search is linear in the body (`memmem`).
fn fingerprint(method: &str, target: &str, boundary: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(method);
    hasher.update(b"\n");
    hasher.update(target);
    hasher.update(b"\n");
    match boundary {
        Some(boundary) => {
            let mut from = 0;
            for at in memchr::memmem::find_iter(body, boundary.as_bytes()) {
                hasher.update(&body[from..at]);
                hasher.update(b"<boundary>");
                from = at + boundary.len();
            }
            hasher.update(&body[from..]);
        }
        None => hasher.update(body),
    }
    hasher.finalize().to_vec()
}

/// Claims the key, waiting up to [`WAIT_FOR_FIRST`] (between short polls that each borrow a
/// connection only for one statement) for a concurrent first request to finish.
async fn wait_for_claim(layer: &Layer, claim: &Claim) -> Result<Claimed, ApiError> {
    let deadline = Instant::now() + WAIT_FOR_FIRST;
    let mut pause = Duration::from_millis(5);
    loop {
        let claimed = layer.claims.claim(&layer.pool, claim, None, layer.config).await?;
        if !matches!(claimed, Claimed::InFlight(_)) || Instant::now() + pause > deadline {
            return Ok(claimed);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// The answer for a key another request holds: its stored response (a replay), 422 when that
/// request had another body, 409 while it still runs. `None`: the key is ours.
pub(super) fn held(claimed: Claimed) -> Option<ApiResult<Reply>> {
    match claimed {
        Claimed::Ours => None,
        Claimed::Replay(stored) => {
            crate::recorder::replayed();
            let mut headers: Vec<(HeaderName, String)> =
                stored.headers.into_iter().filter_map(|(name, value)| Some((name.try_into().ok()?, value))).collect();
            headers.push((HeaderName::from_static(REPLAYED), "true".to_owned()));
            let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
            Some(Ok(Reply { status, headers, body: stored.body, counted: None }))
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

/// Stores an answer the handler did not store itself (below 500), or gives the key back (5xx,
/// or a [`Transient`] conflict).
async fn settle(
    layer: &Layer,
    claim: &Claim,
    response: ServiceResponse<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if claim.is_completed() {
        return Ok(response);
    }
    // A 5xx or a transient conflict says nothing about the request: the retry runs it again.
    if response.status().is_server_error() || response.response().extensions().contains::<Transient>() {
        if claim.deferred {
            return Ok(response);
        }
        if let Err(error) = store::release(&layer.pool, claim).await {
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
        if let Some(answer) = held(layer.claims.claim(&layer.pool, claim, Some(&stored), layer.config).await?) {
            return Ok(ServiceResponse::new(req, respond(answer)));
        }
    } else {
        let mut conn = crate::db::acquire(&layer.pool).await.map_err(ApiError::from)?;
        store::complete(&mut conn, claim, &stored).await?;
    }
    Ok(ServiceResponse::new(req, head.set_body(body).map_into_boxed_body()))
}
