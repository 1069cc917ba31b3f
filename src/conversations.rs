//! Conversations keyed by `session_id`: the legacy two-step `upload-audio` -> `save-analysis`
//! flow, create-or-get, and message appends. Both steps of the legacy flow end in the same
//! [`store::upsert_analysis`], one `INSERT ... ON CONFLICT (session_id) DO UPDATE`.

pub mod audio;
pub mod batcher;
pub mod model;
pub mod routes;
pub mod store;
pub mod stt;
pub mod upload;
