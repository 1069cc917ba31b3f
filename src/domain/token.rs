use crate::error::FieldError;
use rand::RngCore;

/// The secret a stream overlay (an OBS browser source) is addressed by: 32 bytes from the
/// operating system's CSPRNG, as 64 lowercase hex characters. Written once, on insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserSourceToken(String);

impl BrowserSourceToken {
    pub fn generate() -> Self {
        let mut bytes = [0_u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(hex::encode(bytes))
    }

    /// What [`BrowserSourceToken::parse`] accepts, as the OpenAPI document states it.
    pub const PATTERN: &'static str = "^[0-9a-f]{64}$";

    /// The schema of a token in the document.
    pub fn schema() -> utoipa::openapi::schema::Object {
        let example = "5f2b0c8e9a7d4e1f3b6a8c0d2e4f6a8b1c3d5e7f9a0b2c4d6e8f0a1b3c5d7e9f";
        super::text::pattern_schema(Self::PATTERN, 64, 64, "64 lowercase hex characters", example)
    }

    /// A token from outside (a path, a legacy document): the shape this server makes, or it is no
    /// token.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if raw.len() != 64 || !raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(FieldError::new(field, "must be 64 lowercase hex characters"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_64_lowercase_hex_and_differ() {
        let (a, b) = (BrowserSourceToken::generate(), BrowserSourceToken::generate());
        assert_eq!(BrowserSourceToken::parse("token", a.as_str()), Ok(a.clone()));
        assert_ne!(a, b);
    }

    #[test]
    fn anything_but_64_lowercase_hex_is_no_token() {
        for bad in ["", &"a".repeat(63), &"a".repeat(65), &"A".repeat(64), &"g".repeat(64)] {
            assert!(BrowserSourceToken::parse("token", bad).is_err(), "{bad:?}");
        }
    }
}
