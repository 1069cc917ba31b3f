//! Keyset pagination: `?limit=N&cursor=OPAQUE` -> `{"items": [...], "next_cursor": ...}`.
//!
//! A cursor is the sort key of the last item served, `(position, id)`, base64url-encoded so
//! clients treat it as opaque. Every list sorts on a unique key, so no item is served twice
//! and none is skipped between pages.

use crate::error::{ApiError, FieldError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub position: i64,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.position, self.id))
    }

    fn decode(raw: &str) -> Option<Self> {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
        let (position, id) = text.split_once(':')?;
        Some(Self { position: position.parse().ok()?, id: id.parse().ok()? })
    }
}

/// The query string of every list route (text here, parsed by [`PageQuery::parse`] into 422s
/// that name the parameter).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// How many items a page holds.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200, default = 50, example = 20)]
    limit: Option<String>,
    /// The `next_cursor` of the page before.
    cursor: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub limit: i64,
    pub after: Option<Cursor>,
}

impl PageQuery {
    pub fn parse(&self) -> Result<PageRequest, FieldError> {
        let limit = match self.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => return Err(FieldError::new("limit", "must be an integer from 1 to 200")),
            },
        };
        let after = match self.cursor.as_deref() {
            None | Some("") => None,
            Some(raw) => Some(
                Cursor::decode(raw).ok_or_else(|| FieldError::new("cursor", "is not a cursor this server issued"))?,
            ),
        };
        Ok(PageRequest { limit, after })
    }
}

impl PageRequest {
    /// Lists fetch one row more than they serve: its presence means there is a next page.
    pub fn fetch_limit(&self) -> i64 {
        self.limit + 1
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Cuts the extra row off `rows` and makes the cursor from the last item served.
    pub fn from_rows(mut rows: Vec<T>, page: PageRequest, key: impl Fn(&T) -> Cursor) -> Self {
        let more = rows.len() as i64 > page.limit;
        rows.truncate(page.limit as usize);
        let next_cursor = if more { rows.last().map(|last| key(last).encode()) } else { None };
        Self { items: rows, next_cursor }
    }
}

pub fn page_request(query: &PageQuery) -> Result<PageRequest, ApiError> {
    query.parse().map_err(|e| ApiError::Validation(vec![e]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_rejected() {
        let cursor = Cursor { position: -42, id: Uuid::now_v7() };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("not a cursor"), None);
    }

    #[test]
    fn limit_must_be_between_1_and_200() {
        let q = |limit: &str| PageQuery { limit: Some(limit.into()), cursor: None }.parse();
        assert_eq!(q("200").unwrap().limit, 200);
        for bad in ["0", "201", "-1", "ten"] {
            assert_eq!(q(bad).unwrap_err().field, "limit");
        }
    }
}
