//! `bench`: load benchmark for upsertd. See bench/README.md.
//!
//! Builds and starts upsertd (release) on its own durable PostgreSQL cluster, drives each
//! workload over HTTP/1.1 keep-alive at several connection counts, runs pgbench against the
//! same cluster with the same SQL (the ceiling) and the legacy SELECT-then-INSERT pattern, and
//! writes a table, CSV, JSON and a chart.

mod cpu;
mod load;
mod pg;
mod report;
mod server;
mod soak;
mod upload;

use anyhow::{bail, Context};
use clap::Parser;
use load::Req;
use report::Point;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "bench", about = "Load benchmark: upsertd over HTTP beside pgbench on the same cluster")]
struct Args {
    /// Run every workload.
    #[arg(long)]
    all: bool,
    /// Run only these workloads (repeatable or comma-separated); see --list.
    #[arg(long, value_delimiter = ',')]
    workload: Vec<String>,
    /// List the workloads and exit.
    #[arg(long)]
    list: bool,
    /// Seconds per measured point (workload x system x connection count).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Connection counts (HTTP connections, pgbench clients).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    connections: Vec<usize>,
    /// Use this PostgreSQL instead of upsertd's embedded cluster (passed to upsertd and pgbench).
    #[arg(long)]
    database_url: Option<String>,
    /// Skip `cargo build --release` and use this upsertd binary.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Skip the pgbench and legacy runs (upsertd only).
    #[arg(long)]
    no_pgbench: bool,
    /// Where results go (default: bench/out).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not copy the chart and table to bench/chart.png and bench/RESULTS.md.
    #[arg(long)]
    no_publish: bool,
    /// Instead of the workloads: MINUTES (at least 2) of mixed writes, new-id save-analysis and
    /// keyed clicks, at the largest --connections count, with upsertd's RSS sampled every 2 s;
    /// fails when RSS at the end is above 1.2x RSS after the first minute. No pgbench.
    #[arg(long, value_name = "MINUTES", conflicts_with_all = ["all", "workload", "list"])]
    soak: Option<u64>,
}

pub struct Workload {
    pub name: &'static str,
    pub about: &'static str,
    /// pgbench script under bench/pgbench with the same SQL (the ceiling).
    pub pgbench: Option<&'static str>,
}

pub const WORKLOADS: &[Workload] = &[
    Workload { name: "healthz", about: "GET /healthz: no database; the load generator's own ceiling", pgbench: None },
    Workload {
        name: "save-analysis-new",
        about: "POST /api/save-analysis, a new session id every request (insert path)",
        pgbench: Some("save-analysis-new.sql"),
    },
    Workload {
        name: "save-analysis-hot",
        about: "POST /api/save-analysis on 100 hot session ids, new analysis each time (update path, retry storm)",
        pgbench: Some("save-analysis-hot.sql"),
    },
    Workload {
        name: "save-analysis-keyed",
        about: "POST /api/save-analysis, a new session id and its own Idempotency-Key every request (the keyed path: coalesced, each batch one transaction with the keys' records)",
        pgbench: None,
    },
    Workload {
        name: "legacy",
        about: "the legacy pattern: SELECT, then INSERT if missing (else UPDATE), two autocommit statements from a plain PostgreSQL client, each new session id saved by 4 requests at once (retry storm); counts unique violations",
        pgbench: None,
    },
    Workload {
        name: "chats",
        about: "POST /api/chats create-or-get over 1,000 two-person groups",
        pgbench: Some("chats.sql"),
    },
    Workload {
        name: "chats-keyed",
        about: "the same create-or-get of chats, each request with its own Idempotency-Key (found chat, its key recorded in a transaction)",
        pgbench: None,
    },
    Workload {
        name: "participations",
        about: "POST /api/participations create-or-get over 1,000 (campaign, streamer) pairs",
        pgbench: Some("participations.sql"),
    },
    Workload {
        name: "conversations",
        about: "POST /api/conversations create-or-get over 1,000 session ids",
        pgbench: Some("conversations.sql"),
    },
    Workload {
        name: "clicks",
        about: "POST /api/participations/{id}/clicks {\"type\":\"chat\"} on one hot participation, no Idempotency-Key",
        pgbench: Some("clicks.sql"),
    },
    Workload {
        name: "clicks-keyed",
        about: "the same clicks, each with its own Idempotency-Key",
        pgbench: Some("clicks.sql"),
    },
    Workload {
        name: "append-big",
        about: "POST /api/conversations/{sid}/messages, one message, to a conversation holding 100,000 messages",
        pgbench: Some("append.sql"),
    },
    Workload {
        name: "append-empty",
        about: "the same append to a conversation that is empty when the point starts",
        pgbench: Some("append.sql"),
    },
    Workload {
        name: "upload-audio",
        about: "POST /api/upload-audio, multipart: a new session id and 300 KiB of WAV, different bytes every request (a new stored file)",
        pgbench: None,
    },
];

/// What the run knows once the server is up.
struct Ctx {
    addr: std::net::SocketAddr,
    conninfo: String,
    run: String,
    server_pid: u32,
    duration: Duration,
    bench_dir: PathBuf,
    out_dir: PathBuf,
    /// (upsertd participation id or None when the route is missing, pgbench participation id)
    participation: Option<(Option<String>, String)>,
    big: Option<(String, String)>,
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.list {
        for w in WORKLOADS {
            println!("{:<18} {}", w.name, w.about);
        }
        return Ok(());
    }
    let selected: Vec<&Workload> = if args.all || args.workload.is_empty() {
        WORKLOADS.iter().collect()
    } else {
        let mut v = Vec::new();
        for name in &args.workload {
            let Some(w) = WORKLOADS.iter().find(|w| w.name == name.as_str()) else {
                bail!("unknown workload {name:?}; --list shows them");
            };
            v.push(w);
        }
        v
    };
    if args.duration == 0 || args.connections.is_empty() || args.connections.contains(&0) {
        bail!("--duration and every --connections value must be at least 1");
    }
    if args.soak.is_some_and(|minutes| minutes < 2) {
        bail!("--soak needs at least 2 minutes: it compares the end with the first minute");
    }
    let bench_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let repo = bench_dir.parent().context("bench/ has a parent")?.to_path_buf();
    let out_dir = args.out.clone().unwrap_or_else(|| bench_dir.join("out"));
    std::fs::create_dir_all(&out_dir)?;

    let binary = match &args.server_bin {
        Some(path) => path.clone(),
        None => server::build(&repo)?,
    };
    let server = server::Server::start(&binary, args.database_url.as_deref(), &out_dir)?;
    let shown = server.conninfo.split(" password=").next().unwrap_or_default();
    eprintln!("bench: upsertd pid {} on http://{}; database {shown}", server.pid(), server.addr);
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let mut ctx = Ctx {
        addr: server.addr,
        conninfo: server.conninfo.clone(),
        run: format!("r{stamp}"),
        server_pid: server.pid(),
        duration: Duration::from_secs(args.duration),
        bench_dir: bench_dir.clone(),
        out_dir: out_dir.clone(),
        participation: None,
        big: None,
    };
    if let Some(minutes) = args.soak {
        let connections = args.connections.iter().copied().max().expect("checked above");
        let verdict = soak::run(&mut ctx, minutes, connections);
        warn_unclean(server.stop());
        return verdict;
    }
    let mut points = Vec::new();
    for group in interleaved(&selected) {
        for &connections in &args.connections {
            if group[0].name == "legacy" {
                if !args.no_pgbench {
                    points.push(legacy_point(&ctx, connections));
                }
                continue;
            }
            points.extend(group_points(&mut ctx, &group, connections, !args.no_pgbench));
        }
    }
    let (_, peak_rss) = server::rss_mib(server.pid());
    let stopped = server.stop();
    let meta = report::Meta::collect(&args_line(&args), args.duration, peak_rss, &repo);
    report::write_all(&points, &meta, &out_dir)?;
    if !args.no_publish {
        std::fs::copy(out_dir.join("RESULTS.md"), bench_dir.join("RESULTS.md"))?;
        if out_dir.join("chart.png").exists() {
            std::fs::copy(out_dir.join("chart.png"), bench_dir.join("chart.png"))?;
        }
    }
    warn_unclean(stopped);
    Ok(())
}

fn warn_unclean(stopped: anyhow::Result<()>) {
    if let Err(e) = stopped {
        eprintln!("bench: warning: {e:#}");
    }
}

fn args_line(args: &Args) -> String {
    let mut line = String::from("cargo run --release --manifest-path bench/Cargo.toml --");
    if args.all || args.workload.is_empty() {
        line.push_str(" --all");
    } else {
        line.push_str(&format!(" --workload {}", args.workload.join(",")));
    }
    line.push_str(&format!(
        " --duration {} --connections {}",
        args.duration,
        args.connections.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    ));
    line
}

fn blank(workload: &str, system: &str, connections: usize) -> Point {
    Point {
        workload: workload.to_string(),
        system: system.to_string(),
        connections,
        status: "ok".into(),
        ..Default::default()
    }
}

/// Samples the server's RSS on its own thread, while a point or a soak runs.
struct RssSampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(Duration, f64)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    /// Samples now, every `every`, and once more when finished.
    fn start(pid: u32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            loop {
                let (rss, _) = server::rss_mib(pid);
                v.lock().expect("not poisoned").push((start.elapsed(), rss));
                if s.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::park_timeout(every);
            }
        });
        Self { stop, samples, thread: Some(thread) }
    }

    /// Stops sampling: every sample, (time since the start, RSS in MiB), oldest first.
    fn finish(mut self) -> Vec<(Duration, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        let samples = std::mem::take(&mut *self.samples.lock().expect("not poisoned"));
        samples
    }
}

fn max_rss(samples: &[(Duration, f64)]) -> f64 {
    samples.iter().map(|&(_, rss)| rss).fold(0.0, f64::max)
}

/// Prepares what a workload needs; `Ok(None)` when its route is missing.
fn builder(ctx: &mut Ctx, workload: &str, connections: usize) -> anyhow::Result<Option<load::Builder>> {
    let run = ctx.run.clone();
    Ok(Some(match workload {
        "healthz" => Arc::new(|_| Req::get("/healthz")),
        "save-analysis-new" => Arc::new(move |n| {
            Req::json(
                "/api/save-analysis",
                format!(
                    r#"{{"session_id":"new-{run}-c{connections}-{n}","transcript":"hello world {n}","analysis":{{"score":{},"n":{n}}}}}"#,
                    n % 10
                ),
                None,
            )
        }),
        "save-analysis-keyed" => Arc::new(move |n| {
            Req::json(
                "/api/save-analysis",
                format!(r#"{{"session_id":"key-{run}-c{connections}-{n}","transcript":"hello world {n}"}}"#),
                Some(uuid::Uuid::new_v4().to_string()),
            )
        }),
        "save-analysis-hot" => Arc::new(move |n| {
            Req::json(
                "/api/save-analysis",
                format!(
                    r#"{{"session_id":"hot-{run}-{}","transcript":"hello world {n}","analysis":{{"score":{},"n":{n}}}}}"#,
                    n % 100,
                    n % 10
                ),
                None,
            )
        }),
        "chats" | "chats-keyed" => {
            let keyed = workload == "chats-keyed";
            Arc::new(move |n| {
                let g = n % 1000;
                let body = format!(r#"{{"participants":["b-{run}-{g}","a-{run}-{g}"]}}"#);
                Req::json("/api/chats", body, keyed.then(|| uuid::Uuid::new_v4().to_string()))
            })
        }
        "participations" => Arc::new(move |n| {
            let g = n % 1000;
            Req::json(
                "/api/participations",
                format!(r#"{{"campaign_id":"c-{run}-{g}","streamer_id":"s-{run}"}}"#),
                None,
            )
        }),
        "conversations" => Arc::new(move |n| {
            let g = n % 1000;
            Req::json("/api/conversations", format!(r#"{{"session_id":"cg-{run}-{g}"}}"#), None)
        }),
        "clicks" | "clicks-keyed" => {
            let Some(id) = participation(ctx)?.0 else { return Ok(None) };
            let keyed = workload == "clicks-keyed";
            Arc::new(move |_| {
                Req::json(
                    format!("/api/participations/{id}/clicks"),
                    r#"{"type":"chat"}"#.into(),
                    // A random UUID, as the README tells clients to send: it lands anywhere in
                    // the key index, where a counter-like key would append at one spot. Drawn
                    // from uuid's thread-local generator (`fast-rng`), not a getrandom syscall
                    // each: the load generator shares the machine, and its cost is not upsertd's.
                    keyed.then(|| uuid::Uuid::new_v4().to_string()),
                )
            })
        }
        "append-big" => {
            let sid = big(ctx)?.0;
            Arc::new(move |n| append(&sid, n))
        }
        "append-empty" => {
            let sid = format!("empty-{run}-c{connections}");
            Arc::new(move |n| append(&sid, n))
        }
        "upload-audio" => {
            let form = upload::Form::new();
            Arc::new(move |n| {
                let body = form.body(&format!("up-{run}-c{connections}-{n}"));
                Req::post("/api/upload-audio", upload::CONTENT_TYPE, body, None)
            })
        }
        other => bail!("no HTTP driver for {other}"),
    }))
}

fn append(sid: &str, n: u64) -> Req {
    Req::json(
        format!("/api/conversations/{sid}/messages"),
        format!(r#"{{"messages":[{{"role":"user","text":"message {n}"}}]}}"#),
        None,
    )
}

/// The hot participation: one made over HTTP (None when the route is missing) and one made
/// with SQL for pgbench.
fn participation(ctx: &mut Ctx) -> anyhow::Result<(Option<String>, String)> {
    if let Some(p) = &ctx.participation {
        return Ok(p.clone());
    }
    let run = &ctx.run;
    let (status, body) = load::once(
        ctx.addr,
        Req::json("/api/participations", format!(r#"{{"campaign_id":"bench-{run}","streamer_id":"s1"}}"#), None),
    )?;
    let http_id = match status {
        200 | 201 => {
            let value: serde_json::Value = serde_json::from_str(&body).context("participation body")?;
            Some(value["id"].as_str().context("participation without id")?.to_string())
        }
        404 | 405 => None,
        other => bail!("POST /api/participations answered {other}: {body}"),
    };
    let pg_id = pg::execute(
        &ctx.conninfo,
        &[format!(
            "INSERT INTO participations (id, campaign_id, streamer_id, browser_source_token) \
             VALUES (gen_random_uuid(), 'pgb-{run}', 'pgb-s1', md5(random()::text) || md5(random()::text)) RETURNING id"
        )],
    )?
    .context("no participation id returned")?;
    ctx.participation = Some((http_id, pg_id));
    Ok(ctx.participation.clone().expect("set"))
}

/// The 100,000-message conversations: one for upsertd (created by one append over HTTP) and
/// one for pgbench, both filled with SQL.
fn big(ctx: &mut Ctx) -> anyhow::Result<(String, String)> {
    if let Some(b) = &ctx.big {
        return Ok(b.clone());
    }
    let (http_sid, pg_sid) = (format!("big-{}", ctx.run), format!("pgb-big-{}", ctx.run));
    let (status, body) = load::once(ctx.addr, append(&http_sid, 0))?;
    if status != 201 && status != 200 {
        bail!("creating {http_sid} answered {status}: {body}");
    }
    eprintln!("bench: filling two conversations with 100,000 messages each");
    let fill = |sid: &str| {
        vec![
            format!(
                "INSERT INTO messages (id, conversation_id, session_id, seq, role, text) \
                 SELECT gen_random_uuid(), c.id, c.session_id, c.message_count + n, 'user', 'x' \
                 FROM conversations c, generate_series(1, 100000) n WHERE c.session_id = '{sid}'"
            ),
            format!("UPDATE conversations SET message_count = message_count + 100000 WHERE session_id = '{sid}'"),
        ]
    };
    let mut sql = vec![format!("INSERT INTO conversations (id, session_id) VALUES (gen_random_uuid(), '{pg_sid}')")];
    sql.extend(fill(&http_sid));
    sql.extend(fill(&pg_sid));
    sql.push("VACUUM ANALYZE messages".into());
    sql.push("CHECKPOINT".into());
    pg::execute(&ctx.conninfo, &sql)?;
    ctx.big = Some((http_sid, pg_sid));
    Ok(ctx.big.clone().expect("set"))
}

/// Workloads whose targets compare them with each other. They run as one group (below).
const COMPARED: &[[&str; 2]] = &[["clicks", "clicks-keyed"], ["append-big", "append-empty"]];
/// How many turns the workloads of a group take at each connection count.
const SLICES: u32 = 10;

/// The selected workloads in order, a compared pair as one group when both are selected.
fn interleaved<'a>(selected: &[&'a Workload]) -> Vec<Vec<&'a Workload>> {
    let partner = |name: &str| {
        COMPARED.iter().find_map(|pair| match pair {
            [a, b] if *a == name => Some(*b),
            [a, b] if *b == name => Some(*a),
            _ => None,
        })
    };
    let mut groups: Vec<Vec<&Workload>> = Vec::new();
    for &workload in selected {
        let joined =
            partner(workload.name).and_then(|other| groups.iter_mut().find(|g| g.len() == 1 && g[0].name == other));
        match joined {
            Some(group) => group.push(workload),
            None => groups.push(vec![workload]),
        }
    }
    groups
}

/// The points of a group at one connection count: each workload's upsertd point, followed by
/// its pgbench point when it has a script and `pgbench` is on. Every target compares points of
/// one group (workloads with each other, upsertd with pgbench running the same statement), and
/// this VM drifts (its fsync latency moves throughput by a third within a minute), so the
/// group's runs are laid out for the drift to fall on all of them alike: the workloads over
/// HTTP take turns in [`SLICES`] slices (halves for one workload) that add up to the duration
/// each, and pgbench runs in the middle of them, each script once for the whole duration. (A
/// pgbench run cut into slices would pay its connections' authentication and cold backends in
/// every slice: at 64 clients and 1 s slices that halved its throughput.)
fn group_points(ctx: &mut Ctx, group: &[&Workload], connections: usize, pgbench: bool) -> Vec<Point> {
    struct Run {
        point: Point,
        build: Option<load::Builder>,
        outcome: load::Outcome,
        cpu: cpu::Used,
        rss: f64,
    }
    let mut runs: Vec<Run> = group
        .iter()
        .map(|workload| {
            let mut point = blank(workload.name, "upsertd", connections);
            let build = match builder(ctx, workload.name, connections) {
                Ok(Some(b)) => Some(b),
                Ok(None) => {
                    point.status = "n/a (route missing)".into();
                    None
                }
                Err(e) => {
                    point.status = format!("failed: {e:#}");
                    None
                }
            };
            Run { point, build, outcome: Default::default(), cpu: Default::default(), rss: 0.0 }
        })
        .collect();
    let scripts: Vec<(&Workload, &str)> =
        group.iter().filter_map(|w| Some((*w, w.pgbench.filter(|_| pgbench)?))).collect();
    let slices = match (group.len(), scripts.len()) {
        (1, 0) => 1,
        (1, _) => 2,
        _ => SLICES,
    };
    let mut baseline = Vec::new();
    for slice in 0..slices {
        if slice == slices / 2 {
            baseline = scripts.iter().map(|(w, script)| pgbench_point(ctx, w, script, connections)).collect();
        }
        for run in runs.iter_mut() {
            let Some(build) = &run.build else { continue };
            let cpu0 = cpu::Sample::now(Some(ctx.server_pid));
            let rss = RssSampler::start(ctx.server_pid, Duration::from_millis(100));
            run.outcome.merge(load::run(ctx.addr, load::turn(build, slice as u64), connections, ctx.duration / slices));
            run.rss = run.rss.max(max_rss(&rss.finish()));
            run.cpu.add(cpu0, cpu::Sample::now(Some(ctx.server_pid)));
        }
    }
    let mut points = Vec::new();
    for run in runs {
        let name = run.point.workload.clone();
        points.push(match run.build {
            Some(_) => finish_point(ctx, run.point, run.outcome, run.cpu, run.rss),
            None => {
                report::progress(&run.point);
                run.point
            }
        });
        points.extend(baseline.iter().filter(|p| p.workload == name).cloned());
    }
    points
}

fn finish_point(ctx: &Ctx, mut point: Point, mut outcome: load::Outcome, cpu: cpu::Used, rss: f64) -> Point {
    point.server_rss_mib = rss;
    point.machine_cpu_pct = cpu.machine_pct();
    point.server_peak_rss_mib = server::rss_mib(ctx.server_pid).1;
    let secs = outcome.elapsed.as_secs_f64();
    point.requests = outcome.completed();
    (point.server_cpu_us, point.postgres_cpu_us) = cpu.per_request_us(point.requests);
    point.ok = outcome.ok;
    point.rps = outcome.completed() as f64 / secs;
    point.errors_4xx = outcome.client_errors;
    point.errors_5xx = outcome.server_errors;
    point.transport_errors = outcome.transport_errors;
    point.client_cpu_pct = 100.0 * outcome.cpu.as_secs_f64() / secs;
    (point.p50_ms, point.p99_ms) = load::percentiles(&mut outcome.latencies_us);
    point.first_error = outcome.first_error.clone();
    if outcome.ok == 0 && outcome.route_missing > 0 {
        point.status = "n/a (route missing)".into();
        point.rps = 0.0;
    } else {
        point.errors_4xx += outcome.route_missing;
    }
    report::progress(&point);
    point
}

fn pgbench_point(ctx: &mut Ctx, workload: &Workload, script: &str, connections: usize) -> Point {
    let mut point = blank(workload.name, "pgbench", connections);
    let vars: anyhow::Result<Vec<(&str, String)>> = match workload.name {
        "clicks" | "clicks-keyed" => participation(ctx).map(|p| vec![("pid", p.1)]),
        "append-big" => big(ctx).map(|b| vec![("sid", b.1)]),
        "append-empty" => Ok(vec![("sid", format!("pgb-empty-{}-c{connections}", ctx.run))]),
        _ => Ok(Vec::new()),
    };
    let script_path = ctx.bench_dir.join("pgbench").join(script);
    let log_dir = ctx.out_dir.join("pgbench-log");
    let cpu0 = cpu::Sample::now(None);
    let result = vars.and_then(|vars| {
        pg::pgbench(&ctx.conninfo, &script_path, connections, ctx.duration.as_secs(), &vars, &log_dir)
    });
    let mut cpu = cpu::Used::default();
    cpu.add(cpu0, cpu::Sample::after_clients_left());
    point.machine_cpu_pct = cpu.machine_pct();
    match result {
        Ok(r) => {
            point.requests = r.transactions;
            point.postgres_cpu_us = cpu.per_request_us(r.transactions).1;
            point.ok = r.transactions;
            point.rps = r.tps;
            point.p50_ms = r.p50_ms;
            point.p99_ms = r.p99_ms;
            point.errors_5xx = r.failed;
            point.client_cpu_pct = 100.0 * r.cpu.as_secs_f64() / r.elapsed.as_secs_f64();
            if let Some(why) = r.aborted {
                point.status = format!("failed: pgbench: {why}");
            }
        }
        Err(e) => point.status = format!("failed: {e:#}"),
    }
    report::progress(&point);
    point
}

fn legacy_point(ctx: &Ctx, connections: usize) -> Point {
    let mut point = blank("legacy", "legacy", connections);
    let cpu0 = cpu::Sample::now(None);
    let prefix = format!("legacy-{}-c{connections}", ctx.run);
    match pg::legacy(&ctx.conninfo, prefix, connections, ctx.duration) {
        Ok(mut r) => {
            let mut cpu = cpu::Used::default();
            cpu.add(cpu0, cpu::Sample::after_clients_left());
            point.machine_cpu_pct = cpu.machine_pct();
            let secs = r.elapsed.as_secs_f64();
            point.ok = r.ok;
            point.requests = r.ok + r.unique_violations + r.other_errors;
            point.postgres_cpu_us = cpu.per_request_us(point.requests).1;
            point.rps = point.requests as f64 / secs;
            point.unique_violations = r.unique_violations;
            point.errors_5xx = r.unique_violations + r.other_errors;
            point.client_cpu_pct = 100.0 * r.cpu.as_secs_f64() / secs;
            (point.p50_ms, point.p99_ms) = load::percentiles(&mut r.latencies_us);
        }
        Err(e) => point.status = format!("failed: {e:#}"),
    }
    report::progress(&point);
    point
}
