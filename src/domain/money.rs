use crate::error::FieldError;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::de::{self, Deserialize, Deserializer, Unexpected};
use serde::{Serialize, Serializer};
use serde_json::Value;
use std::str::FromStr;

/// An exact amount with at most six fractional digits, stored as `numeric(20, 6)` and written
/// as a decimal string. JSON numbers are read from their text (serde_json keeps it with
/// `arbitrary_precision`), so `0.01` is 0.01, not the nearest binary fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Money(Decimal);

impl Money {
    pub const SCALE: u32 = 6;
    /// What `numeric(20, 6)` holds: 14 digits before the point, so every amount is below 10^14.
    pub const LIMIT: Decimal = Decimal::from_parts(276_447_232, 23_283, 0, false, 0);

    /// The schema of a money field that takes `0` (`cost`) or only amounts above it (`amount`):
    /// a JSON number or a decimal string, at most 6 significant fractional digits, below 10^14,
    /// never negative (what [`Money::parse`] and the routes accept; a test holds them together).
    pub fn schema(zero_allowed: bool) -> utoipa::openapi::schema::Schema {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let (pattern, number) = match zero_allowed {
            true => (Self::PATTERN, ObjectBuilder::new().minimum(Some(0))),
            false => (Self::POSITIVE_PATTERN, ObjectBuilder::new().exclusive_minimum(Some(0))),
        };
        let text = ObjectBuilder::new().schema_type(Type::String).pattern(Some(pattern));
        let number = number.schema_type(Type::Number).exclusive_maximum(Some(1e14)).multiple_of(Some(1e-6));
        OneOfBuilder::new()
            .item(text)
            .item(number)
            .description(Some(
                "A JSON number or a decimal string: at most 6 fractional digits, below 10^14. A write that would \
                 take the earnings to 10^14 is refused (422) and changes nothing.",
            ))
            .build()
            .into()
    }

    /// The decimal strings [`Money::schema`] states: up to 14 digits before the point, up to 6
    /// significant ones after it (trailing zeros do not count).
    /// (A zero may carry a sign: `-0` is zero.)
    pub const PATTERN: &'static str = "^(0*([0-9]{1,14}(\\.[0-9]{0,6}0*)?|\\.[0-9]{1,6}0*)|-0+(\\.0*)?|-0*\\.0+)$";
    /// The same, above zero.
    pub const POSITIVE_PATTERN: &'static str = "^0*([1-9][0-9]{0,13}(\\.[0-9]{0,6}0*)?|0?\\.[0-9]{0,5}[1-9]0*)$";

    pub fn parse(field: &str, value: &Value) -> Result<Self, FieldError> {
        let text = match value {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.trim().to_owned(),
            _ => return Err(FieldError::new(field, "must be a decimal number or a decimal string")),
        };
        let amount = Decimal::from_str(&text)
            .or_else(|_| Decimal::from_scientific(&text))
            .map_err(|_| FieldError::new(field, "is not a decimal number"))?;
        if amount.normalize().scale() > Self::SCALE {
            return Err(FieldError::new(field, "may have at most 6 fractional digits"));
        }
        Self::within_limit(field, amount)
    }

    /// `amount` as the column stores it: rounded half away from zero to six digits, then held
    /// to the limit, so an amount that rounds up to 10^14 is too large.
    pub fn rounded(field: &str, amount: Decimal) -> Result<Self, FieldError> {
        let rounded = amount.round_dp_with_strategy(Self::SCALE, RoundingStrategy::MidpointAwayFromZero);
        Self::within_limit(field, rounded)
    }

    fn within_limit(field: &str, amount: Decimal) -> Result<Self, FieldError> {
        if amount.abs() >= Self::LIMIT {
            return Err(FieldError::new(field, "is too large"));
        }
        Ok(Self(amount))
    }

    pub fn zero() -> Self {
        Self(Decimal::ZERO)
    }

    pub fn decimal(self) -> Decimal {
        self.0
    }

    pub fn is_negative(self) -> bool {
        self.0.is_sign_negative() && !self.0.is_zero()
    }

    pub fn is_positive(self) -> bool {
        self.0 > Decimal::ZERO
    }
}

impl From<Decimal> for Money {
    fn from(value: Decimal) -> Self {
        Self(value)
    }
}

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut fixed = self.0;
        fixed.rescale(Self::SCALE);
        write!(f, "{fixed}")
    }
}

/// A body field of this type is a JSON number or a decimal string; any other JSON type is the
/// wrong type (400), a number or string that is no amount is an invalid value (422): the
/// errors the JSON extractor tells apart.
impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let unexpected = match &value {
            Value::Number(_) | Value::String(_) => {
                return Money::parse("", &value).map_err(|e| de::Error::custom(e.message));
            }
            Value::Null => Unexpected::Unit,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Array(_) => Unexpected::Seq,
            Value::Object(_) => Unexpected::Map,
        };
        Err(de::Error::invalid_type(unexpected, &"a decimal number or a decimal string"))
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn amounts_are_exact_and_printed_with_six_digits() {
        let cent = Money::parse("cost", &serde_json::from_str::<Value>("0.01").unwrap()).unwrap();
        let total = (0..300).fold(Decimal::ZERO, |sum, _| sum + cent.decimal());
        assert_eq!(Money::from(total).to_string(), "3.000000");
        assert_eq!(Money::parse("cost", &json!("12.5")).unwrap().to_string(), "12.500000");
    }

    #[test]
    fn the_limit_is_ten_to_the_fourteen() {
        assert_eq!(Money::LIMIT, Decimal::from(100_000_000_000_000_i64));
    }

    #[test]
    fn rounding_is_half_away_from_zero_and_the_limit_applies_after_it() {
        let rounded = |text: &str| Money::rounded("cost", Decimal::from_str(text).unwrap());
        assert_eq!(rounded("0.0000005").unwrap().to_string(), "0.000001");
        assert_eq!(rounded("-0.0000005").unwrap().to_string(), "-0.000001");
        assert!(rounded("99999999999999.999999").is_ok());
        assert!(rounded("99999999999999.9999995").is_err(), "rounds up to 10^14");
    }

    #[test]
    fn too_precise_or_not_a_number_is_rejected() {
        assert!(Money::parse("cost", &json!("0.0000001")).is_err());
        assert!(Money::parse("cost", &json!("ten")).is_err());
        assert!(Money::parse("cost", &json!(true)).is_err());
        assert!(Money::parse("cost", &json!("-1")).unwrap().is_negative());
    }
}
