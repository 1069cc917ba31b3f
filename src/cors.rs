//! CORS for the web pages of the origins `CORS_ORIGINS` lists; with none listed (the default)
//! no CORS header is ever sent.
//!
//! The rules are actix-cors's (the Fetch standard's); this file only says what is allowed and
//! exposed. `startup` wraps the whole app in [`layer`], outside bearer auth, the local-only
//! checks and the rewriting of errors into problem documents, so that:
//! - a preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered here: it needs no
//!   token (browsers never send credentials on one) and reaches no route, so no handler runs and
//!   no idempotency record is read or written;
//! - every answer to a listed origin, problem documents included, carries
//!   `Access-Control-Allow-Origin` and the exposed headers, so a page can read its errors too.
//!
//! An unlisted origin's requests go on as if CORS did not exist (same-origin pages, such as the
//! docs page, send `Origin` too), and their answers carry no CORS header, so a browser keeps them
//! from the page; without `API_TOKENS`, `local_only` still refuses their writes.

use crate::idempotency::{HEADER as IDEMPOTENCY_KEY, REPLAYED};
use crate::reply::UPSERT_OUTCOME;
use crate::settings::Origins;
use crate::telemetry::REQUEST_ID;
use actix_cors::Cors;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::{Condition, Next};

/// How long a browser may reuse a preflight's answer: a page's calls to one route cost one
/// preflight per ten minutes, and a preflight cached before its origin was taken off the list
/// is used for ten minutes at most (the answers lose `Access-Control-Allow-Origin` at once).
const MAX_AGE_SECONDS: usize = 600;

/// The request headers a page may set beyond the CORS-safelisted ones: everything the contract
/// reads.
const ALLOWED_HEADERS: [&str; 5] = ["content-type", "authorization", IDEMPOTENCY_KEY, "if-match", REQUEST_ID];

/// The response headers a page may read beyond the safelisted ones: what the contract tells
/// clients to rely on.
const EXPOSED_HEADERS: [&str; 6] = [UPSERT_OUTCOME, REPLAYED, "etag", "location", "retry-after", REQUEST_ID];

/// The CORS middleware for `origins`; with none it is not there at all.
pub fn layer(origins: &Origins) -> Condition<Cors> {
    let cors = origins
        .0
        .iter()
        .fold(Cors::default(), |cors, origin| cors.allowed_origin(origin))
        // The API's methods; any other is refused at the preflight.
        .allowed_methods([Method::GET, Method::POST])
        .allowed_headers(ALLOWED_HEADERS)
        .expose_headers(EXPOSED_HEADERS)
        .max_age(MAX_AGE_SECONDS)
        // Another origin's request is served without CORS headers instead of refused: the
        // browser decides what its page may see, and same-origin pages send `Origin` as well.
        .block_on_origin_mismatch(false);
    Condition::new(!origins.0.is_empty(), cors)
}

/// Drops the exposed-headers list from answers that grant no origin: actix-cors adds it to
/// every answer, and an unlisted origin (or a caller that is no web page) gets no CORS header.
/// Wraps [`layer`].
pub async fn only_when_granted(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut response = next.call(req).await?;
    if !response.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        response.headers_mut().remove(header::ACCESS_CONTROL_EXPOSE_HEADERS);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ApiError, ApiResult};
    use actix_web::dev::ServiceResponse;
    use actix_web::middleware::from_fn;
    use actix_web::test::{call_service, init_service, TestRequest};
    use actix_web::{web, App, HttpRequest, HttpResponse};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const PAGE: &str = "https://app.example.com";

    /// The handler of the one route: 201 or, for `?fail`, a problem document with
    /// `Retry-After`; `calls` counts its runs.
    fn handler(calls: &Arc<AtomicUsize>) -> impl actix_web::Handler<(HttpRequest,), Output = ApiResult<HttpResponse>> {
        let calls = calls.clone();
        move |req: HttpRequest| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if req.query_string() == "fail" {
                    return Err(ApiError::IdempotencyKeyInFlight { retry_after_secs: 1 });
                }
                Ok(HttpResponse::Created().insert_header((UPSERT_OUTCOME, "inserted")).finish())
            }
        }
    }

    /// A service with the CORS layers stacked as `startup` stacks them, around that route.
    macro_rules! app {
        ($origins:expr, $calls:expr) => {
            init_service(
                App::new()
                    .wrap(layer(&$origins.parse().unwrap()))
                    .wrap(from_fn(only_when_granted))
                    .route("/api/save-analysis", web::post().to(handler($calls))),
            )
            .await
        };
    }

    fn preflight(origin: &str, headers: &str) -> TestRequest {
        TestRequest::default()
            .method(Method::OPTIONS)
            .uri("/api/save-analysis")
            .insert_header((header::ORIGIN, origin))
            .insert_header((header::ACCESS_CONTROL_REQUEST_METHOD, "POST"))
            .insert_header((header::ACCESS_CONTROL_REQUEST_HEADERS, headers))
    }

    fn value<B>(response: &ServiceResponse<B>, name: header::HeaderName) -> Option<String> {
        response.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
    }

    fn cors_headers<B>(response: &ServiceResponse<B>) -> Vec<String> {
        let names = response.headers().keys().map(|name| name.as_str().to_owned());
        names.filter(|name| name.starts_with("access-control-")).collect()
    }

    /// A comma-separated header value as a sorted list of lowercase names.
    fn names(list: Option<String>) -> Vec<String> {
        let mut names: Vec<String> =
            list.unwrap_or_default().split(',').map(|n| n.trim().to_ascii_lowercase()).collect();
        names.sort();
        names
    }

    #[actix_web::test]
    async fn a_listed_origins_preflight_is_answered_without_reaching_the_route() {
        let calls = Arc::new(AtomicUsize::new(0));
        let app = app!(format!("http://localhost:5173, {PAGE}"), &calls);
        let asked = "content-type, authorization, idempotency-key, if-match, x-request-id";
        let response = call_service(&app, preflight(PAGE, asked).to_request()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(value(&response, header::ACCESS_CONTROL_ALLOW_ORIGIN).as_deref(), Some(PAGE));
        assert_eq!(names(value(&response, header::ACCESS_CONTROL_ALLOW_METHODS)), ["get", "post"]);
        let allowed = names(value(&response, header::ACCESS_CONTROL_ALLOW_HEADERS));
        assert_eq!(allowed, ["authorization", "content-type", "idempotency-key", "if-match", "x-request-id"]);
        assert_eq!(value(&response, header::ACCESS_CONTROL_MAX_AGE), Some(MAX_AGE_SECONDS.to_string()));
        assert!(names(value(&response, header::VARY)).contains(&"origin".to_owned()), "Vary: Origin");
        assert_eq!(calls.load(Ordering::SeqCst), 0, "a preflight never reaches the handler");
    }

    #[actix_web::test]
    async fn preflights_of_unlisted_origins_or_headers_are_refused_without_cors_headers() {
        let calls = Arc::new(AtomicUsize::new(0));
        let app = app!(PAGE, &calls);
        for request in [
            preflight("https://evil.example", "content-type"),
            preflight("https://app.example.com.evil.example", "content-type"),
            preflight("http://app.example.com", "content-type"),
            preflight(PAGE, "content-type, x-api-key"),
            preflight(PAGE, "content-type").insert_header((header::ACCESS_CONTROL_REQUEST_METHOD, "DELETE")),
        ] {
            let request = request.to_request();
            let asked = format!("{:?}", request.head().headers);
            let response = call_service(&app, request).await;
            assert_eq!(response.status(), 400, "{asked}");
            assert_eq!(cors_headers(&response), Vec::<String>::new(), "{asked}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[actix_web::test]
    async fn answers_to_a_listed_origin_expose_the_contracts_headers_errors_included() {
        let app = app!(PAGE, &Arc::new(AtomicUsize::new(0)));
        for (uri, status) in [("/api/save-analysis", 201), ("/api/save-analysis?fail", 409)] {
            let request = TestRequest::post().uri(uri).insert_header((header::ORIGIN, PAGE)).to_request();
            let response = call_service(&app, request).await;
            assert_eq!(response.status(), status);
            assert_eq!(value(&response, header::ACCESS_CONTROL_ALLOW_ORIGIN).as_deref(), Some(PAGE), "{uri}");
            let exposed = names(value(&response, header::ACCESS_CONTROL_EXPOSE_HEADERS));
            let expected = ["etag", "idempotent-replayed", "location", "retry-after", "upsert-outcome", "x-request-id"];
            assert_eq!(exposed, expected, "{uri}");
            assert!(names(value(&response, header::VARY)).contains(&"origin".to_owned()), "Vary: Origin, {uri}");
            assert_eq!(value(&response, header::ACCESS_CONTROL_ALLOW_CREDENTIALS), None, "no cookies: {uri}");
        }
    }

    #[actix_web::test]
    async fn others_are_served_as_without_cors_and_get_no_cors_header() {
        let calls = Arc::new(AtomicUsize::new(0));
        let listed = app!(PAGE, &calls);
        for origin in [Some("https://evil.example"), None] {
            let mut request = TestRequest::post().uri("/api/save-analysis");
            if let Some(origin) = origin {
                request = request.insert_header((header::ORIGIN, origin));
            }
            let response = call_service(&listed, request.to_request()).await;
            assert_eq!(response.status(), 201, "{origin:?}");
            assert_eq!(cors_headers(&response), Vec::<String>::new(), "{origin:?}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // Off (nothing listed): a preflight is an ordinary OPTIONS request, for the router.
        let off = app!("", &calls);
        let response = call_service(&off, preflight(PAGE, "content-type").to_request()).await;
        assert_eq!(response.status(), 404, "the test app has no OPTIONS route");
        assert_eq!(cors_headers(&response), Vec::<String>::new());
        let request = TestRequest::post().uri("/api/save-analysis").insert_header((header::ORIGIN, PAGE));
        let response = call_service(&off, request.to_request()).await;
        assert_eq!((response.status().as_u16(), cors_headers(&response)), (201, Vec::new()));
        assert_eq!(value(&response, header::VARY), None);
    }
}
