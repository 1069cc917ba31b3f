//! upsertd's own PostgreSQL cluster, for machines with PostgreSQL installed and no server set up.
//!
//! The cluster lives in `<data-dir>/postgres`, listens only on a Unix socket (no TCP port to
//! collide with), and runs as a child process that dies with us: `postgres` is started from a
//! keeper thread that lives as long as the child, with `PR_SET_PDEATHSIG`, so even a SIGKILLed
//! upsertd takes its cluster down (a daemonised `pg_ctl start` would outlive it). As root,
//! `initdb` and `postgres` run as the `postgres` OS user, which owns the folder.

use anyhow::{anyhow, bail, Context};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A Unix socket path must fit in `sun_path` (108 bytes on Linux, with its NUL).
const MAX_SOCKET_PATH: usize = 100;
const PORT: u16 = 5432;
const SUPERUSER: &str = "postgres";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the supervisor looks whether the postmaster is still running.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// Tries to start a crashed postmaster again before giving up, and the pause after the first
/// (then twice as long, three times, ...): about six seconds in all.
const RESTART_TRIES: u32 = 4;
const RESTART_PAUSE: Duration = Duration::from_secs(1);
/// A postmaster up this long after a restart is healthy again: a later crash gets every try.
const STABLE: Duration = Duration::from_secs(60);

/// Whether a crash may lose committed data. The cluster behind `serve` holds real data; test
/// clusters trade durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Durable,
    Throwaway,
}

pub struct Cluster {
    pgdata: PathBuf,
    socket_dir: PathBuf,
    /// `socket_dir` when it is a private folder made for this run (the data path was too long
    /// for a socket): removed when the cluster stops.
    private_socket_dir: Option<TempDir>,
    /// The superuser's password: the cluster authenticates every connection (SCRAM), so
    /// reaching its socket is not enough to become its superuser.
    password: String,
    /// `<data dir>/pgpass`: the password, for psql (`PGPASSFILE`).
    passfile: PathBuf,
    launch: Launch,
    /// Shared with the supervisor ([`Cluster::supervise`]), which starts it again after a crash.
    postmaster: Arc<Mutex<Postmaster>>,
}

/// When a supervisor last found its postmaster gone, in milliseconds after [`CRASH_CLOCK`]
/// (0: never). A pooled connection opened before then leads to a server that is no more.
static LAST_CRASH: AtomicU64 = AtomicU64::new(0);
static CRASH_CLOCK: OnceLock<Instant> = OnceLock::new();

/// Whether a connection of this age was opened before the embedded cluster last crashed: it
/// is dead, and the pool should open a new one rather than fail a request with it.
pub fn opened_before_last_crash(age: Duration) -> bool {
    let crashed = LAST_CRASH.load(Ordering::Relaxed);
    let Some(clock) = CRASH_CLOCK.get().filter(|_| crashed != 0) else { return false };
    Instant::now().checked_sub(age).is_some_and(|opened| opened <= *clock + Duration::from_millis(crashed))
}

fn note_crash() {
    let clock = CRASH_CLOCK.get_or_init(Instant::now);
    LAST_CRASH.store(clock.elapsed().as_millis().max(1) as u64, Ordering::Relaxed);
}

/// How the postmaster is started, kept to start it again.
#[derive(Clone)]
struct Launch {
    bindir: PathBuf,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    run_as: RunAs,
    durability: Durability,
}

/// The running postmaster.
struct Postmaster {
    pid: i32,
    exited: mpsc::Receiver<std::io::Result<ExitStatus>>,
    /// Stopped on purpose (or given up on): its exit is no crash.
    stopped: bool,
}

impl Launch {
    /// Starts the postmaster and waits until it accepts connections. Blocking.
    fn start(&self) -> anyhow::Result<Postmaster> {
        let (pid, exited) = spawn_postgres(self)?;
        let mut postmaster = Postmaster { pid, exited, stopped: false };
        if let Err(error) = wait_until_ready(&self.pgdata, &mut postmaster, &self.log_path) {
            // The start's error is the one to report.
            let _ = postmaster.stop();
            return Err(error);
        }
        Ok(postmaster)
    }
}

/// The OS user the server processes run as: ourselves, or `postgres` when we are root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
    switch: bool,
}

impl Cluster {
    /// Starts the cluster in `<data_dir>/postgres`, creating it on first use. Blocking.
    pub fn start(data_dir: &Path, durability: Durability) -> anyhow::Result<Self> {
        let bindir = find_bindir()?;
        fs::create_dir_all(data_dir).with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        let data_dir = data_dir.canonicalize()?;
        let pgdata = data_dir.join("postgres");
        let run_as = run_as()?;
        prepare_pgdata(&pgdata, run_as)?;
        let passfile = data_dir.join("pgpass");
        let fresh = !pgdata.join("PG_VERSION").exists();
        let password = superuser_password(&passfile, fresh)?;
        if fresh {
            initdb(&bindir, &pgdata, run_as, durability, &password)?;
        }
        wait_for_previous_postmaster(&pgdata)?;
        let (socket_dir, private_socket_dir) = socket_dir_for(&pgdata, run_as)?;
        let log_path = data_dir.join("postgres.log");
        let launch =
            Launch { bindir, pgdata: pgdata.clone(), socket_dir: socket_dir.clone(), log_path, run_as, durability };
        let postmaster = Arc::new(Mutex::new(launch.start()?));
        let cluster = Self { pgdata, socket_dir, private_socket_dir, password, passfile, launch, postmaster };
        if !fresh && !cluster.pgdata.join(HBA_MARKER).exists() {
            cluster.require_passwords()?;
        }
        tracing::info!(pgdata = %cluster.pgdata.display(), "embedded PostgreSQL is ready");
        Ok(cluster)
    }

    /// The cluster another upsertd (a `serve`) runs on this data dir, if it is up: its socket
    /// folder as its `postmaster.pid` names it, and the password in `pgpass`. A command that
    /// only visits (audit, import, migrate) connects to it instead of waiting for it to stop.
    pub fn running(data_dir: &Path, database: &str) -> Option<(PgConnectOptions, String)> {
        let pid_file = fs::read_to_string(data_dir.join("postgres/postmaster.pid")).ok()?;
        let lines: Vec<&str> = pid_file.lines().collect();
        let pid: i32 = lines.first()?.trim().parse().ok()?;
        // postmaster.pid: pid, data dir, start time, port, socket dir, listen address, shmem key, status.
        let (socket_dir, status) = (lines.get(4)?.trim(), lines.get(7)?.trim());
        if !process_alive(pid) || status != "ready" || socket_dir.is_empty() {
            return None;
        }
        let password = superuser_password_in(&data_dir.join("pgpass"))?;
        let options = PgConnectOptions::new()
            .socket(socket_dir)
            .port(PORT)
            .username(SUPERUSER)
            .password(&password)
            .database(database);
        let display = format!(
            "PGPASSFILE={} psql 'host={socket_dir} port={PORT} user={SUPERUSER} dbname={database}'",
            data_dir.join("pgpass").display()
        );
        Some((options, display))
    }

    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.socket_dir)
            .port(PORT)
            .username(SUPERUSER)
            .password(&self.password)
            .database(database)
            .log_statements(tracing::log::LevelFilter::Trace)
    }

    /// The command an operator runs to look inside.
    pub fn psql_command(&self, database: &str) -> String {
        format!(
            "PGPASSFILE={} psql 'host={} port={PORT} user={SUPERUSER} dbname={database}'",
            self.passfile.display(),
            self.socket_dir.display()
        )
    }

    /// A cluster made by an older upsertd trusts every connection on its socket: give the
    /// superuser its password and make the cluster ask for it. Blocking.
    fn require_passwords(&self) -> anyhow::Result<()> {
        let (options, password, hba) =
            (self.connect_options("postgres"), self.password.clone(), self.pgdata.join("pg_hba.conf"));
        // On a thread of its own: a caller may be inside an async runtime, which cannot block on another.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect_with(&options).await?;
                // Not a bind parameter: ALTER ROLE takes none. The password is hex, nothing to escape.
                sqlx::query(&format!("ALTER ROLE {SUPERUSER} PASSWORD '{password}'")).execute(&mut conn).await?;
                fs::write(hba, HBA)?;
                sqlx::query("SELECT pg_reload_conf()").execute(&mut conn).await?;
                conn.close().await?;
                anyhow::Ok(())
            })
        })
        .join()
        .map_err(|_| anyhow!("upgrading the cluster's authentication panicked"))??;
        fs::write(self.pgdata.join(HBA_MARKER), "")?;
        tracing::info!("the embedded cluster now asks for its superuser's password (see pgpass in the data dir)");
        Ok(())
    }

    pub async fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let mut conn = sqlx::PgConnection::connect_with(&self.connect_options("postgres")).await?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
        if !exists {
            // Two processes may race here; "already exists" (42P04) means the other one won.
            if let Err(e) = sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).await {
                let duplicate = e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "42P04");
                if !duplicate {
                    return Err(e.into());
                }
            }
        }
        conn.close().await.ok();
        Ok(())
    }

    /// Fast shutdown (SIGINT): open transactions roll back, committed data is on disk.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> anyhow::Result<()> {
        let stopped = self.postmaster.lock().unwrap_or_else(PoisonError::into_inner).stop();
        if let Some(folder) = self.private_socket_dir.take() {
            folder.close().ok();
        }
        stopped
    }

    /// Watches the postmaster from a thread of its own. When it exits without being asked to
    /// (a crash, the OOM killer, a `kill -9`), the supervisor logs it and starts it again:
    /// crash recovery replays the WAL, and the pool's next connections find it. If it cannot
    /// be brought back in [`RESTART_TRIES`] tries, the returned channel says why, and the
    /// server should exit non-zero so that whatever runs it (systemd, a container runtime)
    /// restarts the whole process.
    pub fn supervise(&self) -> tokio::sync::oneshot::Receiver<anyhow::Error> {
        let (gave_up, receiver) = tokio::sync::oneshot::channel();
        let (postmaster, launch) = (self.postmaster.clone(), self.launch.clone());
        let (mut since_start, mut tries_left) = (Instant::now(), RESTART_TRIES);
        let watch = move || loop {
            std::thread::sleep(WATCH_EVERY);
            let mut postmaster = postmaster.lock().unwrap_or_else(PoisonError::into_inner);
            if postmaster.stopped {
                return;
            }
            let status = match postmaster.exited.try_recv() {
                Ok(status) => status,
                Err(mpsc::TryRecvError::Empty) => continue,
                Err(mpsc::TryRecvError::Disconnected) => Err(std::io::Error::other("its keeper thread ended")),
            };
            note_crash();
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            tracing::error!(
                %status,
                log = %launch.log_path.display(),
                "the embedded PostgreSQL exited unexpectedly; starting it again (crash recovery replays its WAL)"
            );
            // A postmaster that keeps crashing soon after each start is one that cannot be
            // brought back: its crashes count as tries too.
            let tries = if since_start.elapsed() < STABLE { tries_left } else { RESTART_TRIES };
            match restart(&launch, tries) {
                Ok((started, left)) => {
                    *postmaster = started;
                    (since_start, tries_left) = (Instant::now(), left);
                    tracing::warn!("the embedded PostgreSQL is back; writes resume");
                }
                Err(error) => {
                    postmaster.stopped = true;
                    let _ = gave_up.send(error);
                    return;
                }
            }
        };
        if let Err(error) = std::thread::Builder::new().name("postgres-supervisor".into()).spawn(watch) {
            tracing::error!(%error, "cannot supervise the embedded cluster: a crash of it will not be repaired");
        }
        receiver
    }
}

/// Starts the postmaster again after a crash, in at most `tries` tries, waiting a little
/// longer before each: the backends of a killed postmaster hold its shared memory until they
/// notice and exit, and until then a new postmaster refuses to start. Returns it with the
/// tries left.
fn restart(launch: &Launch, tries: u32) -> anyhow::Result<(Postmaster, u32)> {
    let mut last = anyhow!("it kept crashing right after each start");
    for attempt in 1..=tries {
        match launch.start() {
            Ok(postmaster) => return Ok((postmaster, tries - attempt)),
            Err(error) => {
                tracing::warn!(attempt, error = %format!("{error:#}"), "starting the embedded PostgreSQL again failed");
                last = error;
            }
        }
        if attempt < tries {
            std::thread::sleep(RESTART_PAUSE * attempt);
        }
    }
    Err(last.context(format!("the embedded PostgreSQL could not be started again in {RESTART_TRIES} tries")))
}

fn wait_until_ready(pgdata: &Path, postmaster: &mut Postmaster, log_path: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(status) = postmaster.exited.try_recv() {
            postmaster.stopped = true;
            bail!(
                "PostgreSQL exited while starting ({}): {}; full log in {}",
                status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                last_log_line(log_path),
                log_path.display()
            );
        }
        // postmaster.pid's status line reads "ready" once connections are accepted. The file
        // must be this postmaster's: a killed one leaves its own behind, still saying "ready".
        let ready = fs::read_to_string(pgdata.join("postmaster.pid")).is_ok_and(|pid_file| {
            let ours = pid_file.lines().next().and_then(|line| line.trim().parse().ok()) == Some(postmaster.pid);
            ours && pid_file.lines().any(|line| line.trim() == "ready")
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("PostgreSQL did not become ready within {START_TIMEOUT:?}; see {}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Postmaster {
    /// Fast shutdown (SIGINT), then SIGQUIT if it does not stop in time.
    fn stop(&mut self) -> anyhow::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        signal(self.pid, libc::SIGINT);
        if self.exited.recv_timeout(STOP_TIMEOUT).is_ok() {
            return Ok(());
        }
        signal(self.pid, libc::SIGQUIT);
        let _ = self.exited.recv_timeout(Duration::from_secs(5));
        Err(anyhow!("PostgreSQL did not stop within {STOP_TIMEOUT:?}; sent SIGQUIT"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(error) = self.stop_inner() {
            tracing::warn!(%error, "stopping the embedded cluster");
        }
    }
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) };
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// PATH first, then `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`.
fn find_bindir() -> anyhow::Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    let from_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .find(|dir| has_server(dir));
    let from_pg_config = || {
        let out = Command::new("pg_config").arg("--bindir").output().ok()?;
        let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
        has_server(&dir).then_some(dir)
    };
    let newest_debian = || {
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
            .filter(|(_, dir)| has_server(dir))
            .collect();
        versions.sort();
        versions.pop().map(|(_, dir)| dir)
    };
    from_path.or_else(from_pg_config).or_else(newest_debian).ok_or_else(|| {
        anyhow!(
            "PostgreSQL server binaries (initdb, postgres) not found in PATH, `pg_config --bindir` \
             or /usr/lib/postgresql/*/bin: install PostgreSQL (e.g. `apt install postgresql`) or set DATABASE_URL"
        )
    })
}

fn run_as() -> anyhow::Result<RunAs> {
    // SAFETY: geteuid/getegid cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid != 0 {
        return Ok(RunAs { uid: euid, gid: egid, switch: false });
    }
    let name = CString::new(SUPERUSER).expect("no NUL in a constant");
    // SAFETY: getpwnam returns NULL or a pointer to a static record we copy from at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        bail!(
            "running as root, but there is no `postgres` OS user to run PostgreSQL as: \
             create one (apt install postgresql does) or set DATABASE_URL"
        );
    }
    // SAFETY: checked non-null above.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(RunAs { uid, gid, switch: true })
}

/// Creates the folder (mode 0700, owned by the server's user) or checks that an existing one
/// belongs to that user and that every parent lets it through.
fn prepare_pgdata(pgdata: &Path, run_as: RunAs) -> anyhow::Result<()> {
    if pgdata.exists() {
        let owner = fs::metadata(pgdata)?.uid();
        if owner != run_as.uid {
            bail!(
                "{} belongs to uid {owner}, not to uid {} that runs PostgreSQL: \
                 choose another --data-dir, or chown -R it",
                pgdata.display(),
                run_as.uid
            );
        }
    } else {
        fs::create_dir(pgdata).with_context(|| format!("cannot create {}", pgdata.display()))?;
        fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700))?;
        if run_as.switch {
            std::os::unix::fs::chown(pgdata, Some(run_as.uid), Some(run_as.gid))?;
        }
    }
    if run_as.switch {
        for ancestor in pgdata.ancestors().skip(1) {
            let meta = fs::metadata(ancestor)?;
            let mode = meta.mode();
            let passable = mode & 0o001 != 0
                || (meta.uid() == run_as.uid && mode & 0o100 != 0)
                || (meta.gid() == run_as.gid && mode & 0o010 != 0);
            if !passable {
                bail!(
                    "the postgres OS user cannot reach {}: {} is mode {:o}; \
                     choose a --data-dir outside it (e.g. under /var/lib or /tmp)",
                    pgdata.display(),
                    ancestor.display(),
                    mode & 0o777
                );
            }
        }
    }
    Ok(())
}

fn server_command(bindir: &Path, program: &str, run_as: RunAs) -> Command {
    let mut command = Command::new(bindir.join(program));
    command.current_dir("/").env_remove("PGDATA").env("LC_ALL", "C");
    if run_as.switch {
        command.uid(run_as.uid).gid(run_as.gid);
    }
    command
}

/// Every connection authenticates with the superuser's password; none is trusted.
const HBA: &str = "# upsertd: every connection authenticates (no trust)\nlocal all all scram-sha-256\n";
/// Written once a cluster's `pg_hba.conf` is [`HBA`], by initdb or by an upgrade.
const HBA_MARKER: &str = "upsertd-hba-scram";

/// The password kept in `passfile` (pgpass format, mode 0600), made when the cluster is.
fn superuser_password(passfile: &Path, fresh: bool) -> anyhow::Result<String> {
    if let Some(password) = superuser_password_in(passfile).filter(|_| !fresh) {
        return Ok(password);
    }
    let password = hex::encode(rand::random::<[u8; 24]>());
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(passfile)
        .with_context(|| format!("cannot write {}", passfile.display()))?;
    use std::io::Write;
    writeln!(file, "*:*:*:{SUPERUSER}:{password}")?;
    Ok(password)
}

fn superuser_password_in(passfile: &Path) -> Option<String> {
    let existing = fs::read_to_string(passfile).ok()?;
    existing.trim().rsplit(':').next().filter(|p| !p.is_empty()).map(str::to_owned)
}

fn initdb(bindir: &Path, pgdata: &Path, run_as: RunAs, durability: Durability, password: &str) -> anyhow::Result<()> {
    // initdb reads the password from a file the server's user can read (beside pgdata, which
    // must be empty); it is removed after.
    let pwfile = pgdata.with_file_name("initdb-password");
    fs::remove_file(&pwfile).ok(); // left by an initdb that was interrupted
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&pwfile)?;
    std::io::Write::write_all(&mut file, password.as_bytes())?;
    if run_as.switch {
        std::os::unix::fs::chown(&pwfile, Some(run_as.uid), Some(run_as.gid))?;
    }
    let mut command = server_command(bindir, "initdb", run_as);
    command.arg("-D").arg(pgdata).arg(format!("--pwfile={}", pwfile.display())).args([
        "-U",
        SUPERUSER,
        "--auth=scram-sha-256",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-instructions",
    ]);
    if durability == Durability::Throwaway {
        command.arg("--no-sync");
    }
    let out = command.output().context("could not run initdb");
    fs::remove_file(&pwfile).ok();
    let out = out?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "initdb {} failed: {}",
            pgdata.display(),
            stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no output")
        );
    }
    fs::write(pgdata.join("pg_hba.conf"), HBA)?;
    fs::write(pgdata.join(HBA_MARKER), "")?;
    Ok(())
}

/// A killed upsertd's cluster gets SIGINT from the kernel and may still be shutting down;
/// give it time, then treat a leftover postmaster.pid of a dead process as stale.
fn wait_for_previous_postmaster(pgdata: &Path) -> anyhow::Result<()> {
    let pid_file = pgdata.join("postmaster.pid");
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        let Ok(contents) = fs::read_to_string(&pid_file) else { return Ok(()) };
        let Some(pid) = contents.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) else {
            fs::remove_file(&pid_file).ok();
            return Ok(());
        };
        if !process_alive(pid) {
            fs::remove_file(&pid_file).ok();
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "a PostgreSQL server (pid {pid}) is already running on {}: \
                 stop the other upsertd, or point DATABASE_URL at it",
                pgdata.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The socket goes next to the data when the path fits (pgdata is private, mode 0700). Else
/// into a folder made for this run: a random name, created atomically with mode 0700 (mkdir
/// refuses a name anyone planted, a symlink included, and tempfile then retries with names
/// from the OS's randomness), so nobody else can reach it; it is handed to the server's user
/// through its file descriptor, never by a path that could be swapped. `Some`: that private
/// folder, removed when dropped.
fn socket_dir_for(pgdata: &Path, run_as: RunAs) -> anyhow::Result<(PathBuf, Option<TempDir>)> {
    let socket_name_len = format!("/.s.PGSQL.{PORT}").len();
    if pgdata.as_os_str().len() + socket_name_len <= MAX_SOCKET_PATH {
        return Ok((pgdata.to_owned(), None));
    }
    let folder = tempfile::Builder::new()
        .prefix("upsertd-")
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir()
        .context("cannot create a private socket folder")?;
    if run_as.switch {
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(folder.path())
            .with_context(|| format!("cannot open {}", folder.path().display()))?;
        std::os::unix::fs::fchown(&opened, Some(run_as.uid), Some(run_as.gid))?;
    }
    Ok((folder.path().to_owned(), Some(folder)))
}

fn spawn_postgres(launch: &Launch) -> anyhow::Result<(i32, mpsc::Receiver<std::io::Result<ExitStatus>>)> {
    let Launch { bindir, pgdata, socket_dir, log_path, run_as, durability } = launch;
    let (run_as, durability) = (*run_as, *durability);
    // Only upsertd's user reads the log (the server writes it through the inherited handle).
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    log.set_permissions(fs::Permissions::from_mode(0o600))?;
    let mut command = server_command(bindir, "postgres", run_as);
    command
        .arg("-D")
        .arg(pgdata)
        .arg("-k")
        .arg(socket_dir)
        .args(["-p", &PORT.to_string(), "-c", "listen_addresses=", "-c", "max_connections=300"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in the terminal reaches upsertd, which drains its
        // requests first and then stops the cluster itself.
        .process_group(0);
    if durability == Durability::Throwaway {
        command.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
    }
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (pid_tx, pid_rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel();
    // PDEATHSIG fires when the *thread* that forked the child ends, so the child is forked
    // by a thread that lives exactly as long as the child does.
    std::thread::Builder::new().name("postgres-keeper".into()).spawn(move || match command.spawn() {
        Ok(mut child) => {
            let _ = pid_tx.send(Ok(child.id() as i32));
            let _ = exit_tx.send(child.wait());
        }
        Err(e) => {
            let _ = pid_tx.send(Err(e));
        }
    })?;
    let pid = pid_rx
        .recv()
        .context("the postgres keeper thread died")?
        .with_context(|| format!("could not start {}", bindir.join("postgres").display()))?;
    Ok((pid, exit_rx))
}

fn last_log_line(log_path: &Path) -> String {
    fs::read_to_string(log_path)
        .ok()
        .and_then(|log| log.lines().rfind(|l| !l.trim().is_empty()).map(str::to_owned))
        .unwrap_or_else(|| "no log output".into())
}
