//! How every POST under /api writes: [`Writer::begin`] hands the handler a connection,
//! the handler runs its store function on it, and [`Writer::finish`] turns the result into
//! the response.
//!
//! Funnelling every write through this one pair is what lets `Idempotency-Key` (API.md §2)
//! store a response in the same transaction as the effect it describes.

use crate::error::{ApiError, ApiResult};
use crate::reply::Reply;
use crate::startup::AppState;
use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::future::{ready, Ready};
use std::ops::{Deref, DerefMut};

pub struct Writer {
    pool: PgPool,
}

impl FromRequest for Writer {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().expect("AppState is registered");
        ready(Ok(Self { pool: state.pool.clone() }))
    }
}

/// The connection a write runs on: a plain pooled connection (each statement commits on its
/// own, one round trip) or a transaction that an idempotency record must join.
pub enum WriteConn {
    Plain(PoolConnection<Postgres>),
    Tx(Transaction<'static, Postgres>),
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
    pub async fn begin(&self) -> ApiResult<WriteConn> {
        Ok(WriteConn::Plain(self.pool.acquire().await?))
    }

    pub async fn finish(&self, conn: WriteConn, result: ApiResult<Reply>) -> ApiResult<HttpResponse> {
        let reply = result?;
        if let WriteConn::Tx(tx) = conn {
            tx.commit().await?;
        }
        Ok(reply.into_response())
    }
}
