use crate::error::FieldError;
use std::fmt;

/// A conversation's natural key: 1-128 characters of `[A-Za-z0-9._:-]`.
///
/// Never null and never empty: the Mongo deployments this replaces stored `sessionId: null`
/// on some paths and then every further null collided on the unique index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    pub const MAX_LEN: usize = 128;
    /// What [`SessionId::parse`] accepts (with the length), as the OpenAPI document states it.
    pub const PATTERN: &'static str = "^[A-Za-z0-9._:-]+$";

    /// The schema of every session id in the document.
    pub fn schema() -> utoipa::openapi::schema::Object {
        super::text::pattern_schema(
            Self::PATTERN,
            1,
            Self::MAX_LEN,
            "1-128 characters of A-Z a-z 0-9 . _ : -",
            "sess-42",
        )
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if raw.is_empty() {
            return Err(FieldError::new(field, "must not be empty"));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(FieldError::new(field, "must be at most 128 characters"));
        }
        if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')) {
            return Err(FieldError::new(field, "may only contain A-Z a-z 0-9 . _ : -"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// A fresh id for requests that may omit one (create, upload); never for save-analysis.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["a", "752b7035-446f-4d92-b4f4-23b3b2ae1066", "user:1.session_2", &"x".repeat(128)] {
            assert!(SessionId::parse("session_id", ok).is_ok(), "{ok} should parse");
        }
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        for bad in ["", " ", "a b", "a/b", "é", "a\0b", &"x".repeat(129)] {
            assert!(SessionId::parse("session_id", bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn generated_ids_are_valid() {
        let id = SessionId::generate();
        assert!(SessionId::parse("session_id", id.as_str()).is_ok());
    }
}
