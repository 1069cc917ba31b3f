//! `Idempotency-Key` (API.md §2): exactly-once effects for clients that retry.
//!
//! # Design
//!
//! A keyed POST's record (its key, its fingerprint and its answer) is written in the same
//! transaction as its effect, keyed by (scope, method, routed path, key): a crash leaves both or
//! neither. Most writes record their keys themselves, with their effect ([`Claim::deferred`]):
//!
//! - **JSON writes** ([`Keys::IN_TRANSACTION`]): the handler's writes run in a transaction, and
//!   [`Writer::finish`] records the key with the response bytes *in that same transaction*
//!   ([`record`]: an `INSERT ... ON CONFLICT DO UPDATE` that takes over only a record past its
//!   TTL), then commits. A key that comes back unrecorded is held by another request: the
//!   transaction rolls back, and that request's record answers (a replay, or 422 when the
//!   fingerprint - method, path, body - differs). A duplicate of a request still running waits
//!   on the first's index entry and then replays it: no polling, no lease. A coalesced batch of
//!   save-analysis upserts goes further: one autocommit statement writes the rows and inserts
//!   their records, each keeping its row to render the answer from, as counter writes do
//!   ([`Kept::Own`], `conversations::batcher`). An answer given without
//!   writing (a create-or-get that found its row, a 4xx) needs no transaction: its record goes
//!   with other keys' in one coalesced insert ([`Claims`]).
//! - **Counter writes** ([`Keys::IN_STATEMENT`]): their batch's one statement inserts the keys'
//!   records itself, pointing at the row the answer is rendered from
//!   (`idempotency_answer_rows`). Their records and answer rows also carry the participation's
//!   id as their place ([`Claim::shard`]), which on Citus puts them on the participation's
//!   shard: the statement stays on one.
//!
//! **Uploads** ([`Keys::MULTIPART`]) are claimed first, because their slow work (storing,
//! analysing and transcribing the audio) happens before their transaction, and a duplicate must
//! not repeat it:
//!
//! 1. **Claim** ([`keys`], the guard each keyed route is wrapped in, before the handler runs):
//!    the same insert, coalesced ([`Claims`]), writes our random `claim_id` and a lease
//!    (`locked_until`) and no answer. If the row belongs to someone else we answer without
//!    running anything: a replay, 422, or - after waiting briefly without holding a
//!    connection - 409 while the first request still runs.
//! 2. **Effect + record in one transaction** ([`Writer::finish`]) stores the response bytes into
//!    the claimed row before committing, fenced by `claim_id`.
//! 3. **Everything else** ([`keys`], after the handler): a response below 500 that never reached
//!    a Writer is stored; a 5xx deletes the claim so a retry runs again.
//!
//! A process that dies between 1 and 2 leaves a claim that blocks its key until the lease
//! passes; the lease lives in the row, so a restart does not shorten it. If a lease runs out
//! while its request is still running and a retry takes the key over, the fence (`claim_id`)
//! makes the late request's transaction roll back: never two effects.
//!
//! A claim and a completing `UPDATE` per request had cost keyed JSON writes three quarters of
//! their throughput at 64 connections (bench/PROFILE.md, eleventh round).
//!
//! Slow work (upload-audio's hashing, analysis and speech-to-text) happens in the handler
//! before [`Writer::begin`], so it holds no connection and no transaction.

//!
//! The layer knows no resource: it reaches the application only through [`Layer`], the
//! `web::Data` registered for it, and a resource whose records keep a row instead of a body
//! installs how to render them ([`render_rows_with`]).

mod claim;
mod claims;
mod guard;
mod layer;
mod store;
mod writer;

pub use claim::{Claim, IdempotencyConfig};
pub use claims::Claims;
pub use guard::held_elsewhere;
pub use guard::{keys, KeyHeader, Keys, Scope, HEADER, REPLAYED};
pub use layer::Layer;
pub use store::{
    held_keys, is_key_held, purge_expired, record, render_rows_with, ClaimColumns, Kept, KeyHeld, RowAnswers,
    StoredResponse,
};
pub use writer::{WriteConn, Writer};
