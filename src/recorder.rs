//! Metric names and the recorder: what the request path counts. A leaf: it imports nothing of
//! the crate, so every floor can count. `GET /metrics` renders them (`ops::metrics`).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

pub const REQUESTS: &str = "upsertd_http_requests_total";
pub const LATENCY: &str = "upsertd_http_request_duration_seconds";
pub const UPSERTS: &str = "upsertd_upserts_total";
pub const REPLAYS: &str = "upsertd_idempotent_replays_total";
pub const POOL_WAITING: &str = "upsertd_db_pool_waiting";

/// How often the recorder folds the histogram samples recorded since into their buckets.
/// Until then each sample is kept, so without this upkeep memory grows with every request
/// while nobody scrapes `/metrics` (a render does the same folding).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process-wide recorder, installed on first use (a process may build several apps),
/// with a thread that keeps its memory flat whether or not anyone scrapes it.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(LATENCY.into()),
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            )
            .expect("the bucket list is not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        let upkept = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkept.run_upkeep();
            })
            .expect("a thread can be started at startup");
        handle
    })
}

pub fn upsert(resource: &'static str, outcome: &'static str) {
    metrics::counter!(UPSERTS, "resource" => resource, "outcome" => outcome).increment(1);
}

pub fn replayed() {
    metrics::counter!(REPLAYS).increment(1);
}
