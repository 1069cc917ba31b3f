//! What operators use: health checks (and, as they land, metrics, audit and import).

pub mod health;
