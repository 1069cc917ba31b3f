//! `GET /metrics`: the Prometheus text of the recorder in `crate::recorder`, with the pool's
//! gauges read at that moment.

use crate::recorder::handle;
use crate::state::AppState;
use actix_web::{web, HttpResponse};

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"))
)]
pub async fn render(state: web::Data<AppState>) -> HttpResponse {
    let pool = &state.pool;
    metrics::gauge!("upsertd_db_pool_connections").set(f64::from(pool.size()));
    metrics::gauge!("upsertd_db_pool_idle_connections").set(pool.num_idle() as f64);
    metrics::gauge!("upsertd_db_pool_max_connections").set(f64::from(pool.options().get_max_connections()));
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(handle().render())
}
