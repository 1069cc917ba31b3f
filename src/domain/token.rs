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

    /// A token as this server makes them; anything else names no overlay.
    pub fn parse(raw: &str) -> Option<Self> {
        let hex = raw.len() == 64 && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        hex.then(|| Self(raw.to_owned()))
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
        assert_eq!(a.as_str().len(), 64);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, b);
    }
}
