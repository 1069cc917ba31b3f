//! Values parsed at the edge: once a handler holds one of these, it is valid.

mod idempotency_key;
mod money;
mod participants;
mod session_id;
mod text;
mod token;

pub use idempotency_key::IdempotencyKey;
pub use money::Money;
pub use participants::{ParticipantId, ParticipantsKey};
pub use session_id::SessionId;
pub use text::{check_json_storable, optional_text, Patch};
pub use token::BrowserSourceToken;
