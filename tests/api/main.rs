//! One test binary: every test starts the real HTTP server on a random port, on a fresh
//! database in a real PostgreSQL (DATABASE_URL's server, or a throwaway local cluster).

mod audit;
mod browser;
mod chats;
mod cluster;
mod conversations;
mod cors;
mod distribution;
mod errors;
mod exact;
mod helpers;
mod hostile;
mod idempotency;
mod import;
mod messages;
mod operations;
mod participations;
mod spellings;
mod upload;
