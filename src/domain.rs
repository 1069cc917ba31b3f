//! Values parsed at the edge: once a handler holds one of these, it is valid.

mod idempotency_key;
mod money;
mod participants;
mod session_id;
mod text;
mod token;

pub use idempotency_key::IdempotencyKey;
pub use money::Money;
pub use participants::{ParticipantId, ParticipantsKey};
pub use session_id::SessionId;
pub use text::{check_json_storable, optional_header, optional_text, or_null, text_schema, Patch, NO_NUL};
pub use token::BrowserSourceToken;

/// The patterns the OpenAPI document states are the parsers' rules: on strings drawn from the
/// characters around each rule's edges, a pattern (with its lengths) matches exactly what the
/// parser accepts, so the document cannot drift from the validation.
#[cfg(test)]
mod schemas_state_the_parsers {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn matches(pattern: &str, max_len: usize, raw: &str) -> bool {
        regex::Regex::new(pattern).unwrap().is_match(raw) && (1..=max_len).contains(&raw.chars().count())
    }

    proptest! {
        #[test]
        fn session_ids(raw in "[A-Za-z09._:@,/ \\-\u{0}é]{0,130}") {
            let accepted = SessionId::parse("f", &raw).is_ok();
            prop_assert_eq!(accepted, matches(SessionId::PATTERN, SessionId::MAX_LEN, &raw));
        }

        #[test]
        fn participant_ids(raw in "[A-Za-z09._:@,/ \\-\u{0}é]{0,130}") {
            let accepted = ParticipantId::parse("f", &raw).is_ok();
            prop_assert_eq!(accepted, matches(ParticipantId::PATTERN, ParticipantId::MAX_LEN, &raw));
        }

        /// Money strings without exponent or surrounding spaces, which the parser also reads
        /// (README, "The OpenAPI document").
        #[test]
        fn money_strings(raw in prop_oneof!["-?0{0,2}[0-9]{0,16}\\.?[0-9]{0,9}", "[0-9.\\-]{0,22}"]) {
            let parsed = Money::parse("f", &Value::String(raw.clone())).ok();
            let stated = regex::Regex::new(Money::PATTERN).unwrap().is_match(&raw);
            prop_assert_eq!(parsed.is_some_and(|m| !m.is_negative()), stated, "{}", raw);
            let positive = regex::Regex::new(Money::POSITIVE_PATTERN).unwrap().is_match(&raw);
            prop_assert_eq!(parsed.is_some_and(|m| m.is_positive()), positive, "{}", raw);
        }

        #[test]
        fn free_text(raw in "[a\\u{0}\\u{1}]{0,5}") {
            let stated = regex::Regex::new(NO_NUL).unwrap().is_match(&raw);
            prop_assert_eq!(optional_text("f", Some(&raw), 5).is_ok(), stated);
        }
    }
}
