//! Logging (`RUST_LOG`, default `info`), request ids, one access-log line and the HTTP
//! metrics per request.

use crate::recorder::{LATENCY, REQUESTS};
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use std::borrow::Cow;
use std::time::Instant;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

pub const REQUEST_ID: &str = "x-request-id";

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// The pattern of a route, given to it where it is registered (`startup`), for the route label
/// of logs and metrics: asking the router afterwards (`match_pattern`) walks every resource and
/// matches each pattern again, which cost 6.5% of the server's CPU on a hot counter.
#[derive(Debug, Clone, Copy)]
pub struct Route(pub &'static str);

/// The id of a request: the caller's `X-Request-Id` when it is a sane token, else a new UUID.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// The method as a label: a closed set, so a client cannot add series (or lines to
/// `/metrics`) by inventing methods; any other method is `OTHER`. The route label is closed
/// already: a registered pattern, or `unmatched`.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [&str; 9] = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT"];
    KNOWN.into_iter().find(|known| *known == method.as_str()).unwrap_or("OTHER")
}

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let id = request_id(&req);
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = method_label(req.method());
    let span = tracing::info_span!("request", request_id = %id, %method, route = tracing::field::Empty);
    let mut response = next.call(req).instrument(span.clone()).await?;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    // Routes of the table carry their pattern; the rest (the docs pages, 404s) ask the router.
    let routed = response.request().app_data::<Route>().map(|route| Cow::Borrowed(route.0));
    let route = routed.or_else(|| response.request().match_pattern().map(Cow::Owned)).unwrap_or("unmatched".into());
    span.record("route", &*route);
    span.in_scope(|| tracing::info!(status, elapsed_ms = elapsed.as_secs_f64() * 1000.0, "served"));
    metrics::counter!(REQUESTS, "route" => route.clone(), "method" => method, "status" => status.to_string())
        .increment(1);
    metrics::histogram!(LATENCY, "route" => route, "method" => method).record(elapsed.as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HeaderName::from_static(REQUEST_ID), value);
    }
    Ok(response)
}
