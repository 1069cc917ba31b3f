//! The participation resource (API.md §5) and the counter writes that change it.

use crate::domain::{Money, ParticipantId};
use crate::error::{ApiError, FieldError};
use crate::extract::{uuid_path_id, PathSegment};
use chrono::{DateTime, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Number;
use std::str::FromStr;
use utoipa::ToSchema;
use uuid::Uuid;

uuid_path_id!(
    /// A participation's id in a path.
    ParticipationId,
    "no participation has this id"
);

/// The answer for an id that names no participation, from a handler or a counter batch.
pub fn not_found() -> ApiError {
    ApiError::NotFound(<ParticipationId as PathSegment>::NOT_FOUND.into())
}

/// A row of `participations`, which is also the resource clients see.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Participation {
    pub id: Uuid,
    pub campaign_id: String,
    pub streamer_id: String,
    pub browser_source_token: String,
    pub impressions: i64,
    pub clicks: i64,
    pub chat_clicks: i64,
    pub qr_scans: i64,
    pub link_clicks: i64,
    #[serde(serialize_with = "as_money")]
    #[schema(value_type = String, example = "3.000000")]
    pub estimated_earnings: Decimal,
    pub viewer_samples: i64,
    pub avg_viewer_count: f64,
    pub peak_viewer_count: i64,
    pub qr_code_url: Option<String>,
    pub tracking_url: Option<String>,
    pub chat_command: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    pub viewer_count_total: i64,
}

fn as_money<S: Serializer>(amount: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    Money::from(*amount).serialize(serializer)
}

impl Participation {
    pub fn location(&self) -> String {
        format!("/api/participations/{}", self.id)
    }
}

/// What `GET /api/overlay/{token}` shows a stream overlay.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overlay {
    pub campaign_id: String,
    pub streamer_id: String,
    pub chat_command: Option<String>,
    pub tracking_url: Option<String>,
    pub qr_code_url: Option<String>,
}

/// One counter write: how much each counter moves, and the ledger row that records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    pub kind: &'static str,
    pub impressions: i64,
    pub clicks: i64,
    pub chat_clicks: i64,
    pub qr_scans: i64,
    pub link_clicks: i64,
    pub earnings: Decimal,
    /// A viewer sample: counted, added to the total, compared with the peak.
    pub viewer_count: Option<i64>,
}

impl Delta {
    fn new(kind: &'static str) -> Self {
        Self {
            kind,
            impressions: 0,
            clicks: 0,
            chat_clicks: 0,
            qr_scans: 0,
            link_clicks: 0,
            earnings: Decimal::ZERO,
            viewer_count: None,
        }
    }
}

/// The running sums of a batch's writes up to and including one of them: what that write's
/// answer adds to the row as it was before the batch ([`Participation::after`]). It is also
/// what a keyed write's record keeps (`response_row_patch`), so zeros are left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prefix {
    #[serde(skip_serializing_if = "is_zero")]
    pub impressions: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub clicks: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub chat_clicks: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub qr_scans: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub link_clicks: i64,
    #[serde(skip_serializing_if = "Decimal::is_zero")]
    pub earnings: Decimal,
    #[serde(skip_serializing_if = "is_zero")]
    pub samples: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub viewers: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak: Option<i64>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl Prefix {
    /// The running sums of `deltas`, one per delta, as far as they fit in `i64`: a delta
    /// whose sum would not fit is left out with every delta after it. (The first always fits:
    /// it is one delta.)
    pub fn running<'a>(deltas: impl IntoIterator<Item = &'a Delta>) -> Vec<Prefix> {
        let mut sums: Vec<Prefix> = Vec::new();
        for delta in deltas {
            let last = sums.last().cloned().unwrap_or_default();
            let Some(next) = last.then(delta) else { break };
            sums.push(next);
        }
        sums
    }

    fn then(&self, d: &Delta) -> Option<Prefix> {
        Some(Prefix {
            impressions: self.impressions.checked_add(d.impressions)?,
            clicks: self.clicks.checked_add(d.clicks)?,
            chat_clicks: self.chat_clicks.checked_add(d.chat_clicks)?,
            qr_scans: self.qr_scans.checked_add(d.qr_scans)?,
            link_clicks: self.link_clicks.checked_add(d.link_clicks)?,
            earnings: self.earnings.checked_add(d.earnings)?,
            samples: self.samples + i64::from(d.viewer_count.is_some()),
            viewers: self.viewers.checked_add(d.viewer_count.unwrap_or(0))?,
            peak: self.peak.max(d.viewer_count),
        })
    }
}

impl Participation {
    /// The first column the writes summed in `prefix` would take past what it holds, from
    /// this row. The statement that applies them checks the same in SQL, which decides; this
    /// finds which write, and which column, to refuse.
    pub fn overflow(&self, prefix: &Prefix) -> Option<&'static str> {
        let full = |stored: i64, added: i64| stored.checked_add(added).is_none();
        [
            (full(self.impressions, prefix.impressions), "impressions"),
            (full(self.clicks, prefix.clicks), "clicks"),
            (full(self.chat_clicks, prefix.chat_clicks), "chat_clicks"),
            (full(self.qr_scans, prefix.qr_scans), "qr_scans"),
            (full(self.link_clicks, prefix.link_clicks), "link_clicks"),
            (full(self.viewer_samples, prefix.samples), "viewer_samples"),
            (full(self.viewer_count_total, prefix.viewers), "viewer_count_total"),
            (self.estimated_earnings + prefix.earnings >= Money::LIMIT, "estimated_earnings"),
        ]
        .into_iter()
        .find_map(|(over, column)| over.then_some(column))
    }

    /// The row as the writes summed in `prefix` left it, from the row before them. The mean is
    /// `total / samples` of two exact integers, as the `UPDATE` computes it
    /// (`participations::store::apply`), so the last write's answer is the stored row.
    /// Saturating: the statement refused every write that would not fit.
    pub fn after(&self, prefix: &Prefix) -> Participation {
        let samples = self.viewer_samples.saturating_add(prefix.samples);
        let viewer_count_total = self.viewer_count_total.saturating_add(prefix.viewers);
        Participation {
            impressions: self.impressions.saturating_add(prefix.impressions),
            clicks: self.clicks.saturating_add(prefix.clicks),
            chat_clicks: self.chat_clicks.saturating_add(prefix.chat_clicks),
            qr_scans: self.qr_scans.saturating_add(prefix.qr_scans),
            link_clicks: self.link_clicks.saturating_add(prefix.link_clicks),
            estimated_earnings: self.estimated_earnings + prefix.earnings,
            viewer_samples: samples,
            viewer_count_total,
            avg_viewer_count: if prefix.samples == 0 {
                self.avg_viewer_count
            } else {
                viewer_count_total as f64 / samples as f64
            },
            peak_viewer_count: self.peak_viewer_count.max(prefix.peak.unwrap_or(0)),
            ..self.clone()
        }
    }
}

impl Delta {
    /// The 422 of a write that would take `column` past what it holds: it names the request
    /// field that carried the amount, or for a click (which carries none) the counter itself.
    pub fn overflow(&self, column: &str) -> ApiError {
        let field = match (self.kind, column) {
            ("impressions", "estimated_earnings") => "cost",
            ("impressions", _) => "count",
            ("earnings", _) => "amount",
            ("viewer_sample", _) => "viewer_count",
            _ => column,
        };
        let limit = if column == "estimated_earnings" { "99999999999999.999999" } else { "9223372036854775807" };
        ApiError::invalid(field, format!("would take {column} past {limit}, the most it can hold; nothing was counted"))
    }
}

/// A whole number in `min..`; a JSON number that is not one is a 422. (A value that is not a
/// JSON number never gets here: the extractor refuses it as the wrong type.) `12.0` and `1.2e1`
/// are whole, as JSON Schema's `integer` says.
fn whole_number(field: &str, value: &Number, min: i64) -> Result<i64, ApiError> {
    let text = value.to_string();
    let integral =
        Decimal::from_str(&text).or_else(|_| Decimal::from_scientific(&text)).ok().filter(|d| d.fract().is_zero());
    match value.as_i64().or_else(|| integral.and_then(|d| d.to_i64())) {
        Some(v) if v >= min => Ok(v),
        Some(_) => Err(ApiError::invalid(field, format!("must be at least {min}"))),
        None if integral.is_some() || text.bytes().all(|b| b.is_ascii_digit()) => {
            Err(ApiError::invalid(field, "is too large: at most 9223372036854775807"))
        }
        None => Err(ApiError::invalid(field, "must be a whole number")),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"campaign_id": "camp-1", "streamer_id": "streamer-7"}))]
pub struct CreateBody {
    #[schema(schema_with = ParticipantId::schema, required = true)]
    campaign_id: Option<String>,
    #[schema(schema_with = ParticipantId::schema, required = true)]
    streamer_id: Option<String>,
}

impl CreateBody {
    pub fn validate(self) -> Result<(ParticipantId, ParticipantId), ApiError> {
        let field = |name: &str, raw: Option<String>| match raw {
            None => Err(FieldError::new(name, "is required")),
            Some(raw) => ParticipantId::parse(name, &raw),
        };
        match (field("campaign_id", self.campaign_id), field("streamer_id", self.streamer_id)) {
            (Ok(campaign), Ok(streamer)) => Ok((campaign, streamer)),
            (campaign, streamer) => {
                Err(ApiError::Validation(campaign.err().into_iter().chain(streamer.err()).collect()))
            }
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"count": 10, "cost": "0.25"}))]
pub struct ImpressionsBody {
    /// How many (default 1). A count that would take `impressions` past 9223372036854775807 is
    /// refused (422) and changes nothing.
    #[schema(value_type = Option<i64>, minimum = 1)]
    count: Option<Number>,
    #[schema(schema_with = cost_schema)]
    cost: Option<Money>,
}

/// Optional: absent or null is no cost.
fn cost_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
    let mut cost = Money::schema(true);
    if let Schema::OneOf(one_of) = &mut cost {
        one_of.items.push(ObjectBuilder::new().schema_type(Type::Null).into());
    }
    cost
}

fn amount_schema() -> utoipa::openapi::schema::Schema {
    Money::schema(false)
}

impl ImpressionsBody {
    pub fn delta(self) -> Result<Delta, ApiError> {
        let count = self.count.map_or(Ok(1), |v| whole_number("count", &v, 1))?;
        let cost = self.cost.unwrap_or_default();
        if cost.is_negative() {
            return Err(ApiError::invalid("cost", "must not be negative"));
        }
        Ok(Delta { impressions: count, earnings: cost.decimal(), ..Delta::new("impressions") })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"type": "qr"}))]
pub struct ClickBody {
    #[serde(rename = "type")]
    #[schema(value_type = Option<ClickKind>)]
    kind: Option<String>,
}

/// What was clicked (default `direct`).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // describes `ClickBody::kind` in the document; the body reads a string
enum ClickKind {
    Direct,
    Chat,
    Qr,
    Link,
}

impl ClickBody {
    pub fn delta(self) -> Result<Delta, ApiError> {
        let click = Delta { clicks: 1, ..Delta::new("click") };
        match self.kind.as_deref().unwrap_or("direct") {
            "direct" => Ok(click),
            "chat" => Ok(Delta { chat_clicks: 1, ..click }),
            "qr" => Ok(Delta { qr_scans: 1, ..click }),
            "link" => Ok(Delta { link_clicks: 1, ..click }),
            _ => Err(ApiError::invalid("type", "must be one of direct, chat, qr, link")),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"viewer_count": 120}))]
pub struct ViewerSampleBody {
    /// Viewers at this moment. A sample that would take a counter past 9223372036854775807 is
    /// refused (422) and changes nothing.
    #[schema(value_type = i64, minimum = 0)]
    viewer_count: Option<Number>,
}

impl ViewerSampleBody {
    pub fn delta(self) -> Result<Delta, ApiError> {
        let value = self.viewer_count.ok_or_else(|| ApiError::invalid("viewer_count", "is required"))?;
        let viewers = whole_number("viewer_count", &value, 0)?;
        Ok(Delta { impressions: viewers, viewer_count: Some(viewers), ..Delta::new("viewer_sample") })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"amount": "1.50"}))]
pub struct EarningsBody {
    #[schema(schema_with = amount_schema, required = true)]
    amount: Option<Money>,
}

impl EarningsBody {
    pub fn delta(self) -> Result<Delta, ApiError> {
        let amount = self.amount.ok_or_else(|| ApiError::invalid("amount", "is required"))?;
        if !amount.is_positive() {
            return Err(ApiError::invalid("amount", "must be greater than 0"));
        }
        Ok(Delta { earnings: amount.decimal(), ..Delta::new("earnings") })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"command": "!join"}))]
pub struct ChatCommandBody {
    /// 1-100 characters, not all spaces, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    command: Option<String>,
}

pub const MAX_COMMAND_CHARS: usize = 100;

impl ChatCommandBody {
    /// The command to set, defaulting to `!<campaign_id>` once the campaign is known.
    pub fn validate(self) -> Result<Option<String>, ApiError> {
        let Some(command) = self.command else { return Ok(None) };
        if command.trim().is_empty()
            || command.chars().count() > MAX_COMMAND_CHARS
            || command.contains(char::is_control)
        {
            return Err(ApiError::invalid("command", "must be 1 to 100 printable characters"));
        }
        Ok(Some(command))
    }
}
