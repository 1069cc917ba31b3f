//! What the layer needs of the application, registered as its own `web::Data<Layer>` where
//! the app is built: nothing else of the application reaches it.

use super::claim::IdempotencyConfig;
use super::claims::Claims;
use sqlx::PgPool;

#[derive(Clone)]
pub struct Layer {
    /// The worker's pool, the one its handlers write through.
    pub pool: PgPool,
    pub config: IdempotencyConfig,
    pub claims: Claims,
    /// The most a keyed multipart body may hold: the audio limit plus its parts' headers and
    /// boundaries. A keyed JSON body is read against the JSON limit (`extract::JsonConfig`).
    pub max_multipart_bytes: usize,
}
