//! Ad-campaign participations: create-or-get on (campaign, streamer), counters that only move
//! by one atomic `UPDATE ... SET x = x + $n` each, and a ledger row per counter write.

use crate::error::ApiError;

pub mod batcher;
pub mod model;
pub mod qr;
pub mod routes;
pub mod store;

/// The answer for an id that names no participation, from a handler or a counter batch.
fn not_found() -> ApiError {
    ApiError::NotFound("no participation has this id".into())
}
