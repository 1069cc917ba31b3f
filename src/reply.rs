//! A write's answer, built in full before its transaction commits, so that the idempotency
//! record can store exactly the bytes the client is sent.

use actix_web::http::header::{self, HeaderName};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde::Serialize;

pub const UPSERT_OUTCOME: &str = "upsert-outcome";

/// What a write did to its row; also the `Upsert-Outcome` header and the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Inserted,
    Updated,
    /// The row already held these values: no new row version, `version` unchanged.
    Unchanged,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Inserted => "inserted",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Outcome::Inserted => StatusCode::CREATED,
            Outcome::Updated | Outcome::Unchanged => StatusCode::OK,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Vec<u8>,
    /// The write this answers, counted in `upsertd_upserts_total{resource, outcome}` when the
    /// answer is sent: after the commit, so a write that rolled back is never counted.
    pub counted: Option<(&'static str, Outcome)>,
}

impl Reply {
    pub fn json(status: StatusCode, value: &impl Serialize) -> Self {
        Self {
            status,
            headers: vec![(header::CONTENT_TYPE, "application/json".to_owned())],
            body: serde_json::to_vec(value).expect("API resources always serialise"),
            counted: None,
        }
    }

    /// [`Reply::resource`], counted in `upsertd_upserts_total{resource, outcome}` once sent.
    pub fn written(
        resource: &'static str,
        outcome: Outcome,
        value: &impl Serialize,
        location: impl FnOnce() -> String,
    ) -> Self {
        Self { counted: Some((resource, outcome)), ..Self::resource(outcome, value, location) }
    }

    /// 201 with `Location` when the request inserted, else 200; `Upsert-Outcome` always.
    pub fn resource(outcome: Outcome, value: &impl Serialize, location: impl FnOnce() -> String) -> Self {
        let reply =
            Self::json(outcome.status(), value).header(HeaderName::from_static(UPSERT_OUTCOME), outcome.as_str());
        match outcome {
            Outcome::Inserted => reply.header(header::LOCATION, location()),
            _ => reply,
        }
    }

    pub fn header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The response to send: by now the write it answers has committed (`Writer::finish`
    /// commits first), so this is where it is counted.
    pub fn into_response(self) -> HttpResponse {
        if let Some((resource, outcome)) = self.counted {
            crate::recorder::upsert(resource, outcome.as_str());
        }
        let mut response = HttpResponse::build(self.status);
        for (name, value) in self.headers {
            response.append_header((name, value));
        }
        response.body(self.body)
    }
}
