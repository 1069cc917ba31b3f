//! Ad-campaign participations: create-or-get on (campaign, streamer), counters that only move
//! by one atomic `UPDATE ... SET x = x + $n` each, and a ledger row per counter write.

pub mod batcher;
pub mod model;
pub mod qr;
pub mod routes;
pub mod store;
