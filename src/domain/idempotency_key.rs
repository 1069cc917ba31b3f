/// An `Idempotency-Key` header value: 1-255 visible ASCII characters (0x21-0x7E).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    /// The error text completes "Idempotency-Key ...".
    pub fn parse(raw: &[u8]) -> Result<Self, &'static str> {
        if raw.is_empty() {
            return Err("must not be empty");
        }
        if raw.len() > Self::MAX_LEN {
            return Err("must be at most 255 characters");
        }
        if !raw.iter().all(|b| (0x21..=0x7E).contains(b)) {
            return Err("may only hold visible ASCII characters (no spaces)");
        }
        Ok(Self(String::from_utf8(raw.to_vec()).expect("visible ASCII is UTF-8")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_ascii_up_to_255_characters() {
        assert!(IdempotencyKey::parse(b"order-42_retry:1").is_ok());
        assert!(IdempotencyKey::parse("k".repeat(255).as_bytes()).is_ok());
        for bad in [&b""[..], b"has space", "é".as_bytes(), &[b'k'; 256], b"tab\t"] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }
}
