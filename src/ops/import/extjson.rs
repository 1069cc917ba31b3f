//! MongoDB Extended JSON as `mongoexport` writes it, canonical or relaxed: `{"$oid"}`,
//! `{"$date": "ISO"}` or `{"$date": {"$numberLong": "ms"}}`, `{"$numberInt"}`, `{"$numberLong"}`,
//! `{"$numberDouble"}`, `{"$numberDecimal"}`, or plain JSON values where the relaxed form uses them.
//! Every reader returns a one-line reason naming the field instead of failing.

use chrono::{DateTime, Datelike, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use std::str::FromStr;

/// The field, treating `null` like a missing field (Mongo documents use both).
pub fn field<'a>(doc: &'a Value, name: &str) -> Option<&'a Value> {
    doc.get(name).filter(|v| !v.is_null())
}

/// The single `$`-key wrapper of an Extended JSON value, if it is one.
fn wrapper(value: &Value) -> Option<(&str, &Value)> {
    let object = value.as_object()?;
    let (key, inner) = object.iter().next()?;
    (object.len() == 1 && key.starts_with('$')).then_some((key.as_str(), inner))
}

pub fn string(doc: &Value, name: &str) -> Result<Option<String>, String> {
    match field(doc, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{name}: not a string")),
    }
}

/// An identifier: a string, an ObjectId (its hex) or an integer (its decimal digits).
pub fn id(value: &Value) -> Option<String> {
    match (value, wrapper(value)) {
        (Value::String(s), _) => Some(s.clone()),
        (Value::Number(n), _) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        (_, Some(("$oid" | "$numberInt" | "$numberLong", Value::String(s)))) => Some(s.clone()),
        _ => None,
    }
}

pub fn date(doc: &Value, name: &str) -> Result<Option<DateTime<Utc>>, String> {
    field(doc, name).map(|value| date_value(value).ok_or_else(|| format!("{name}: not a date"))).transpose()
}

/// A date PostgreSQL can store: `timestamptz` starts in 4713 BC (chrono's range ends before
/// PostgreSQL's does), so an earlier one is not a date here and its document is rejected
/// with a reason, instead of failing its batch in the database.
fn date_value(value: &Value) -> Option<DateTime<Utc>> {
    let inner = match wrapper(value) {
        Some(("$date", inner)) => inner,
        _ => value,
    };
    let date = match inner {
        Value::String(s) => DateTime::parse_from_rfc3339(s).ok().map(|d| d.with_timezone(&Utc)),
        other => integer_text(other).and_then(|ms| ms.parse().ok()).and_then(DateTime::from_timestamp_millis),
    };
    date.filter(|d| d.year() >= -4712)
}

/// The digits of any numeric form, as written (so decimals keep every digit).
fn number_text(value: &Value) -> Option<String> {
    match (value, wrapper(value)) {
        (Value::Number(n), _) => Some(n.to_string()),
        (_, Some(("$numberInt" | "$numberLong" | "$numberDouble" | "$numberDecimal", Value::String(s)))) => {
            Some(s.clone())
        }
        _ => None,
    }
}

fn integer_text(value: &Value) -> Option<String> {
    number_text(value).filter(|s| !s.contains(['.', 'e', 'E']) || parse_decimal(s).is_some_and(|d| d.fract().is_zero()))
}

fn parse_decimal(text: &str) -> Option<Decimal> {
    Decimal::from_str(text).or_else(|_| Decimal::from_scientific(text)).ok()
}

/// A counter: missing or null is 0; it must be a whole number >= 0.
pub fn count(doc: &Value, name: &str) -> Result<i64, String> {
    let Some(value) = field(doc, name) else { return Ok(0) };
    let text = integer_text(value).ok_or_else(|| format!("{name}: not a whole number"))?;
    let n = parse_decimal(&text).and_then(|d| i64::try_from(d).ok()).ok_or_else(|| format!("{name}: out of range"))?;
    if n < 0 {
        return Err(format!("{name}: negative ({n})"));
    }
    Ok(n)
}

/// An exact decimal >= 0 (missing or null is 0); `$numberDouble` is read from its shortest text.
pub fn decimal(doc: &Value, name: &str) -> Result<Decimal, String> {
    let Some(value) = field(doc, name) else { return Ok(Decimal::ZERO) };
    let d = number_text(value).as_deref().and_then(parse_decimal).ok_or_else(|| format!("{name}: not a number"))?;
    if d.is_sign_negative() && !d.is_zero() {
        return Err(format!("{name}: negative ({d})"));
    }
    Ok(d)
}

/// A finite float >= 0 (missing or null is 0).
pub fn float(doc: &Value, name: &str) -> Result<f64, String> {
    let Some(value) = field(doc, name) else { return Ok(0.0) };
    let f: f64 = number_text(value).and_then(|s| s.parse().ok()).ok_or_else(|| format!("{name}: not a number"))?;
    if !f.is_finite() || f < 0.0 {
        return Err(format!("{name}: not a finite number >= 0"));
    }
    Ok(f)
}

/// Plain JSON for a `jsonb` column: ids and dates become strings, numbers become numbers
/// (a decimal stays a string so no digit is lost).
pub fn plain(value: &Value) -> Value {
    match (value, wrapper(value)) {
        (_, Some(("$oid", Value::String(s)))) => Value::String(s.clone()),
        (_, Some(("$date", _))) => date_value(value).map_or_else(|| value.clone(), |at| Value::String(at.to_rfc3339())),
        (_, Some(("$numberInt" | "$numberLong", Value::String(s)))) => {
            s.parse::<i64>().map_or_else(|_| Value::String(s.clone()), Value::from)
        }
        (_, Some(("$numberDouble", Value::String(s)))) => match s.parse::<f64>() {
            Ok(f) if f.is_finite() => Value::from(f),
            _ => Value::String(s.clone()),
        },
        (_, Some(("$numberDecimal", Value::String(s)))) => Value::String(s.clone()),
        (Value::Array(items), _) => Value::Array(items.iter().map(plain).collect()),
        (Value::Object(map), _) => Value::Object(map.iter().map(|(k, v)| (k.clone(), plain(v))).collect()),
        _ => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates_postgresql_cannot_store_are_not_dates() {
        let doc =
            serde_json::json!({"a": {"$date": {"$numberLong": "-400000000000000"}}, "b": "-9999-01-01T00:00:00Z"});
        assert!(date(&doc, "a").is_err());
        assert!(date(&doc, "b").is_err());
    }

    #[test]
    fn dates_read_in_both_mongoexport_forms() {
        let doc = json!({"a": {"$date": "2024-03-01T10:00:00.000Z"}, "b": {"$date": {"$numberLong": "1709287200000"}}});
        assert_eq!(date(&doc, "a").unwrap(), date(&doc, "b").unwrap());
        assert!(date(&json!({"a": {"$date": "yesterday"}}), "a").is_err());
        assert_eq!(date(&json!({"a": null}), "a").unwrap(), None);
    }

    #[test]
    fn numbers_read_in_every_form_and_keep_their_digits() {
        let doc = json!({"i": {"$numberInt": "7"}, "l": {"$numberLong": "9000000000"}, "d": {"$numberDouble": "3.0"},
                         "m": {"$numberDecimal": "0.100000001"}, "p": 4, "n": -1, "f": 1.5});
        assert_eq!(count(&doc, "i"), Ok(7));
        assert_eq!(count(&doc, "l"), Ok(9_000_000_000));
        assert_eq!(count(&doc, "d"), Ok(3));
        assert_eq!(count(&doc, "p"), Ok(4));
        assert_eq!(count(&doc, "missing"), Ok(0));
        assert!(count(&doc, "n").is_err(), "negative counters are refused");
        assert!(count(&doc, "f").is_err(), "a fraction is not a count");
        assert_eq!(decimal(&doc, "m").unwrap().to_string(), "0.100000001");
        assert_eq!(float(&doc, "f"), Ok(1.5));
    }

    #[test]
    fn plain_json_has_no_wrappers_left() {
        let v = json!({"_id": {"$oid": "65f0"}, "scores": [{"$numberInt": "3"}, {"$numberDouble": "NaN"}]});
        assert_eq!(plain(&v), json!({"_id": "65f0", "scores": [3, "NaN"]}));
        assert_eq!(id(&json!({"$oid": "abc"})), Some("abc".into()));
    }
}
