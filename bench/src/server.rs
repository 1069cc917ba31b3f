//! Builds upsertd (release), starts it on a fresh data dir (its own durable cluster) or on
//! `--database-url`, and stops it with SIGTERM.

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    pub addr: std::net::SocketAddr,
    /// libpq connection string for pgbench and the setup/legacy client.
    pub conninfo: String,
    data_dir: Option<PathBuf>,
}

/// `cargo build --release` in the repository root (the parent of bench/).
pub fn build(repo: &Path) -> anyhow::Result<PathBuf> {
    eprintln!("bench: building upsertd (cargo build --release in {})", repo.display());
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(["build", "--release", "--bin", "upsertd"]).current_dir(repo);
    // `cargo run` hands the bench its own package's variables; build scripts of the service's
    // dependencies (ring, sqlx) watch some of them, and would rebuild for nothing.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_"]
            .iter()
            .any(|p| name.starts_with(p))
            || name == "OUT_DIR"
        {
            command.env_remove(name.as_ref());
        }
    }
    let status = command.status().context("could not run cargo")?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    Ok(repo.join("target/release/upsertd"))
}

impl Server {
    pub fn start(binary: &Path, database_url: Option<&str>, out_dir: &Path) -> anyhow::Result<Self> {
        let mut command = Command::new(binary);
        command.args(["serve", "--bind", "127.0.0.1:0"]).env_remove("DATABASE_URL").env("RUST_LOG", "warn");
        // A fresh data dir under /tmp; 0755 so that the `postgres` OS user can reach it when we
        // are root (upsertd then runs its cluster as that user).
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let data_dir = PathBuf::from(format!("/tmp/upsertd-bench-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&data_dir)?;
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755))?;
        command.arg("--data-dir").arg(&data_dir);
        if let Some(url) = database_url {
            command.args(["--database-url", url]);
        }
        let log = std::fs::File::create(out_dir.join("server.log"))?;
        command.stdout(Stdio::piped()).stderr(log).stdin(Stdio::null());
        // SAFETY: prctl is async-signal-safe. The server dies with the bench, even on a panic.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel::<String>();
        let mut server_log = std::fs::File::create(out_dir.join("server.stdout"))?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(server_log, "{line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut addr, mut conninfo) = (None, None);
        while addr.is_none() || conninfo.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    bail!("upsertd did not print its address and database within 120 s; see bench/out/server.log");
                }
            };
            if let Some(rest) = line.strip_prefix("upsertd listening on http://") {
                addr = Some(rest.trim().parse().context("listen address")?);
            } else if let Some(rest) = line.strip_prefix("database: ") {
                conninfo = Some(parse_database_line(rest, database_url));
            }
        }
        Ok(Self { child, addr: addr.expect("set"), conninfo: conninfo.expect("set"), data_dir: Some(data_dir) })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait (upsertd drains and stops its cluster); SIGKILL after 60 s.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if let Some(dir) = self.data_dir.take() {
            // Give the cluster (a grandchild) a moment to exit before its files go.
            std::thread::sleep(Duration::from_millis(300));
            let _ = std::fs::remove_dir_all(dir);
        }
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => bail!("upsertd exited with {s}"),
            None => bail!("upsertd did not stop within 60 s of SIGTERM; killed"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.data_dir.is_some() {
            let _ = self.stop_inner();
        }
    }
}

/// `PGPASSFILE=/data/pgpass psql 'host=/sock port=5432 user=postgres dbname=upsertd'` -> the
/// quoted conninfo with the password from that file (the embedded cluster asks for it; neither
/// tokio-postgres nor a conninfo argument reads a passfile by itself). With `--database-url`
/// the server prints a redacted URL, so the given URL is used instead.
fn parse_database_line(rest: &str, database_url: Option<&str>) -> String {
    if let Some(url) = database_url {
        return url.to_string();
    }
    let rest = rest.trim();
    let conninfo = match (rest.find('\''), rest.rfind('\'')) {
        (Some(a), Some(b)) if b > a => rest[a + 1..b].to_string(),
        _ => rest.trim_start_matches("psql ").to_string(),
    };
    let password = rest
        .strip_prefix("PGPASSFILE=")
        .and_then(|tail| tail.split_whitespace().next())
        .and_then(|passfile| std::fs::read_to_string(passfile).ok())
        .and_then(|entry| entry.lines().next().and_then(|line| line.rsplit(':').next()).map(str::to_owned));
    match password {
        Some(password) => format!("{conninfo} password={password}"),
        None => conninfo,
    }
}

/// Current and peak resident set size of a process, in MiB.
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
