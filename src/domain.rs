//! Values parsed at the edge: once a handler holds one of these, it is valid.

mod session_id;
mod text;

pub use session_id::SessionId;
pub use text::{check_json_for_nul, optional_text, Patch};
