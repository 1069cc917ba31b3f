//! The binary with no DATABASE_URL runs its own PostgreSQL, keeps data across restarts and
//! leaves no server process behind.

use crate::helpers::scratch_dir;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `upsertd serve`, killed when dropped: a failing test must not leave a server (and
/// its cluster) behind, holding the test runner's output open.
pub struct Binary(Child);

impl std::ops::Deref for Binary {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Binary {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `upsertd serve` on its own cluster in `data_dir` and waits until it answers.
pub async fn start_binary(data_dir: &Path, port: u16, extra_env: &[(&str, &str)]) -> Binary {
    let mut command = Command::new(env!("CARGO_BIN_EXE_upsertd"));
    command
        .args(["serve", "--bind", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (key, value) in extra_env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("the upsertd binary starts");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("upsertd exited during start: {status}");
        }
        let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.is_ok_and(|r| r.status() == 200);
        if ready {
            return Binary(child);
        }
        assert!(Instant::now() < deadline, "upsertd did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn postgres_processes_for(data_dir: &Path) -> usize {
    let needle = data_dir.join("postgres");
    let needle = needle.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .filter(|cmdline| {
            let cmdline = String::from_utf8_lossy(cmdline);
            cmdline.starts_with(['/', 'p']) && cmdline.contains("postgres") && cmdline.contains(needle)
        })
        .count()
}

pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap()
}

#[tokio::test]
async fn the_embedded_cluster_keeps_data_across_restarts_and_leaves_nothing_running() {
    let data_dir = scratch_dir(&format!("binary-{}", uuid::Uuid::new_v4().simple()));
    let port = free_port();
    let mut server = start_binary(&data_dir, port, &[]).await;
    let client = reqwest::Client::new();
    let created = client
        .post(format!("http://127.0.0.1:{port}/api/save-analysis"))
        .json(&json!({"session_id": "survivor", "transcript": "still here"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert!(terminate(&mut server).success(), "SIGTERM exits 0");
    assert_eq!(postgres_processes_for(&data_dir), 0, "no postgres process is left behind");

    let mut server = start_binary(&data_dir, port, &[]).await;
    let fetched: Value = reqwest::get(format!("http://127.0.0.1:{port}/api/conversations/survivor"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["transcript"], "still here", "the row survived the restart");

    // A SIGKILLed upsertd cannot stop its cluster itself; the cluster must follow it anyway.
    server.kill().unwrap();
    server.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while postgres_processes_for(&data_dir) > 0 {
        assert!(Instant::now() < deadline, "postgres outlived a killed upsertd");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// SIGTERM while a request is running: the request still gets its answer, then the server,
/// the pool and the cluster stop and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    // A speech-to-text backend that takes its time, to keep an upload in flight.
    let stt = crate::helpers::fake_stt("slow but sure", Duration::from_millis(1500));
    let data_dir = scratch_dir(&format!("drain-{}", uuid::Uuid::new_v4().simple()));
    let port = free_port();
    let mut server = start_binary(&data_dir, port, &[("STT_URL", &stt.url)]).await;
    let form = reqwest::multipart::Form::new()
        .text("session_id", "draining")
        .part("audio", reqwest::multipart::Part::bytes(crate::upload::sine_wav(8000, 1, 0.1, 0.3)));
    let upload = tokio::spawn(
        reqwest::Client::new().post(format!("http://127.0.0.1:{port}/api/upload-audio")).multipart(form).send(),
    );
    // In flight for sure: upsertd has read the upload and waits on the backend's delay.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stt.calls.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the upload never reached the STT backend");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = tokio::task::spawn_blocking(move || terminate(&mut server)).await.unwrap();
    let response = upload.await.unwrap().expect("the request in flight was answered");
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["transcript"], "slow but sure");
    assert!(status.success(), "exit 0 after draining: {status}");
    assert_eq!(postgres_processes_for(&data_dir), 0, "the cluster stopped too");
    stt.handle.stop(false).await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// The embedded cluster trusts no connection (SCRAM with a password only upsertd's user can
/// read), and a socket that cannot live next to long data paths goes into a private folder
/// with an unpredictable name, made for each run and removed after it.
#[tokio::test]
async fn the_embedded_cluster_authenticates_and_hides_its_socket() {
    use std::os::unix::fs::PermissionsExt;
    use upsertd::db::cluster::{Cluster, Durability};
    let data_dir = scratch_dir(&format!("private-{}-{}", uuid::Uuid::new_v4().simple(), "x".repeat(80)));
    let start = |dir: std::path::PathBuf| {
        std::thread::spawn(move || Cluster::start(&dir, Durability::Throwaway).unwrap()).join().unwrap()
    };
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let socket_dir = |cluster: &Cluster| {
        let command = cluster.psql_command("postgres");
        let host = command.split("host=").nth(1).unwrap().split(' ').next().unwrap().to_owned();
        std::path::PathBuf::from(host)
    };

    let first = start(data_dir.clone());
    let first_socket = socket_dir(&first);
    assert!(first_socket.starts_with(std::env::temp_dir()), "{}", first_socket.display());
    assert_eq!(mode(&first_socket), 0o700);
    assert_eq!(mode(&data_dir.join("pgpass")), 0o600);
    assert_eq!(mode(&data_dir.join("postgres.log")), 0o600);
    let with_password = first.connect_options("postgres");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect_with(&with_password).await.unwrap();
    sqlx::query("SELECT 1").execute(&mut conn).await.unwrap();
    drop(conn);
    let without = with_password.clone().password("");
    let refused = <sqlx::PgConnection as sqlx::Connection>::connect_with(&without).await.unwrap_err();
    let code = refused.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
    assert!(matches!(code.as_deref(), Some("28P01") | Some("28000")), "{refused}");
    std::thread::spawn(move || first.stop().unwrap()).join().unwrap();
    assert!(!first_socket.exists(), "the private socket folder is removed with the cluster");

    // A cluster made by an older upsertd, trusting its socket, is made to ask for a password.
    std::fs::write(data_dir.join("postgres/pg_hba.conf"), "local all all trust\n").unwrap();
    std::fs::remove_file(data_dir.join("postgres/upsertd-hba-scram")).unwrap();
    std::fs::remove_file(data_dir.join("pgpass")).unwrap();
    let second = start(data_dir.clone());
    assert_ne!(socket_dir(&second), first_socket, "the socket folder's name is drawn afresh");
    let options = second.connect_options("postgres");
    <sqlx::PgConnection as sqlx::Connection>::connect_with(&options).await.unwrap();
    let refused = <sqlx::PgConnection as sqlx::Connection>::connect_with(&options.clone().password("")).await;
    assert!(refused.is_err(), "the upgraded cluster still trusts its socket");
    std::thread::spawn(move || second.stop().unwrap()).join().unwrap();
    std::fs::remove_dir_all(&data_dir).ok();
}

/// `audit`, `import` and `migrate` visit the cluster a running `serve` owns, at once, instead
/// of waiting for it to stop.
#[tokio::test]
async fn commands_visit_the_cluster_of_a_running_server() {
    let data_dir = scratch_dir(&format!("visit-{}", uuid::Uuid::new_v4().simple()));
    let port = free_port();
    let mut server = start_binary(&data_dir, port, &[]).await;
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_upsertd"))
            .args(args)
            .arg("--data-dir")
            .arg(&data_dir)
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    for args in [&["migrate"][..], &["audit"][..]] {
        let out = run(args);
        assert!(out.status.success(), "{args:?} while serve runs: {out:?}");
    }
    let health = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.unwrap();
    assert_eq!(health.status(), 200, "the server's cluster still runs");
    terminate(&mut server);
    std::fs::remove_dir_all(&data_dir).ok();
}

/// The postmaster's pid, from its lock file.
fn postmaster_pid(data_dir: &Path) -> i32 {
    let pid_file = std::fs::read_to_string(data_dir.join("postgres/postmaster.pid")).unwrap();
    pid_file.lines().next().unwrap().trim().parse().unwrap()
}

/// What a crash or the OOM killer does: SIGKILL to the postmaster and every backend (they
/// share its process group).
fn kill_cluster(data_dir: &Path) {
    // SAFETY: kill(2) on the process group of our own server's cluster.
    assert_eq!(unsafe { libc::kill(-postmaster_pid(data_dir), libc::SIGKILL) }, 0);
}

/// The embedded cluster killed under a write load comes back by itself: the supervisor starts
/// it again, writes resume within seconds without restarting upsertd, every acknowledged write
/// is still there, and the writes in between are answered promptly, never left hanging: a
/// write whose statement was in flight at the kill is a 503; one that arrives while the
/// cluster restarts waits for it (at most a second, `FAIL_FAST`) and is a 201, or a 503 if the
/// restart takes longer. How many of each there are is a matter of timing (under load, none
/// may have been in flight), so the test counts no 503s; it checks that the cluster was
/// started again, by the postmaster's pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_embedded_cluster_is_started_again_and_loses_no_acknowledged_write() {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let data_dir = scratch_dir(&format!("crash-{}", uuid::Uuid::new_v4().simple()));
    let port = free_port();
    let mut server = start_binary(&data_dir, port, &[]).await;
    let url = format!("http://127.0.0.1:{port}/api/save-analysis");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let started = Instant::now();
    let ms = |at: Duration| at.as_millis() as u64;
    // When the kill was done and the last 503 any writer got, in milliseconds after the start
    // (0: not yet).
    let (killed, last_refused) = (std::sync::Arc::new(AtomicU64::new(0)), std::sync::Arc::new(AtomicU64::new(0)));
    let writers = (0..8).map(|writer| {
        let (client, url, killed, last_refused) = (client.clone(), url.clone(), killed.clone(), last_refused.clone());
        tokio::spawn(async move {
            // (session id, acknowledged, when it was sent, how long its answer took)
            let mut sent = Vec::new();
            for n in 0.. {
                let at = started.elapsed();
                // Done a second after the kill and the last 503 (writes have resumed), or well
                // after the start (the assertions below then say what went wrong).
                let (killed, refused) = (killed.load(Relaxed), last_refused.load(Relaxed));
                if (killed > 0 && ms(at) > killed.max(refused) + 1000) || at > Duration::from_secs(20) {
                    break;
                }
                let sid = format!("w{writer}-{n}");
                let response = client.post(&url).json(&json!({"session_id": sid})).send().await.unwrap();
                let status = response.status().as_u16();
                assert!(status == 201 || status == 503, "only 201 or 503, got {status}");
                sent.push((sid, status == 201, at, started.elapsed() - at));
                if status == 503 {
                    last_refused.fetch_max(ms(started.elapsed()), Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            sent
        })
    });
    let writers: Vec<_> = writers.collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let postmaster = postmaster_pid(&data_dir);
    kill_cluster(&data_dir);
    let killed_at = started.elapsed();
    killed.store(ms(killed_at), Relaxed);
    let mut sent = Vec::new();
    for writer in writers {
        sent.extend(writer.await.unwrap());
    }
    assert!(server.try_wait().unwrap().is_none(), "upsertd kept running");
    let slowest = sent.iter().map(|(_, _, _, took)| *took).max().unwrap();
    assert!(slowest < Duration::from_millis(2500), "each answer came promptly; the slowest took {slowest:?}");
    // From the kill to the first acknowledged write sent after it and after the last 503.
    let refused = sent.iter().filter(|(_, ok, _, _)| !ok).count();
    let last_refused = sent.iter().filter(|(_, ok, _, _)| !ok).map(|(_, _, at, _)| *at).max().unwrap_or(killed_at);
    let back =
        sent.iter().filter(|(_, ok, at, _)| *ok && *at > last_refused.max(killed_at)).map(|(_, _, at, _)| *at).min();
    let down = back.expect("writes resumed") - killed_at;
    assert!(down < Duration::from_secs(10), "writes resumed {down:?} after the kill");
    assert_ne!(postmaster_pid(&data_dir), postmaster, "a new postmaster runs the cluster");
    let acknowledged = sent.iter().filter(|(_, ok, _, _)| *ok).count();
    eprintln!("{acknowledged} acknowledged, {refused} refused, slowest answer {slowest:?}, back after {down:?}");
    for (sid, _, _, _) in sent.iter().filter(|(_, ok, _, _)| *ok) {
        let stored = client.get(format!("http://127.0.0.1:{port}/api/conversations/{sid}")).send().await.unwrap();
        assert_eq!(stored.status(), 200, "acknowledged {sid} is still there");
    }
    assert!(terminate(&mut server).success());
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// A cluster that cannot be started again ends upsertd with a failure status, so whatever runs
/// it restarts it, and leaves no postgres process behind.
#[tokio::test]
async fn a_cluster_that_cannot_be_started_again_ends_upsertd_with_a_failure() {
    let data_dir = scratch_dir(&format!("gone-{}", uuid::Uuid::new_v4().simple()));
    let port = free_port();
    let mut server = start_binary(&data_dir, port, &[]).await;
    // Without PG_VERSION no postgres accepts the folder as a cluster: every restart fails.
    let version = data_dir.join("postgres/PG_VERSION");
    std::fs::rename(&version, data_dir.join("PG_VERSION.moved")).unwrap();
    kill_cluster(&data_dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "upsertd kept running without a database");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(1), "a failure status");
    assert_eq!(postgres_processes_for(&data_dir), 0, "no postgres process is left behind");
    let _ = std::fs::remove_dir_all(&data_dir);
}
