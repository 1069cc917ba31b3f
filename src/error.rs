//! One error type for the HTTP layer, rendered as RFC 9457 problem documents.
//!
//! Stores say what happened in the database ([`StoreError`]: an outage, a conflict, a refused
//! field, a version mismatch); this is where that becomes an answer, so a unique violation can
//! never surface as a 500.

use crate::db::StoreError;
use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// A field-level validation message; `field` is the JSON path of the offending value.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed request: {detail}")]
    Malformed { detail: String, field: Option<String> },
    #[error("invalid Idempotency-Key: {0}")]
    InvalidIdempotencyKey(String),
    #[error("unauthorized")]
    Unauthorized,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// `allow`: the route's methods, for the `Allow` header RFC 9110 §15.5.6 requires.
    #[error("method not allowed")]
    MethodNotAllowed { allow: String },
    #[error("idempotency key in flight")]
    IdempotencyKeyInFlight { retry_after_secs: u64 },
    #[error("version mismatch: {0}")]
    VersionMismatch(String),
    #[error("conflicting concurrent write")]
    Conflict,
    #[error("payload too large (limit {limit} bytes)")]
    PayloadTooLarge { limit: u64 },
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("unsupported audio: {0}")]
    UnsupportedAudio(String),
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("idempotency key reused")]
    IdempotencyKeyReused,
    #[error("speech-to-text backend failed: {0}")]
    SttFailed(String),
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    pub fn malformed(detail: impl Into<String>) -> Self {
        ApiError::Malformed { detail: detail.into(), field: None }
    }

    /// The error of a coalesced batch, once for each write it held. An `anyhow::Error` cannot
    /// be cloned; the copy keeps what the client is told.
    pub fn copy(&self) -> ApiError {
        match self {
            ApiError::DatabaseUnavailable(why) => ApiError::DatabaseUnavailable(why.clone()),
            ApiError::Validation(errors) => ApiError::Validation(errors.clone()),
            ApiError::IdempotencyKeyInFlight { retry_after_secs } => {
                ApiError::IdempotencyKeyInFlight { retry_after_secs: *retry_after_secs }
            }
            ApiError::Conflict => ApiError::Conflict,
            other => ApiError::Internal(anyhow::anyhow!("batch failed: {other}")),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Malformed { .. } => "malformed_request",
            ApiError::InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::IdempotencyKeyInFlight { .. } => "idempotency_key_in_flight",
            ApiError::VersionMismatch(_) => "version_mismatch",
            ApiError::Conflict => "conflict",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::UnsupportedAudio(_) => "unsupported_audio",
            ApiError::Validation(_) => "validation_failed",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::SttFailed(_) => "transcription_failed",
            ApiError::DatabaseUnavailable(_) => "database_unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// What the client may read. 5xx details stay in the log.
    fn detail(&self) -> String {
        match self {
            ApiError::Malformed { detail, .. } => detail.clone(),
            ApiError::InvalidIdempotencyKey(why) => format!("Idempotency-Key {why}"),
            ApiError::Unauthorized => "send Authorization: Bearer <token>".into(),
            ApiError::Forbidden(why) => why.clone(),
            ApiError::NotFound(what) => what.clone(),
            ApiError::MethodNotAllowed { .. } => "this route does not accept that method".into(),
            ApiError::IdempotencyKeyInFlight { .. } => {
                "a request with this Idempotency-Key is still running; retry later".into()
            }
            ApiError::VersionMismatch(why) => why.clone(),
            ApiError::Conflict => "a concurrent write got in the way; retry the request".into(),
            ApiError::PayloadTooLarge { limit } => format!("the body exceeds {limit} bytes"),
            ApiError::UnsupportedMediaType(why) | ApiError::UnsupportedAudio(why) => why.clone(),
            ApiError::Validation(errors) => match errors.as_slice() {
                [one] => format!("{}: {}", one.field, one.message),
                _ => format!("{} fields are invalid", errors.len()),
            },
            ApiError::IdempotencyKeyReused => {
                "this Idempotency-Key was used with a different method, path or body".into()
            }
            ApiError::SttFailed(_) => "the speech-to-text backend did not answer; retry".into(),
            ApiError::DatabaseUnavailable(_) => "the database is unavailable; retry shortly".into(),
            ApiError::Internal(_) => "internal error; see the server log".into(),
        }
    }

    fn field_errors(&self) -> Option<Vec<FieldError>> {
        match self {
            ApiError::Validation(errors) => Some(errors.clone()),
            ApiError::Malformed { field: Some(field), detail } => {
                Some(vec![FieldError::new(field.clone(), detail.clone())])
            }
            _ => None,
        }
    }
}

/// Marks a response (in its extensions) that tells nothing about the request itself: a
/// concurrent write got in the way (a deadlock, a serialization failure) and a retry may well
/// succeed. Such an answer is never stored as an idempotency key's answer.
#[derive(Debug, Clone, Copy)]
pub struct Transient;

/// An RFC 9457 problem document: every 4xx and 5xx answer has this shape.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[schema(value_type = String)]
    title: &'a str,
    status: u16,
    detail: String,
    /// Stable snake_case word clients switch on.
    #[schema(value_type = String)]
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<Vec<FieldError>>,
}

fn problem_response(status: StatusCode, code: &str, detail: String, errors: Option<Vec<FieldError>>) -> HttpResponse {
    let problem = Problem {
        kind: format!("urn:upsertd:problem:{code}"),
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail,
        code,
        errors,
    };
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, PROBLEM_JSON))
        .body(serde_json::to_vec(&problem).expect("a problem document always serialises"))
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Malformed { .. } | ApiError::InvalidIdempotencyKey(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::IdempotencyKeyInFlight { .. } | ApiError::VersionMismatch(_) | ApiError::Conflict => {
                StatusCode::CONFLICT
            }
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) | ApiError::UnsupportedAudio(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation(_) | ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::SttFailed(_) => StatusCode::BAD_GATEWAY,
            ApiError::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(error = ?self, code = self.code(), "request failed");
        }
        let mut response = problem_response(status, self.code(), self.detail(), self.field_errors());
        let retry_after = match self {
            ApiError::IdempotencyKeyInFlight { retry_after_secs } => Some(*retry_after_secs),
            ApiError::DatabaseUnavailable(_) | ApiError::Conflict => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, ApiError::Conflict) {
            response.extensions_mut().insert(Transient);
        }
        if let ApiError::MethodNotAllowed { allow } = self {
            if let Ok(allow) = HeaderValue::from_str(allow) {
                response.headers_mut().insert(header::ALLOW, allow);
            }
        }
        response
    }
}

/// What each problem status means, as the OpenAPI document tells it: one description per
/// status, shared by every operation that can answer it.
fn problem_description(status: u16) -> &'static str {
    match status {
        400 => {
            "Malformed request: not JSON, not an object, a value of the wrong JSON type (`errors` names the \
                field), or a malformed Idempotency-Key"
        }
        401 => "No valid bearer token (when the server runs with API_TOKENS)",
        403 => "Without API_TOKENS: a Host that does not name this server, or a write from a foreign Origin",
        404 => "Nothing has this id (a malformed id is not found either)",
        409 => {
            "The Idempotency-Key is held by a request still running, or a concurrent write got in the way: \
                retry after Retry-After"
        }
        413 => "The body is larger than its limit",
        415 => "The body is not declared as JSON (or the audio is of no known format)",
        422 => {
            "A value of the right type that is not valid (`errors` names the field), or an Idempotency-Key \
                reused with another method, path or body"
        }
        502 => "The speech-to-text backend failed; retry",
        503 => "The database is unavailable: retry after Retry-After",
        _ => "See `code`",
    }
}

/// The responses of an operation, by status, as the OpenAPI document lists them.
pub type ResponseDocs = std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>>;

/// A problem document response, as the OpenAPI document describes it.
fn problem_doc(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::response::Response> {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
    ResponseBuilder::new().description(description).content(PROBLEM_JSON, content).build().into()
}

fn problem_responses(statuses: &[u16]) -> ResponseDocs {
    statuses.iter().map(|status| (status.to_string(), problem_doc(problem_description(*status)))).collect()
}

/// Declares the sets of problem responses the OpenAPI annotations list after an operation's
/// own successes (`responses((status = 200, body = Chat), JsonWrite)`): each set is what one
/// kind of operation can answer.
macro_rules! problem_sets {
    ($($(#[$doc:meta])* $set:ident: [$($status:literal),+];)+) => {
        $(
            $(#[$doc])*
            pub struct $set;

            impl utoipa::IntoResponses for $set {
                fn responses() -> ResponseDocs {
                    problem_responses(&[$($status),+])
                }
            }
        )+
    };
}

problem_sets! {
    /// A JSON write under `/api` that names no existing resource in its path.
    JsonWrite: [400, 401, 403, 409, 413, 415, 422, 503];
    /// A JSON write to the resource its path names.
    JsonWriteTo: [400, 401, 403, 404, 409, 413, 415, 422, 503];
    /// A write to the resource its path names that takes no body.
    WriteTo: [400, 401, 403, 404, 409, 413, 422, 503];
    /// upload-audio: a multipart body, and speech-to-text when configured.
    UploadWrite: [400, 401, 403, 409, 413, 415, 422, 502, 503];
    /// A read of the resource its path names.
    Lookup: [401, 403, 404, 503];
    /// A read of a list: its query can be malformed (400) or invalid (422).
    Listing: [400, 401, 403, 422, 503];
    /// A read of a list that belongs to the resource its path names.
    ListingOf: [400, 401, 403, 404, 422, 503];
    /// A public read (no bearer token) of the resource its path names.
    PublicLookup: [403, 404, 503];
    /// A readiness probe that found the database unavailable.
    Unready: [503];
}

/// save-analysis: a JSON write that can also be conditional (`If-Match`), so its 409 can also
/// be a version mismatch.
pub struct ConditionalWrite;

impl utoipa::IntoResponses for ConditionalWrite {
    fn responses() -> ResponseDocs {
        let mut responses = JsonWrite::responses();
        let conflict = problem_doc(
            "`version_mismatch`: If-Match names another version, or no conversation exists; otherwise as for any \
             write, the Idempotency-Key is held or a concurrent write got in the way",
        );
        responses.insert("409".into(), conflict);
        responses
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(error) => ApiError::DatabaseUnavailable(error.to_string()),
            StoreError::Conflict(_) => ApiError::Conflict,
            StoreError::Refused { field } => {
                ApiError::invalid(field, "rejected by the database: out of range or unknown reference")
            }
            StoreError::Taken { field, by } => ApiError::invalid(field, format!("is already used by another {by}")),
            StoreError::VersionMismatch(why) => ApiError::VersionMismatch(why),
            StoreError::Other(error) => ApiError::Internal(error),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::from(error).into()
    }
}

/// Stable code for a status that actix (routing, extractors, limits) answered by itself.
fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "malformed_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "validation_failed",
        503 => "database_unavailable",
        _ => "internal",
    }
}

/// Rewrites every error response that is not already a problem document (404 for unknown
/// routes, 405, extractor rejections) into one, so clients see a single error shape.
pub fn problem_fallback<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let already_problem =
        res.headers().get(header::CONTENT_TYPE).is_some_and(|value| value.as_bytes() == PROBLEM_JSON.as_bytes());
    if already_problem {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let detail = match status.as_u16() {
        404 => "no such route or resource".to_string(),
        405 => "this route does not accept that method".to_string(),
        s if s >= 500 => "internal error; see the server log".to_string(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let (req, _) = res.into_parts();
    let response = problem_response(status, code_for_status(status), detail, None);
    let res = ServiceResponse::new(req, response.map_into_boxed_body()).map_into_right_body();
    Ok(ErrorHandlerResponse::Response(res))
}
