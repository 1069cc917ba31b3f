//! What operators use: health checks, the audit and the legacy import (and, as they land, metrics).

pub mod audit;
pub mod health;
pub mod import;
