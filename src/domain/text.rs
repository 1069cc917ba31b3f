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

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Patch<U> {
        match self {
            Patch::Keep => Patch::Keep,
            Patch::Set(value) => Patch::Set(value.map(f)),
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

/// The OpenAPI schema of a string that `pattern` (anchored, ASCII) and the lengths describe
/// exactly: how a domain type tells the document what its `parse` accepts.
pub(super) fn pattern_schema(
    pattern: &str,
    min_len: usize,
    max_len: usize,
    description: &str,
    example: &str,
) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .min_length(Some(min_len))
        .max_length(Some(max_len))
        .description(Some(description))
        .examples([example])
        .build()
}

/// The schema of free text that [`optional_text`] accepts: no NUL, at most `max_chars`.
/// `nullable`: a field of a patch, where `null` clears what is stored.
pub fn text_schema(max_chars: Option<usize>, nullable: bool) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let types = match nullable {
        true => SchemaType::from_iter([Type::String, Type::Null]),
        false => SchemaType::Type(Type::String),
    };
    ObjectBuilder::new().schema_type(types).pattern(Some(NO_NUL)).max_length(max_chars).build()
}

/// `schema` (a string's), taking `null` too: an optional field where `null` means absent.
pub fn or_null(mut schema: utoipa::openapi::schema::Object) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{SchemaType, Type};
    schema.schema_type = SchemaType::from_iter([Type::String, Type::Null]);
    schema
}

/// An optional request header as the OpenAPI document lists it: `schema` is a string's, stating
/// what the header's parser accepts (`If-Match`, `Idempotency-Key`).
pub fn optional_header(
    name: &str,
    description: &str,
    schema: utoipa::openapi::schema::Object,
) -> Vec<utoipa::openapi::path::Parameter> {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    let header = ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(utoipa::openapi::Required::False)
        .description(Some(description))
        .schema(Some(schema));
    vec![header.build()]
}

/// Any text without NUL, which PostgreSQL's `text` cannot hold.
pub const NO_NUL: &str = "^[^\\x00]*$";

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

/// Refuses what `jsonb` cannot store, before the database does (where it would fail the
/// statement, and with it every write coalesced into it): `\u0000` anywhere, keys included, and
/// numbers outside PostgreSQL's `numeric`.
pub fn check_json_storable(field: &str, value: &Value) -> Result<(), FieldError> {
    match value {
        Value::String(s) if s.contains('\0') => Err(FieldError::new(field, "must not contain NUL characters")),
        Value::Number(n) if !storable_number(&n.to_string()) => {
            Err(FieldError::new(field, "is a number out of the range the database stores"))
        }
        Value::Array(items) => {
            items.iter().enumerate().try_for_each(|(i, item)| check_json_storable(&format!("{field}[{i}]"), item))
        }
        Value::Object(map) => map.iter().try_for_each(|(key, item)| {
            if key.contains('\0') {
                return Err(FieldError::new(field, "must not contain NUL characters"));
            }
            check_json_storable(&format!("{field}.{key}"), item)
        }),
        _ => Ok(()),
    }
}

/// PostgreSQL's `numeric` holds at most 131072 digits before the decimal point and 16383
/// after it. `text` is a JSON number as written (the crate keeps its digits), so `1e999999`
/// is judged by its exponent, never expanded.
fn storable_number(text: &str) -> bool {
    const MAX_WEIGHT: i64 = 131_072;
    const MAX_SCALE: i64 = 16_383;
    let unsigned = text.trim_start_matches('-');
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], &unsigned[at + 1..]),
        None => (unsigned, "0"),
    };
    // An exponent too long for i64 is out of range whatever it says.
    let Ok(exponent) = exponent.trim_start_matches('+').parse::<i64>() else { return false };
    if exponent.abs() > 1_000_000_000 {
        return false;
    }
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let scale = frac.len() as i64 - exponent;
    let int = int.trim_start_matches('0');
    let weight = if !int.is_empty() {
        int.len() as i64 + exponent
    } else {
        // Below one: the first significant digit sits after the point's leading zeros.
        exponent - frac.len().saturating_sub(frac.trim_start_matches('0').len()) as i64
    };
    scale <= MAX_SCALE && weight <= MAX_WEIGHT
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
        let err = check_json_storable("analysis", &json!({"a": [1, {"b": "x\u{0}"}]})).unwrap_err();
        assert_eq!(err.field, "analysis.a[1].b");
        assert!(check_json_storable("analysis", &json!({"a": "fine"})).is_ok());
    }

    #[test]
    fn numbers_numeric_cannot_hold_are_found_by_their_exponent() {
        for bad in ["1e999999", "-1E131073", "1e-16384", "0.5e-16383", "1e99999999999999999999"] {
            let value: Value = serde_json::from_str(&format!(r#"{{"x": [{bad}]}}"#)).unwrap();
            assert_eq!(check_json_storable("analysis", &value).unwrap_err().field, "analysis.x[0]", "{bad}");
        }
        for good in ["0", "-12.5", "1e131071", "1e-16383", "123456789012345678901234567890", "0.000e5"] {
            let value: Value = serde_json::from_str(good).unwrap();
            assert!(check_json_storable("n", &value).is_ok(), "{good}");
        }
    }
}
