//! What keeps web pages out of a server without `API_TOKENS`.
//!
//! Such a server listens on loopback and trusts whoever reaches it, but a browser on the same
//! machine reaches it for any page it opens. Two ways in are closed here: a page of another
//! site that POSTs to `127.0.0.1` (a cross-site write, which browsers send without asking when
//! the body is a bare blob or a form: [`crate::extract::JsonConfig`] refuses the bare blob),
//! and DNS rebinding, where the attacker's own host name resolves to 127.0.0.1 so that the page
//! can also read the answers. Every request must name this server in `Host`, and a write that
//! carries an `Origin` must come from this server or from `CORS_ORIGINS`. With API tokens none
//! of this is needed: a browser never attaches a bearer token by itself.

use crate::error::ApiError;
use crate::settings::Origins;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use std::net::SocketAddr;

/// The names and origins this server answers to.
#[derive(Debug, Clone)]
pub struct LocalOnly {
    hosts: Vec<String>,
    origins: Vec<String>,
}

impl LocalOnly {
    /// Loopback names, the bind address, `PUBLIC_BASE_URL`'s host; origins: `PUBLIC_BASE_URL`'s
    /// and `CORS_ORIGINS`.
    pub fn new(bind: SocketAddr, public_base_url: Option<&str>, cors_origins: &Origins) -> Self {
        let bound = match bind {
            SocketAddr::V4(v4) => v4.ip().to_string(),
            SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        };
        let public = public_base_url.and_then(|raw| url::Url::parse(raw).ok());
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"].map(String::from).into();
        hosts.push(bound);
        hosts.extend(public.as_ref().and_then(|url| url.host_str()).map(str::to_ascii_lowercase));
        let mut origins = cors_origins.0.clone();
        origins.extend(public.map(|url| url.origin().ascii_serialization()));
        Self { hosts, origins }
    }

    fn check(&self, req: &ServiceRequest) -> Result<(), ApiError> {
        let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok());
        if let Some(host) = host {
            let name = host_name(host).to_ascii_lowercase();
            if !self.hosts.contains(&name) {
                return Err(ApiError::Forbidden(format!(
                    "this server answers to {}, not to Host {name:?}: without API_TOKENS it serves this machine only",
                    self.hosts.join(", ")
                )));
            }
        }
        let reads = [Method::GET, Method::HEAD, Method::OPTIONS];
        let origin = req.headers().get(header::ORIGIN).map(|v| v.to_str().unwrap_or("null"));
        match origin {
            Some(origin) if !reads.contains(req.method()) => {
                let own = host.is_some_and(|host| origin == format!("http://{host}"));
                if own || self.origins.iter().any(|allowed| allowed == origin) {
                    Ok(())
                } else {
                    Err(ApiError::Forbidden(format!(
                        "writes from the web origin {origin:?} are refused: list it in CORS_ORIGINS, or set API_TOKENS"
                    )))
                }
            }
            _ => Ok(()),
        }
    }
}

/// The host of a `Host` header, without its port: `[::1]:8080` is `[::1]`.
fn host_name(host: &str) -> &str {
    match host.strip_prefix('[') {
        Some(_) => host.find(']').map_or(host, |end| &host[..=end]),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    }
}

/// Refuses requests for other host names and foreign writes, when [`LocalOnly`] is registered
/// (that is, when there are no API tokens).
pub async fn refuse_foreign(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let refused = req.app_data::<web::Data<LocalOnly>>().and_then(|local| local.check(&req).err());
    match refused {
        Some(error) => Ok(req.into_response(error.error_response())),
        None => next.call(req).await.map(ServiceResponse::map_into_boxed_body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("localhost"), "localhost");
    }
}
