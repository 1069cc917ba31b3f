//! `--soak MINUTES`: mixed writes for minutes, with upsertd's resident memory watched. Every
//! other request is a `save-analysis-new` request (a new session id), the rest `clicks-keyed`
//! (each with its own random Idempotency-Key), from the same load generator and request
//! builders as the workloads. upsertd's VmRSS is sampled every 2 s; the soak passes when RSS at
//! the end is at most [`LIMIT`] times RSS after the first minute.

use crate::{builder, load, max_rss, server, Ctx, RssSampler};
use anyhow::{bail, Context};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// The mix, taken in turn.
const MIX: [&str; 2] = ["save-analysis-new", "clicks-keyed"];
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// The load runs in slices of this length, one line of progress each.
const SLICE: Duration = Duration::from_secs(10);
/// The baseline: the first sample at or after this time.
const BASELINE_AT: Duration = Duration::from_secs(60);
pub const LIMIT: f64 = 1.2;

#[derive(Serialize)]
struct Summary {
    minutes: u64,
    connections: usize,
    mix: [&'static str; 2],
    requests: u64,
    ok: u64,
    rps: f64,
    errors_4xx: u64,
    errors_5xx: u64,
    transport_errors: u64,
    first_error: Option<String>,
    start_rss_mib: f64,
    first_minute_rss_mib: f64,
    end_rss_mib: f64,
    max_rss_mib: f64,
    ratio: f64,
    limit: f64,
    passed: bool,
    /// (seconds since the start, RSS MiB), every 2 s.
    samples: Vec<(f64, f64)>,
}

pub fn run(ctx: &mut Ctx, minutes: u64, connections: usize) -> anyhow::Result<()> {
    let parts = MIX
        .iter()
        .map(|name| builder(ctx, name, connections)?.with_context(|| format!("{name}: the route is missing")))
        .collect::<anyhow::Result<Vec<load::Builder>>>()?;
    let parts: Arc<[load::Builder]> = parts.into();
    let mixed: load::Builder = Arc::new(move |n| {
        let kinds = parts.len() as u64;
        parts[(n % kinds) as usize](n / kinds)
    });
    eprintln!(
        "soak: {minutes} min of {} in turn at {connections} connections; upsertd RSS every {} s",
        MIX.join(" and "),
        SAMPLE_EVERY.as_secs()
    );
    let total_time = Duration::from_secs(minutes * 60);
    let mut total = load::Outcome::default();
    let sampler = RssSampler::start(ctx.server_pid, SAMPLE_EVERY);
    for slice in 0u64.. {
        let left = total_time.saturating_sub(total.elapsed);
        if left.is_zero() {
            break;
        }
        let mut outcome = load::run(ctx.addr, load::turn(&mixed, slice), connections, left.min(SLICE));
        let (p50, p99) = load::percentiles(&mut outcome.latencies_us);
        outcome.latencies_us = Vec::new();
        eprintln!(
            "soak: {:>4.0} s {:>7.0} req/s  p50 {p50:>6.2} ms  p99 {p99:>7.2} ms  4xx {} 5xx {} net {}  upsertd RSS {:.1} MiB",
            (total.elapsed + outcome.elapsed).as_secs_f64(),
            outcome.completed() as f64 / outcome.elapsed.as_secs_f64(),
            outcome.client_errors + outcome.route_missing,
            outcome.server_errors,
            outcome.transport_errors,
            server::rss_mib(ctx.server_pid).0
        );
        total.merge(outcome);
    }
    let samples = sampler.finish();
    let rss_at = |at: Duration| samples.iter().find(|s| s.0 >= at).or(samples.last()).map_or(0.0, |s| s.1);
    let (first_minute, end) = (rss_at(BASELINE_AT), samples.last().map_or(0.0, |s| s.1));
    let ratio = end / first_minute.max(f64::MIN_POSITIVE);
    let summary = Summary {
        minutes,
        connections,
        mix: MIX,
        requests: total.completed(),
        ok: total.ok,
        rps: total.completed() as f64 / total.elapsed.as_secs_f64(),
        errors_4xx: total.client_errors + total.route_missing,
        errors_5xx: total.server_errors,
        transport_errors: total.transport_errors,
        first_error: total.first_error.clone(),
        start_rss_mib: rss_at(Duration::ZERO),
        first_minute_rss_mib: first_minute,
        end_rss_mib: end,
        max_rss_mib: max_rss(&samples),
        ratio,
        limit: LIMIT,
        passed: ratio <= LIMIT && total.ok > 0,
        samples: samples.iter().map(|&(t, rss)| (t.as_secs_f64(), rss)).collect(),
    };
    print(&summary);
    std::fs::write(ctx.out_dir.join("soak.json"), serde_json::to_string_pretty(&summary)?)?;
    if total.ok == 0 {
        bail!("soak FAILED: no request succeeded");
    }
    if !summary.passed {
        bail!(
            "soak FAILED: upsertd's RSS at the end, {end:.1} MiB, is {ratio:.2}x its {first_minute:.1} MiB after the \
             first minute (limit {LIMIT}x)"
        );
    }
    Ok(())
}

fn print(s: &Summary) {
    println!(
        "soak: {} min, {} connections, {}: {} requests ({:.0} req/s), {} ok, errors 4xx {} 5xx {} net {}{}",
        s.minutes,
        s.connections,
        s.mix.join(" + "),
        s.requests,
        s.rps,
        s.ok,
        s.errors_4xx,
        s.errors_5xx,
        s.transport_errors,
        s.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
    );
    println!(
        "soak: upsertd RSS at the start {:.1} MiB, after the first minute {:.1} MiB, at the end {:.1} MiB, max {:.1} MiB",
        s.start_rss_mib, s.first_minute_rss_mib, s.end_rss_mib, s.max_rss_mib
    );
    println!(
        "soak: end / first minute = {:.3} (limit {}): {}",
        s.ratio,
        s.limit,
        if s.passed { "PASSED" } else { "FAILED" }
    );
}
