//! The begin/finish pair every POST handler writes through.

use super::claim::Claim;
use super::guard::{held, held_elsewhere};
use super::layer::Layer;
use super::store::{self, StoredResponse};
use crate::error::{ApiError, ApiResult};
use crate::reply::Reply;
use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse};
use sqlx::PgConnection;
use std::future::{ready, Ready};
use std::ops::{Deref, DerefMut};

/// Hands a handler its connection and turns its result into the response; with an
/// `Idempotency-Key` it also stores that response in the transaction of the effect.
pub struct Writer {
    layer: web::Data<Layer>,
    claim: Option<Claim>,
}

impl FromRequest for Writer {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let layer = req.app_data::<web::Data<Layer>>().expect("the idempotency layer is registered");
        // Taken, not cloned: one Writer per request, and the guard keeps its own copy.
        let claim = req.extensions_mut().remove::<Claim>();
        ready(Ok(Self { layer: layer.clone(), claim }))
    }
}

/// A plain pooled connection (each statement commits by itself: one round trip per write) or,
/// when a key is claimed, a transaction the idempotency record joins.
pub enum WriteConn {
    Plain(crate::db::Conn),
    Tx(crate::db::Tx),
}

impl Deref for WriteConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self {
            WriteConn::Plain(conn) => conn,
            WriteConn::Tx(tx) => tx,
        }
    }
}

impl DerefMut for WriteConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            WriteConn::Plain(conn) => conn,
            WriteConn::Tx(tx) => tx,
        }
    }
}

impl Writer {
    /// The claimed key, if any.
    pub fn claim(&self) -> Option<&Claim> {
        self.claim.as_ref()
    }

    /// The claimed key, for writes that store their answer themselves (coalesced counters).
    pub fn into_claim(self) -> Option<Claim> {
        self.claim
    }

    pub async fn begin(&self) -> ApiResult<WriteConn> {
        Ok(match self.claim {
            Some(_) => WriteConn::Tx(crate::db::begin(&self.layer.pool).await?),
            None => WriteConn::Plain(crate::db::acquire(&self.layer.pool).await?),
        })
    }

    /// An answer found without writing (a create-or-get that found its row). A key the write
    /// records itself is recorded with it in one insert that other keys' records and claims
    /// share (`Claims`): with no effect there is nothing to hold a transaction for.
    /// A key claimed before is completed in a transaction of its own; without a key no
    /// connection is taken.
    pub async fn answer(&self, reply: Reply) -> ApiResult<HttpResponse> {
        let Some(claim) = &self.claim else { return Ok(reply.into_response()) };
        if !claim.deferred {
            return self.finish(self.begin().await?, Ok::<_, ApiError>(reply)).await;
        }
        let layer = &self.layer;
        let claimed = layer.claims.claim(&layer.pool, claim, Some(&StoredResponse::from(&reply)), layer.config).await?;
        claim.mark_completed();
        match held(claimed) {
            None => Ok(reply.into_response()),
            Some(answer) => Ok(answer?.into_response()),
        }
    }

    /// On success with a key: store the response in the transaction, then commit. A key the
    /// write claims itself ([`Claim::deferred`]) is recorded here; if another request holds
    /// it, the effect rolls back and that request's answer is ours.
    /// On an error the transaction rolls back (dropped) and the guard decides what to keep.
    pub async fn finish(&self, conn: WriteConn, result: Result<Reply, impl Into<ApiError>>) -> ApiResult<HttpResponse> {
        let reply = result.map_err(Into::into)?;
        if let (Some(claim), WriteConn::Tx(mut tx)) = (&self.claim, conn) {
            let response = StoredResponse::from(&reply);
            if claim.deferred {
                if store::record(&mut tx, &[(claim, &response)], self.layer.config).await?.is_empty() {
                    drop(tx);
                    return Ok(held_elsewhere(&self.layer.pool, claim).await?.into_response());
                }
            } else if !store::complete(&mut tx, claim, &response).await? {
                // Our lease ran out and a retry owns the key now: its run counts, not ours.
                return Err(ApiError::IdempotencyKeyInFlight { retry_after_secs: 1 });
            }
            tx.commit().await?;
            claim.mark_completed();
        }
        Ok(reply.into_response())
    }
}
