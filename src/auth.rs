//! Bearer tokens (`API_TOKENS`) for everything under /api except the stream overlay.
//!
//! [`require_token`] wraps the `/api` scope where the routes are registered
//! (`startup::routes`); the overlay is registered outside it. Which requests need a token is
//! therefore the router's decision, made on the path as it routes it, never a test of the URL.

use crate::error::ApiError;
use crate::idempotency::Scope;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, ResponseError};
use sha2::{Digest, Sha256};

/// The accepted tokens, kept as SHA-256 digests: every comparison then has the same length
/// and runs in constant time, whatever the guess.
#[derive(Debug, Clone, Default)]
pub struct ApiTokens(Vec<[u8; 32]>);

impl ApiTokens {
    /// From the comma-separated `API_TOKENS`; blanks are ignored.
    pub fn parse(raw: Option<&str>) -> Self {
        Self(raw.unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty()).map(digest).collect())
    }

    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// The caller's scope for idempotency keys: a prefix of its token's digest.
    fn accept(&self, token: &str) -> Option<String> {
        let offered = digest(token);
        let mut matched = None;
        for known in &self.0 {
            // Visit every token and every byte: no early exit to time.
            let same = known.iter().zip(offered.iter()).fold(0_u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if same {
                matched = Some(hex::encode(&known[..8]));
            }
        }
        matched
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of `Authorization: Bearer <token>`. The scheme is case-insensitive (RFC 9110
/// §11.1) and followed by one or more spaces; the token is taken exactly as sent.
fn bearer_token(credentials: &str) -> Option<&str> {
    let (scheme, token) = credentials.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start_matches(' ')).filter(|token| !token.is_empty())
}

pub async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let tokens = req.app_data::<web::Data<ApiTokens>>().cloned();
    let Some(tokens) = tokens.filter(|t| t.enabled()) else {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };
    let offered = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    match offered.and_then(|token| tokens.accept(token)) {
        Some(scope) => {
            req.extensions_mut().insert(Scope(scope));
            next.call(req).await.map(ServiceResponse::map_into_boxed_body)
        }
        None => {
            let mut response = ApiError::Unauthorized.error_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Ok(req.into_response(response))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_matched_exactly_and_scoped_apart() {
        let tokens = ApiTokens::parse(Some(" alpha , beta,,"));
        assert!(tokens.enabled());
        assert!(tokens.accept("alpha").is_some());
        assert!(tokens.accept("alph").is_none());
        assert_ne!(tokens.accept("alpha"), tokens.accept("beta"));
        assert!(!ApiTokens::parse(Some(" , ")).enabled());
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_the_token_exact() {
        for credentials in ["Bearer alpha", "bearer alpha", "BEARER  alpha", "bEaReR alpha"] {
            assert_eq!(bearer_token(credentials), Some("alpha"), "{credentials}");
        }
        assert_eq!(bearer_token("Bearer alpha "), Some("alpha "), "the token is not trimmed");
        for refused in ["Bearer", "Bearer ", "Basic alpha", "Beareralpha", "Token alpha"] {
            assert_eq!(bearer_token(refused), None, "{refused}");
        }
    }
}
