use crate::error::FieldError;

/// A user, campaign or streamer id: 1-128 characters of `[A-Za-z0-9._@:-]`. No id may hold
/// `,`, which is what lets [`ParticipantsKey`] join ids without ambiguity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParticipantId(String);

impl ParticipantId {
    pub const MAX_LEN: usize = 128;
    /// What [`ParticipantId::parse`] accepts (with the length), as the OpenAPI document states it.
    pub const PATTERN: &'static str = "^[A-Za-z0-9._@:-]+$";

    /// The schema of every user, campaign and streamer id in the document.
    pub fn schema() -> utoipa::openapi::schema::Object {
        super::text::pattern_schema(
            Self::PATTERN,
            1,
            Self::MAX_LEN,
            "1-128 characters of A-Z a-z 0-9 . _ @ : -",
            "alice",
        )
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(FieldError::new(field, "must be 1 to 128 characters"));
        }
        if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b':' | b'-')) {
            return Err(FieldError::new(field, "may only contain A-Z a-z 0-9 . _ @ : -"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A chat's natural key: its distinct participant ids in byte order, joined by `,`.
///
/// Injective by construction: ids cannot contain `,`, so the key splits back into exactly the
/// group it came from. (The legacy `userA_userB` key was not: `a_b` + `c` and `a` + `b_c` met.)
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParticipantsKey {
    ids: Vec<ParticipantId>,
    key: String,
}

impl ParticipantsKey {
    pub const MIN: usize = 2;
    pub const MAX: usize = 32;

    /// The schema of a chat's `participants`. JSON Schema cannot count distinct items once
    /// repeats are removed, so the description says it and the bounds are on the list as sent
    /// (the Schemathesis configuration exempts that one rule: README, "The OpenAPI document").
    pub fn schema() -> utoipa::openapi::schema::Array {
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(ParticipantId::schema())
            .min_items(Some(Self::MIN))
            .max_items(Some(Self::MAX))
            .description(Some(
                "2-32 distinct participant ids once repeats are removed; order and repeats do not matter",
            ))
            .build()
    }

    /// Order and repeats do not matter; 2-32 distinct ids must remain.
    pub fn from_ids(mut ids: Vec<ParticipantId>) -> Result<Self, FieldError> {
        ids.sort_unstable();
        ids.dedup();
        if !(Self::MIN..=Self::MAX).contains(&ids.len()) {
            return Err(FieldError::new("participants", "must name 2 to 32 distinct participants"));
        }
        let key = ids.iter().map(ParticipantId::as_str).collect::<Vec<_>>().join(",");
        Ok(Self { ids, key })
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }

    pub fn participants(&self) -> Vec<String> {
        self.ids.iter().map(|id| id.as_str().to_owned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(ids: &[&str]) -> Result<ParticipantsKey, FieldError> {
        ParticipantsKey::from_ids(ids.iter().map(|id| ParticipantId::parse("participants", id).unwrap()).collect())
    }

    #[test]
    fn the_legacy_underscore_collision_cannot_happen() {
        assert_ne!(key(&["a_b", "c"]).unwrap(), key(&["a", "b_c"]).unwrap());
    }

    #[test]
    fn repeats_are_removed_and_too_few_or_many_rejected() {
        assert_eq!(key(&["b", "a", "b"]).unwrap().as_str(), "a,b");
        assert!(key(&["a", "a"]).is_err());
        let many: Vec<String> = (0..33).map(|i| format!("u{i}")).collect();
        assert!(key(&many.iter().map(String::as_str).collect::<Vec<_>>()).is_err());
    }

    #[test]
    fn commas_and_other_characters_are_not_ids() {
        for bad in ["a,b", "", "a b", "ü", &"x".repeat(129)] {
            assert!(ParticipantId::parse("participants", bad).is_err(), "{bad:?}");
        }
    }

    fn group() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec("[A-Za-z0-9._@:-]{1,6}", 2..10)
    }

    fn key_of(ids: &[String]) -> Option<ParticipantsKey> {
        ParticipantsKey::from_ids(ids.iter().map(|id| ParticipantId::parse("p", id).unwrap()).collect()).ok()
    }

    proptest! {
        #[test]
        fn the_key_ignores_order(ids in group(), seed in any::<u64>()) {
            let mut shuffled = ids.clone();
            let n = shuffled.len();
            for i in 0..n {
                shuffled.swap(i, (seed as usize).wrapping_add(i * 7) % n);
            }
            prop_assert_eq!(key_of(&ids), key_of(&shuffled));
        }

        #[test]
        fn different_groups_never_share_a_key(a in group(), b in group()) {
            let set = |ids: &[String]| ids.iter().cloned().collect::<std::collections::BTreeSet<_>>();
            if let (Some(ka), Some(kb)) = (key_of(&a), key_of(&b)) {
                prop_assert_eq!(ka == kb, set(&a) == set(&b));
            }
        }
    }
}
