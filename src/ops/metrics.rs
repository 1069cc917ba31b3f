//! `GET /metrics`: the Prometheus text of the recorder in `crate::recorder`, with every
//! worker's pool gauges (label `worker`) read at that moment.

use crate::recorder::handle;
use crate::state::WorkerPools;
use actix_web::{web, HttpResponse};

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"))
)]
pub async fn render(pools: web::Data<WorkerPools>) -> HttpResponse {
    for (worker, pool) in pools.all() {
        let worker = worker.to_string();
        metrics::gauge!("upsertd_db_pool_connections", "worker" => worker.clone()).set(f64::from(pool.size()));
        metrics::gauge!("upsertd_db_pool_idle_connections", "worker" => worker.clone()).set(pool.num_idle() as f64);
        let max = f64::from(pool.options().get_max_connections());
        metrics::gauge!("upsertd_db_pool_max_connections", "worker" => worker).set(max);
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(handle().render())
}
