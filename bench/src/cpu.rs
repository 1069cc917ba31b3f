//! Where a point's CPU time went, from /proc: the whole machine, upsertd's process, and
//! PostgreSQL's processes, so that the report can say what a request costs on each side.

use std::time::Duration;

/// Cumulative CPU counters at one instant, in clock ticks.
#[derive(Clone, Copy, Default)]
pub struct Sample {
    machine_total: u64,
    machine_idle: u64,
    server: u64,
    postgres: u64,
}

impl Sample {
    /// After a client's connections closed (pgbench, the legacy client): their backends'
    /// time counts only once the postmaster has reaped them, a moment after they exit. One
    /// point of a full run read 1 µs per transaction without this pause. (The pause dilutes the
    /// point's machine busy share a little: 3% at 10 s.)
    pub fn after_clients_left() -> Self {
        std::thread::sleep(std::time::Duration::from_millis(300));
        Self::now(None)
    }

    /// Now, for upsertd's process `server_pid` (none for pgbench points).
    pub fn now(server_pid: Option<u32>) -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> =
            stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        Self {
            machine_total: fields.iter().sum(),
            machine_idle: fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0),
            server: server_pid.and_then(Stat::of).map_or(0, |s| s.own),
            postgres: postgres_ticks(),
        }
    }
}

/// CPU used between samples, summed over the slices of a point.
#[derive(Clone, Copy, Default)]
pub struct Used {
    machine_total: u64,
    machine_busy: u64,
    server: u64,
    postgres: u64,
}

impl Used {
    pub fn add(&mut self, before: Sample, after: Sample) {
        let total = after.machine_total.saturating_sub(before.machine_total);
        let idle = after.machine_idle.saturating_sub(before.machine_idle);
        self.machine_total += total;
        self.machine_busy += total.saturating_sub(idle);
        self.server += after.server.saturating_sub(before.server);
        self.postgres += after.postgres.saturating_sub(before.postgres);
    }

    /// Whole machine busy, % of all cores.
    pub fn machine_pct(&self) -> f64 {
        if self.machine_total == 0 {
            0.0
        } else {
            100.0 * self.machine_busy as f64 / self.machine_total as f64
        }
    }

    /// (upsertd, PostgreSQL) CPU time per request in µs.
    pub fn per_request_us(&self, requests: u64) -> (f64, f64) {
        let per = |ticks: u64| {
            if requests == 0 {
                0.0
            } else {
                ticks_to(ticks).as_secs_f64() * 1e6 / requests as f64
            }
        };
        (per(self.server), per(self.postgres))
    }
}

fn ticks_to(ticks: u64) -> Duration {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

/// The fields of /proc/PID/stat we need.
struct Stat {
    command: String,
    parent: u32,
    /// utime + stime
    own: u64,
    /// cutime + cstime: children that exited and were waited for
    children: u64,
}

impl Stat {
    fn of(pid: u32) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command sits in parentheses and may hold spaces: split after the last ')'.
        let (head, rest) = text.rsplit_once(')')?;
        let command = head.split_once('(')?.1.to_string();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        Some(Self { command, parent: field(4) as u32, own: field(14) + field(15), children: field(16) + field(17) })
    }
}

/// Every `postgres` process's CPU, plus what the postmasters' exited children used (a
/// pgbench connection's backend ends within the point; its time moves to its postmaster's
/// children when it is reaped, so the sum stays continuous). With `--database-url` pointing
/// at a server on this machine, that server is counted; on another machine, nothing is.
fn postgres_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    let stats: Vec<(u32, Stat)> = dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, Stat::of(pid)?)))
        .filter(|(_, stat)| stat.command == "postgres")
        .collect();
    let is_postgres = |pid: u32| stats.iter().any(|(p, _)| *p == pid);
    stats.iter().map(|(_, stat)| stat.own + if is_postgres(stat.parent) { 0 } else { stat.children }).sum()
}
