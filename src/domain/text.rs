use crate::error::FieldError;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A field of a partial update: absent keeps the stored value, present (even `null`) sets it.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Patch<T> {
    #[default]
    Keep,
    Set(Option<T>),
}

impl<T> Patch<T> {
    pub fn is_set(&self) -> bool {
        matches!(self, Patch::Set(_))
    }

    /// The value to write: `None` both for "keep" and for "set to null"; `is_set` tells them apart.
    pub fn value(&self) -> Option<&T> {
        match self {
            Patch::Set(Some(v)) => Some(v),
            _ => None,
        }
    }

    /// For inputs that cannot send an explicit null (multipart parts): a value sets, its
    /// absence keeps.
    pub fn given(value: Option<T>) -> Self {
        value.map_or(Patch::Keep, |v| Patch::Set(Some(v)))
    }
}

/// `#[serde(default, deserialize_with = "domain::Patch::present")]` turns a present field into
/// `Patch::Set` (with `None` for an explicit null); `default` leaves absent ones as `Keep`.
impl<'de, T: Deserialize<'de>> Patch<T> {
    pub fn present<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Option::<T>::deserialize(deserializer).map(Patch::Set)
    }
}

/// Free text with a length limit. PostgreSQL cannot store NUL in `text`, so it is refused here
/// with a 422 rather than failing in the database.
pub fn optional_text(field: &str, value: Option<&str>, max_chars: usize) -> Result<(), FieldError> {
    let Some(value) = value else { return Ok(()) };
    if value.contains('\0') {
        return Err(FieldError::new(field, "must not contain NUL characters"));
    }
    if value.chars().count() > max_chars {
        return Err(FieldError::new(field, format!("must be at most {max_chars} characters")));
    }
    Ok(())
}

/// `jsonb` rejects `\u0000` anywhere, keys included; find it before the database does.
pub fn check_json_for_nul(field: &str, value: &Value) -> Result<(), FieldError> {
    let bad = |path: String| Err(FieldError::new(path, "must not contain NUL characters"));
    match value {
        Value::String(s) if s.contains('\0') => bad(field.to_owned()),
        Value::Array(items) => {
            items.iter().enumerate().try_for_each(|(i, item)| check_json_for_nul(&format!("{field}[{i}]"), item))
        }
        Value::Object(map) => map.iter().try_for_each(|(key, item)| {
            if key.contains('\0') {
                return bad(field.to_owned());
            }
            check_json_for_nul(&format!("{field}.{key}"), item)
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "Patch::present")]
        note: Patch<String>,
    }

    #[test]
    fn absent_null_and_value_are_three_different_patches() {
        let absent: Body = serde_json::from_value(json!({})).unwrap();
        let null: Body = serde_json::from_value(json!({"note": null})).unwrap();
        let set: Body = serde_json::from_value(json!({"note": "x"})).unwrap();
        assert_eq!(absent.note, Patch::Keep);
        assert_eq!(null.note, Patch::Set(None));
        assert_eq!(set.note, Patch::Set(Some("x".into())));
    }

    #[test]
    fn nul_is_found_deep_inside_json() {
        let err = check_json_for_nul("analysis", &json!({"a": [1, {"b": "x\u{0}"}]})).unwrap_err();
        assert_eq!(err.field, "analysis.a[1].b");
        assert!(check_json_for_nul("analysis", &json!({"a": "fine"})).is_ok());
    }
}
