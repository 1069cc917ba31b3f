//! One-to-one and group chats keyed by `participants_key`: create-or-get that any number of
//! concurrent callers can race without a duplicate or a 5xx.

pub mod routes;
pub mod store;
