//! What operators use: health checks, metrics, the audit and the legacy import.

pub mod audit;
pub mod health;
pub mod import;
pub mod metrics;
