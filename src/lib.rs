//! upsertd: writes that are safe to repeat. See README.md for the tour and the code map.

pub mod auth;
pub mod chats;
pub mod cli;
pub mod coalesce;
pub mod conversations;
pub mod cors;
pub mod db;
pub mod domain;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod local_only;
pub mod openapi;
pub mod ops;
pub mod pagination;
pub mod participations;
pub mod recorder;
pub mod reply;
pub mod settings;
pub mod startup;
pub mod state;
pub mod telemetry;
