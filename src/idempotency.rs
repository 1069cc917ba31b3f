//! `Idempotency-Key` (API.md §2): exactly-once effects for clients that retry.
//!
//! # Design
//!
//! A keyed POST goes through three steps, and no database transaction spans the request:
//!
//! 1. **Claim** ([`keys`], the guard each keyed route is wrapped in, before the handler runs):
//!    one autocommit `INSERT ... ON CONFLICT DO UPDATE ... WHERE <the old claim is dead or
//!    expired>` on `idempotency_keys`, keyed by (scope, method, routed path, key), writes our
//!    random `claim_id` and a lease (`locked_until`). Claims that arrive together share that
//!    statement ([`Claims`]). If the row belongs to someone else we answer without running
//!    anything: the stored response (a replay), 422 when the fingerprint (method, path, body)
//!    differs, or - after waiting briefly without holding a connection - 409 while the first
//!    request still runs.
//! 2. **Effect + record in one transaction** ([`Writer`]): the handler's writes run in a
//!    transaction, and [`Writer::finish`] stores the response bytes into the claimed row *in
//!    that same transaction* before committing, fenced by `claim_id`. A crash before the commit
//!    loses both; after it, both are durable. The two cannot be separated.
//! 3. **Everything else** ([`keys`], after the handler): a response that never reached a
//!    Writer (a validation error, say) is stored if below 500; a 5xx deletes the claim so a
//!    retry runs again.
//!
//! A process that dies between 1 and 2 leaves a claim that blocks its key until the lease
//! passes; the lease lives in the row, so a restart does not shorten it. If a lease runs out
//! while its request is still running and a retry takes the key over, the fence (`claim_id`)
//! makes the late request's transaction roll back: never two effects.
//!
//! Two kinds of write skip step 1 and record their keys with their effects
//! ([`Claim::deferred`], [`Keys::IN_STATEMENT`] and [`Keys::IN_TRANSACTION`]), so no lease is
//! needed and a crash leaves no claim behind:
//! - The coalesced counters: their batch's one statement inserts the keys' records itself,
//!   pointing at the row the answer is rendered from (`idempotency_answer_rows`). Their records
//!   and answer rows also carry the participation's id as their place ([`Claim::shard`]), which
//!   on Citus puts them on the participation's shard: the statement stays on one.
//! - Save-analysis: the transaction of a coalesced batch (`conversations::batcher`), or of a
//!   conditional write ([`Writer::finish`]), upserts, then records each key with its write's
//!   answer ([`record`]) and commits both. A key another request holds comes back unrecorded:
//!   the transaction rolls back, and that request's record answers (a replay, 422, or 409 if
//!   it is a claim still running). A duplicate sent while the first runs waits on the first's
//!   row and index entry instead of polling, then gets the replay. A claim and a completing
//!   `UPDATE` per request had cost keyed save-analysis three quarters of its throughput at 64
//!   connections (bench/PROFILE.md, eleventh round).
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
pub use store::{held_keys, purge_expired, record, render_rows_with, ClaimColumns, RowAnswers, StoredResponse};
pub use writer::{WriteConn, Writer};
