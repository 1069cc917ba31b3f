//! The table (stdout and RESULTS.md), CSV, JSON, the targets and the chart.

use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// One measured point: a workload on one system at one connection count.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Point {
    pub workload: String,
    /// upsertd (HTTP), pgbench (the same SQL straight to the database) or legacy.
    pub system: String,
    pub connections: usize,
    /// "ok", "n/a (route missing)" or "failed: ...".
    pub status: String,
    pub requests: u64,
    pub ok: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors_4xx: u64,
    /// HTTP 5xx; for pgbench its failed transactions; for legacy every failed save.
    pub errors_5xx: u64,
    pub transport_errors: u64,
    pub unique_violations: u64,
    /// CPU used by the client (load generator thread, pgbench, legacy client), % of one core.
    pub client_cpu_pct: f64,
    /// Whole machine busy, % of all cores.
    pub machine_cpu_pct: f64,
    /// upsertd's CPU time (user + system) per request, in µs (upsertd points only).
    pub server_cpu_us: f64,
    /// CPU time of every PostgreSQL process on this machine per request (per transaction for
    /// pgbench), in µs.
    pub postgres_cpu_us: f64,
    /// Highest upsertd RSS sampled during the point (upsertd points only).
    pub server_rss_mib: f64,
    /// upsertd's VmHWM after the point.
    pub server_peak_rss_mib: f64,
    pub first_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Meta {
    pub date: String,
    pub command: String,
    pub duration_s: u64,
    pub nproc: usize,
    pub cpu_model: String,
    pub postgres: String,
    pub commit: String,
    pub server_peak_rss_mib: f64,
}

impl Meta {
    pub fn collect(command: &str, duration_s: u64, server_peak_rss_mib: f64, repo: &Path) -> Self {
        let run = |program: &str, args: &[&str]| {
            std::process::Command::new(program)
                .args(args)
                .current_dir(repo)
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        Self {
            date: run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            command: command.to_string(),
            duration_s,
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            postgres: run("pgbench", &["--version"]),
            commit: run("git", &["rev-parse", "--short", "HEAD"]),
            server_peak_rss_mib,
        }
    }
}

pub fn progress(p: &Point) {
    if p.status != "ok" {
        eprintln!("bench: {:<18} {:<8} c={:<3} {}", p.workload, p.system, p.connections, p.status);
        return;
    }
    eprintln!(
        "bench: {:<18} {:<8} c={:<3} {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  4xx {} 5xx {} net {}{}  client CPU {:.0}%  machine {:.0}%{}{}",
        p.workload,
        p.system,
        p.connections,
        p.rps,
        p.p50_ms,
        p.p99_ms,
        p.errors_4xx,
        p.errors_5xx,
        p.transport_errors,
        if p.system == "legacy" { format!(" (23505: {})", p.unique_violations) } else { String::new() },
        p.client_cpu_pct,
        p.machine_cpu_pct,
        match p.system.as_str() {
            "upsertd" => format!("  µs/req upsertd {:.0} PG {:.0}", p.server_cpu_us, p.postgres_cpu_us),
            _ => format!("  PG µs/tx {:.0}", p.postgres_cpu_us),
        },
        p.first_error.as_deref().map(|e| format!("  first error: {e}")).unwrap_or_default()
    );
}

fn find<'a>(points: &'a [Point], workload: &str, system: &str, connections: usize) -> Option<&'a Point> {
    points.iter().find(|p| p.workload == workload && p.system == system && p.connections == connections)
}

fn ok<'a>(points: &'a [Point], workload: &str, system: &str, connections: usize) -> Option<&'a Point> {
    find(points, workload, system, connections).filter(|p| p.status == "ok")
}

const HEADER: [&str; 16] = [
    "workload",
    "conns",
    "upsertd req/s",
    "p50 ms",
    "p99 ms",
    "errors 4xx/5xx/net",
    "client CPU",
    "RSS MiB",
    "upsertd µs/req",
    "PG µs/req",
    "pgbench tps",
    "p50 ms",
    "p99 ms",
    "ratio",
    "pgbench CPU",
    "PG µs/tx",
];

/// The column after which the pgbench half of the table starts.
const UPSERTD_COLUMNS: usize = 10;

fn rows(points: &[Point]) -> Vec<Vec<String>> {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for p in points {
        let key = (p.workload.clone(), p.connections);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let mut rows = Vec::new();
    for (workload, c) in keys {
        let main = find(points, &workload, "upsertd", c).or_else(|| find(points, &workload, "legacy", c));
        let pgb = find(points, &workload, "pgbench", c);
        let mut row = vec![workload.clone(), c.to_string()];
        match main {
            Some(p) if p.status == "ok" => {
                let errors = if p.system == "legacy" {
                    format!("23505: {}, other: {}", p.unique_violations, p.errors_5xx - p.unique_violations)
                } else {
                    format!("{}/{}/{}", p.errors_4xx, p.errors_5xx, p.transport_errors)
                };
                let (rss, own) = if p.system == "upsertd" {
                    (format!("{:.1}", p.server_rss_mib), format!("{:.0}", p.server_cpu_us))
                } else {
                    ("-".into(), "-".into())
                };
                row.extend([
                    format!("{:.0}", p.rps),
                    format!("{:.2}", p.p50_ms),
                    format!("{:.2}", p.p99_ms),
                    errors,
                    format!("{:.0}%", p.client_cpu_pct),
                    rss,
                    own,
                    format!("{:.0}", p.postgres_cpu_us),
                ]);
            }
            Some(p) => row.push(short(&p.status)),
            None => row.push("-".into()),
        }
        row.resize(UPSERTD_COLUMNS, String::new());
        match pgb {
            Some(q) if q.status == "ok" => {
                let ratio = match main {
                    Some(p) if p.status == "ok" && q.rps > 0.0 => format!("{:.2}", p.rps / q.rps),
                    _ => "-".into(),
                };
                row.extend([
                    format!("{:.0}", q.rps),
                    format!("{:.2}", q.p50_ms),
                    format!("{:.2}", q.p99_ms),
                    ratio,
                    format!("{:.0}%", q.client_cpu_pct),
                    format!("{:.0}", q.postgres_cpu_us),
                ]);
            }
            Some(q) => row.push(short(&q.status)),
            None => row.push("-".into()),
        }
        row.resize(HEADER.len(), String::new());
        rows.push(row);
    }
    rows
}

fn short(status: &str) -> String {
    if status.chars().count() > 40 {
        format!("{}...", status.chars().take(40).collect::<String>())
    } else {
        status.to_string()
    }
}

fn text_table(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = HEADER.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        for (i, cell) in cells.iter().enumerate() {
            if i < 2 {
                let _ = write!(out, "{:<w$}  ", cell, w = widths[i]);
            } else {
                let _ = write!(out, "{:>w$}  ", cell, w = widths[i]);
            }
            if i == UPSERTD_COLUMNS - 1 {
                out.push_str("| ");
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    line(HEADER.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn markdown_table(rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n|{}\n", HEADER.join(" | "), "---|".repeat(HEADER.len()));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

/// A target's verdict.
fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// The targets, each with what was measured and whether it was met.
pub fn targets(points: &[Point], peak_rss: f64) -> Vec<(String, String, &'static str)> {
    let top = points.iter().map(|p| p.connections).max().unwrap_or(0);
    let mut out = Vec::new();
    for w in ["save-analysis-new", "save-analysis-hot", "chats"] {
        let name = format!("{w} at {top} conns: >= 0.7x pgbench, p99 <= 25 ms");
        match (ok(points, w, "upsertd", top), ok(points, w, "pgbench", top)) {
            (Some(u), Some(p)) if p.rps > 0.0 => {
                let ratio = u.rps / p.rps;
                out.push((
                    name,
                    format!("{:.2}x ({:.0} vs {:.0}/s), p99 {:.1} ms", ratio, u.rps, p.rps, u.p99_ms),
                    verdict(ratio >= 0.7 && u.p99_ms <= 25.0),
                ));
            }
            _ => out.push((name, "not measured".into(), "n/a")),
        }
    }
    let cs: Vec<usize> = {
        let mut v: Vec<usize> = points.iter().map(|p| p.connections).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    for c in cs {
        let name = format!("append to 100k-message conversation at {c} conns: p50 <= 1.2x empty");
        match (ok(points, "append-big", "upsertd", c), ok(points, "append-empty", "upsertd", c)) {
            (Some(b), Some(e)) if e.p50_ms > 0.0 => out.push((
                name,
                format!(
                    "{:.2}x (p50 {:.2} vs {:.2} ms; p99 {:.2} vs {:.2} ms)",
                    b.p50_ms / e.p50_ms,
                    b.p50_ms,
                    e.p50_ms,
                    b.p99_ms,
                    e.p99_ms
                ),
                verdict(b.p50_ms <= 1.2 * e.p50_ms),
            )),
            _ => out.push((name, "not measured".into(), "n/a")),
        }
    }
    ratio_row(
        &mut out,
        format!("keyed clicks at {top} conns >= 0.75x unkeyed (issue 13)"),
        ok(points, "clicks-keyed", "upsertd", top),
        ok(points, "clicks", "upsertd", top),
        0.75,
    );
    ratio_row(
        &mut out,
        format!("hot counter at {top} conns >= 8x pgbench one-row UPDATE (issue 13)"),
        ok(points, "clicks", "upsertd", top),
        ok(points, "clicks", "pgbench", top),
        8.0,
    );
    per_request_targets(points, top, &mut out);
    for w in ["save-analysis-new", "save-analysis-hot"] {
        let name = format!("{w} at {top} conns >= 5,500 req/s (10x legacy ~550) with 0 errors");
        match ok(points, w, "upsertd", top) {
            Some(u) => {
                let errors = u.errors_4xx + u.errors_5xx + u.transport_errors;
                out.push((name, format!("{:.0}/s, {errors} errors", u.rps), verdict(u.rps >= 5500.0 && errors == 0)))
            }
            None => out.push((name, "not measured".into(), "n/a")),
        }
    }
    let measured: Vec<&Point> = points.iter().filter(|p| p.system == "upsertd" && p.status == "ok").collect();
    let fives: u64 = measured.iter().map(|p| p.errors_5xx).sum();
    out.push((
        "zero 5xx in every upsertd workload".into(),
        format!("{fives} 5xx over {} points", measured.len()),
        if measured.is_empty() { "n/a" } else { verdict(fives == 0) },
    ));
    let rss_top = points
        .iter()
        .filter(|p| p.system == "upsertd" && p.connections == top)
        .map(|p| p.server_rss_mib)
        .fold(0.0, f64::max);
    out.push((
        format!("server RSS < 150 MiB at {top} conns"),
        format!("{rss_top:.1} MiB sampled at {top} conns; peak (VmHWM) over the run {peak_rss:.1} MiB"),
        verdict(rss_top < 150.0 && peak_rss < 150.0),
    ));
    out
}

/// The workloads that write by upsert or counter, for the latency bound of issue 17. The appends
/// are not among them: every append to one conversation waits for the one before it, in pgbench
/// too, so their p99 at many connections is the queue's length.
const UPSERTS: [&str; 8] = [
    "save-analysis-new",
    "save-analysis-hot",
    "save-analysis-keyed",
    "chats",
    "participations",
    "conversations",
    "clicks",
    "clicks-keyed",
];

/// Issue 17's targets: what a request costs beyond PostgreSQL's own work, at one connection
/// (ratios to pgbench running the same statement, and p50 against pgbench's plus the `/healthz`
/// round trip) and at `top`.
fn per_request_targets(points: &[Point], top: usize, out: &mut Vec<(String, String, &'static str)>) {
    for (workload, what, at_least) in [
        ("save-analysis-new", "pgbench's upsert", 0.6),
        ("save-analysis-hot", "pgbench's upsert", 0.6),
        ("clicks-keyed", "pgbench's one-row UPDATE", 0.5),
        ("chats", "pgbench's create-or-get", 0.75),
    ] {
        ratio_target(points, out, workload, 1, what, at_least);
    }
    let name = "p50 at 1 conn <= pgbench's p50 + /healthz p50 + 0.25 ms, every workload with pgbench (issue 17)";
    let healthz = ok(points, "healthz", "upsertd", 1);
    let pairs: Vec<(&Point, &Point)> = points
        .iter()
        .filter(|p| p.system == "pgbench" && p.connections == 1 && p.status == "ok")
        .filter_map(|p| Some((ok(points, &p.workload, "upsertd", 1)?, p)))
        .collect();
    match healthz {
        Some(h) if !pairs.is_empty() => {
            let over: Vec<String> = pairs
                .iter()
                .filter(|(u, p)| u.p50_ms > p.p50_ms + h.p50_ms + 0.25)
                .map(|(u, p)| format!("{} {:.2} > {:.2} ms", u.workload, u.p50_ms, p.p50_ms + h.p50_ms + 0.25))
                .collect();
            let measured = match over.is_empty() {
                true => format!("all {} within (/healthz p50 {:.2} ms)", pairs.len(), h.p50_ms),
                false => format!(
                    "{} of {} within (/healthz p50 {:.2} ms); over: {}",
                    pairs.len() - over.len(),
                    pairs.len(),
                    h.p50_ms,
                    over.join(", ")
                ),
            };
            out.push((name.into(), measured, verdict(over.is_empty())));
        }
        _ => out.push((name.into(), "not measured (needs healthz and pgbench at 1 conn)".into(), "n/a")),
    }
    ratio_target(points, out, "chats", top, "pgbench's create-or-get", 1.0);
    let name = format!("p99 <= 10 ms at {top} conns on every upsert workload (issue 17)");
    let measured: Vec<&Point> = UPSERTS.iter().filter_map(|w| ok(points, w, "upsertd", top)).collect();
    let over: Vec<String> =
        measured.iter().filter(|p| p.p99_ms > 10.0).map(|p| format!("{} {:.1} ms", p.workload, p.p99_ms)).collect();
    let text = match (measured.len(), over.is_empty()) {
        (0, _) => "not measured".to_string(),
        (n, true) => {
            format!("all {n} within (highest {:.1} ms)", measured.iter().map(|p| p.p99_ms).fold(0.0, f64::max))
        }
        (n, false) => format!("{} of {n} within; over: {}", n - over.len(), over.join(", ")),
    };
    out.push((name, text, if measured.is_empty() { "n/a" } else { verdict(over.is_empty()) }));
}

/// `workload` at `connections` against pgbench running its statement: at least `at_least`x.
fn ratio_target(
    points: &[Point],
    out: &mut Vec<(String, String, &'static str)>,
    workload: &str,
    connections: usize,
    what: &str,
    at_least: f64,
) {
    ratio_row(
        out,
        format!("{workload} at {connections} conn(s) >= {at_least}x {what} (issue 17)"),
        ok(points, workload, "upsertd", connections),
        ok(points, workload, "pgbench", connections),
        at_least,
    );
}

/// A target that `a` reaches at least `at_least` times `b`'s throughput.
fn ratio_row(
    out: &mut Vec<(String, String, &'static str)>,
    name: String,
    a: Option<&Point>,
    b: Option<&Point>,
    at_least: f64,
) {
    match (a, b) {
        (Some(a), Some(b)) if b.rps > 0.0 => out.push((
            name,
            format!("{:.2}x ({:.0} vs {:.0}/s)", a.rps / b.rps, a.rps, b.rps),
            verdict(a.rps >= at_least * b.rps),
        )),
        _ => out.push((name, "not measured".into(), "n/a")),
    }
}

pub fn write_all(points: &[Point], meta: &Meta, out_dir: &Path) -> anyhow::Result<()> {
    let rows = rows(points);
    let targets = targets(points, meta.server_peak_rss_mib);
    let healthz_note = healthz_note(points);

    let mut stdout = String::new();
    let _ = writeln!(stdout, "\n{}", text_table(&rows));
    let _ = writeln!(stdout, "upsertd peak RSS (VmHWM): {:.1} MiB", meta.server_peak_rss_mib);
    if let Some(note) = &healthz_note {
        let _ = writeln!(stdout, "{note}");
    }
    let _ = writeln!(stdout, "\ntargets:");
    for (name, measured, verdict) in &targets {
        let _ = writeln!(stdout, "  [{verdict:>6}] {name}: {measured}");
    }
    print!("{stdout}");

    let mut csv = String::from(
        "workload,system,connections,status,requests,ok,rps,p50_ms,p99_ms,errors_4xx,errors_5xx,transport_errors,unique_violations,client_cpu_pct,machine_cpu_pct,server_rss_mib,server_peak_rss_mib,server_cpu_us,postgres_cpu_us\n",
    );
    for p in points {
        let _ = writeln!(
            csv,
            "{},{},{},\"{}\",{},{},{:.1},{:.3},{:.3},{},{},{},{},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1}",
            p.workload,
            p.system,
            p.connections,
            p.status.replace('"', "'"),
            p.requests,
            p.ok,
            p.rps,
            p.p50_ms,
            p.p99_ms,
            p.errors_4xx,
            p.errors_5xx,
            p.transport_errors,
            p.unique_violations,
            p.client_cpu_pct,
            p.machine_cpu_pct,
            p.server_rss_mib,
            p.server_peak_rss_mib,
            p.server_cpu_us,
            p.postgres_cpu_us
        );
    }
    std::fs::write(out_dir.join("results.csv"), csv)?;
    let json = serde_json::json!({
        "meta": meta,
        "points": points,
        "targets": targets.iter().map(|(n, m, v)| serde_json::json!({"target": n, "measured": m, "verdict": v})).collect::<Vec<_>>(),
    });
    std::fs::write(out_dir.join("results.json"), serde_json::to_string_pretty(&json)?)?;

    let chart = match crate::report::chart(points, &out_dir.join("chart.png")) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("bench: no chart: {e:#}");
            false
        }
    };

    let mut md = String::new();
    let _ = writeln!(md, "# upsertd load benchmark: latest results\n");
    let _ = writeln!(
        md,
        "{} on {} cores ({}), {}, commit `{}`, {} s per point. Command: `{}`.\n",
        meta.date, meta.nproc, meta.cpu_model, meta.postgres, meta.commit, meta.duration_s, meta.command
    );
    let _ = writeln!(
        md,
        "upsertd: HTTP/1.1 keep-alive, closed loop; pgbench: the same SQL straight to the same cluster \
         (`-M prepared -j 1`); ratio = upsertd req/s / pgbench tps. Errors are 4xx/5xx/transport; \
         for `legacy`, SQLSTATE 23505 (unique violation) failures. Client CPU is the load \
         generator's (or pgbench's) CPU time as % of one core. RSS is upsertd's own (not PostgreSQL's), \
         highest sample during the point. µs/req (µs/tx for pgbench): CPU time per request of \
         upsertd's process and of every PostgreSQL process on the machine, from /proc.\n"
    );
    if chart {
        let _ = writeln!(md, "![throughput vs connections](chart.png)\n");
    }
    md.push_str(&markdown_table(&rows));
    let _ = writeln!(md, "\nupsertd peak RSS (VmHWM) over the run: {:.1} MiB.", meta.server_peak_rss_mib);
    if let Some(note) = &healthz_note {
        let _ = writeln!(md, "\n{note}");
    }
    let _ = writeln!(md, "\n## Targets (goals, not CI failures)\n\n| target | measured | verdict |\n|---|---|---|");
    for (name, measured, verdict) in &targets {
        let _ = writeln!(md, "| {name} | {measured} | {verdict} |");
    }
    std::fs::write(out_dir.join("RESULTS.md"), md)?;
    Ok(())
}

/// The bottleneck check: the same client against /healthz (no database) vs the busiest
/// database workload.
fn healthz_note(points: &[Point]) -> Option<String> {
    let best = points
        .iter()
        .filter(|p| p.system == "upsertd" && p.workload == "healthz" && p.status == "ok")
        .max_by(|a, b| a.rps.total_cmp(&b.rps))?;
    let busiest = points
        .iter()
        .filter(|p| p.system == "upsertd" && p.workload != "healthz" && p.status == "ok")
        .max_by(|a, b| a.rps.total_cmp(&b.rps));
    let cpu = points
        .iter()
        .filter(|p| p.system == "upsertd" && p.workload != "healthz" && p.status == "ok")
        .map(|p| p.client_cpu_pct)
        .fold(0.0, f64::max);
    Some(match busiest {
        Some(b) => format!(
            "Load generator check: the same client reaches {:.0} req/s on /healthz ({} conns, client CPU {:.0}%), \
             {:.1}x the busiest database workload ({} at {} conns, {:.0} req/s); the client never used more than \
             {:.0}% of one core in a database workload.",
            best.rps,
            best.connections,
            best.client_cpu_pct,
            best.rps / b.rps.max(1.0),
            b.workload,
            b.connections,
            b.rps,
            cpu
        ),
        None => format!("Load generator check: {:.0} req/s on /healthz at {} conns.", best.rps, best.connections),
    })
}

/// Throughput vs connections, one panel per workload, upsertd beside pgbench (and the legacy
/// pattern in the hot-key panel).
pub fn chart(points: &[Point], path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let font = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok())
    .ok_or_else(|| anyhow::anyhow!("no TrueType font found (apt install fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| anyhow::anyhow!("invalid font"))?;

    let mut workloads: Vec<&str> = Vec::new();
    for p in points {
        if !workloads.contains(&p.workload.as_str()) {
            workloads.push(&p.workload);
        }
    }
    if workloads.is_empty() {
        anyhow::bail!("nothing to draw");
    }
    let cols = workloads.len().min(4);
    let rows = workloads.len().div_ceil(cols);
    let root = BitMapBackend::new(path, (420 * cols as u32, 340 * rows as u32 + 50)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(50);
    title
        .titled("upsertd (HTTP) vs pgbench (same SQL, same cluster): throughput vs connections", ("sans-serif", 24))?;
    // Connection counts are evenly spaced categories (1, 8, 32, 64), labelled with their value.
    let mut conns: Vec<usize> = points.iter().map(|p| p.connections).collect();
    conns.sort_unstable();
    conns.dedup();
    let slot = |c: usize| conns.iter().position(|&x| x == c).unwrap_or(0) as f64;
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < conns.len() {
            conns[i as usize].to_string()
        } else {
            String::new()
        }
    };
    let series: [(&str, RGBColor); 3] = [("upsertd", BLUE), ("pgbench", RED), ("legacy", RGBColor(90, 90, 90))];
    for (area, workload) in body.split_evenly((rows, cols)).iter().zip(&workloads) {
        let line = |system: &str| -> Vec<(f64, f64)> {
            let mut v: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.status == "ok" && p.system == system && p.workload == *workload)
                .map(|p| (slot(p.connections), p.rps))
                .collect();
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v
        };
        let ymax = series.iter().flat_map(|(s, _)| line(s)).map(|(_, y)| y).fold(0.0, f64::max).max(1.0) * 1.15;
        let missing = points.iter().any(|p| p.workload == *workload && p.status.starts_with("n/a"));
        let caption = match (*workload, missing) {
            ("legacy", _) => "legacy: SELECT then INSERT (retry storm)".to_string(),
            (w, true) => format!("{w} (upsertd: route missing)"),
            (w, false) => w.to_string(),
        };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(-0.3f64..(conns.len() as f64 - 0.7), 0f64..ymax)?;
        chart
            .configure_mesh()
            .x_desc("connections")
            .y_desc("req/s")
            .x_labels(conns.len())
            .x_label_formatter(&label)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 12))
            .draw()?;
        for (system, color) in series {
            let data = line(system);
            if data.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))?
                .label(system)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            chart.draw_series(data.into_iter().map(|(x, y)| Circle::new((x, y), 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
