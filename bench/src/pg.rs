//! The database side: setup SQL, pgbench runs (the ceiling) and the legacy two-statement
//! pattern (SELECT, then INSERT when missing) from a plain PostgreSQL client.

use crate::load::{children_cpu, thread_cpu};
use anyhow::{bail, Context};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// Runs statements on one connection (setup and pre-fill); returns the first column of the
/// last statement's first row, if any.
pub fn execute(conninfo: &str, statements: &[String]) -> anyhow::Result<Option<String>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await.context("connect")?;
        let driver = tokio::spawn(connection);
        let mut last = None;
        for sql in statements {
            let rows = client.simple_query(sql).await.with_context(|| format!("running {sql}"))?;
            last = rows.into_iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                _ => None,
            });
        }
        drop(client);
        let _ = driver.await;
        Ok(last)
    })
}

#[derive(Debug, Default, Clone)]
pub struct PgbenchResult {
    pub transactions: u64,
    pub failed: u64,
    pub tps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu: Duration,
    pub elapsed: Duration,
    pub aborted: Option<String>,
}

/// `pgbench -n -M prepared -c C -j 1 -T D -f script` with a per-transaction log for the
/// percentiles. `-j 1`: one client thread, like the HTTP load generator.
pub fn pgbench(
    conninfo: &str,
    script: &Path,
    clients: usize,
    seconds: u64,
    vars: &[(&str, String)],
    log_dir: &Path,
) -> anyhow::Result<PgbenchResult> {
    let _ = std::fs::remove_dir_all(log_dir);
    std::fs::create_dir_all(log_dir)?;
    let mut command = Command::new("pgbench");
    command
        .args(["-n", "-M", "prepared", "-j", "1"])
        .arg(format!("-c{clients}"))
        .arg(format!("-T{seconds}"))
        .arg("-f")
        .arg(script)
        .arg("--log")
        .arg(format!("--log-prefix={}/pgb", log_dir.display()));
    for (name, value) in vars {
        command.arg("-D").arg(format!("{name}={value}"));
    }
    command.arg(conninfo);
    let cpu_before = children_cpu();
    let start = Instant::now();
    let output = command.output().context("could not run pgbench (is it installed? /usr/bin/pgbench)")?;
    let elapsed = start.elapsed();
    let cpu = children_cpu().saturating_sub(cpu_before);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let number_after = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    let tps = number_after("tps =");
    let Some(tps) = tps else {
        bail!("pgbench printed no tps ({}): {}", output.status, stderr.lines().last().unwrap_or(""));
    };
    let mut result = PgbenchResult {
        transactions: number_after("number of transactions actually processed:").unwrap_or(0.0) as u64,
        failed: number_after("number of failed transactions:").unwrap_or(0.0) as u64,
        tps,
        cpu,
        elapsed,
        ..Default::default()
    };
    if !output.status.success() {
        result.aborted =
            Some(stderr.lines().find(|l| l.contains("ERROR") || l.contains("abort")).unwrap_or("aborted").to_string());
    }
    // Log lines: client_id transaction_no time_us script_no epoch epoch_us.
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(log_dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        latencies.extend(text.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<u32>().ok()));
    }
    (result.p50_ms, result.p99_ms) = crate::load::percentiles(&mut latencies);
    let _ = std::fs::remove_dir_all(log_dir);
    Ok(result)
}

/// Requests per new session id in the legacy storm.
pub const STORM: u64 = 4;

#[derive(Debug, Default, Clone)]
pub struct LegacyResult {
    pub ok: u64,
    pub unique_violations: u64,
    pub other_errors: u64,
    pub latencies_us: Vec<u32>,
    pub elapsed: Duration,
    pub cpu: Duration,
}

/// The legacy stack's save: `SELECT id ... WHERE session_id = $1`, then `INSERT` when nothing
/// was found (else `UPDATE`), two statements in two autocommit transactions, as a
/// `findOne` + `save()` ODM does. Keys: a retry storm, every new session id saved by `STORM`
/// requests back to back (in flight together from different connections), so concurrent
/// clients race on the insert and the losers fail with SQLSTATE 23505. (On 100 fixed hot ids
/// handed out round-robin the race only happens on the first 100 requests of a run.)
pub fn legacy(conninfo: &str, prefix: String, connections: usize, duration: Duration) -> anyhow::Result<LegacyResult> {
    let conninfo = conninfo.to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let cpu_before = thread_cpu();
        let mut result = runtime.block_on(legacy_drive(conninfo, prefix, connections, duration))?;
        result.cpu = thread_cpu().saturating_sub(cpu_before);
        Ok(result)
    })
    .join()
    .expect("legacy client thread panicked")
}

async fn legacy_drive(
    conninfo: String,
    prefix: String,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<LegacyResult> {
    let mut clients = Vec::new();
    for _ in 0..connections {
        let (client, connection) = tokio_postgres::connect(&conninfo, NoTls).await?;
        tokio::spawn(connection);
        clients.push(client);
    }
    let counter = Arc::new(AtomicU64::new(0));
    let prefix = Arc::new(prefix);
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let (counter, prefix) = (counter.clone(), prefix.clone());
            tokio::spawn(async move {
                let select = client.prepare("SELECT id FROM conversations WHERE session_id = $1").await?;
                let insert = client
                    .prepare(
                        "INSERT INTO conversations (id, session_id, analysis) VALUES (gen_random_uuid(), $1, ($2::text)::jsonb)",
                    )
                    .await?;
                let update = client
                    .prepare(
                        "UPDATE conversations SET analysis = ($2::text)::jsonb, version = version + 1, updated_at = now() WHERE id = $1",
                    )
                    .await?;
                let mut out = LegacyResult { latencies_us: Vec::with_capacity(65_536), ..Default::default() };
                while Instant::now() < deadline {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let session_id = format!("{prefix}-{}", n / STORM);
                    let analysis = format!("{{\"score\": {}, \"n\": {n}}}", n % 10);
                    let t0 = Instant::now();
                    let result = async {
                        match client.query_opt(&select, &[&session_id]).await? {
                            None => client.execute(&insert, &[&session_id, &analysis]).await,
                            Some(row) => client.execute(&update, &[&row.get::<_, uuid::Uuid>(0), &analysis]).await,
                        }
                    }
                    .await;
                    out.latencies_us.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    match result {
                        Ok(_) => out.ok += 1,
                        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => out.unique_violations += 1,
                        Err(_) => out.other_errors += 1,
                    }
                }
                Ok::<_, tokio_postgres::Error>(out)
            })
        })
        .collect();
    let mut total = LegacyResult::default();
    for task in tasks {
        let part = task.await??;
        total.ok += part.ok;
        total.unique_violations += part.unique_violations;
        total.other_errors += part.other_errors;
        total.latencies_us.extend(part.latencies_us);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}
