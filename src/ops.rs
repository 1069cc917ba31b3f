//! What operators use: health checks, metrics (and, as they land, audit and import).

pub mod health;
pub mod metrics;
