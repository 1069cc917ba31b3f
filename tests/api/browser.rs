//! The legacy two-step flow run by a real browser: headless Chromium (Debian's `chromium`,
//! through its `chromedriver`) opens a page served from another origin than upsertd's
//! (tests/fixtures/two_step_page.html), which calls upsertd with `fetch` and writes what it saw
//! into itself. `.ci/run` installs both packages when they are missing.

use crate::helpers::TestApp;
use futures_util::FutureExt;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use thirtyfour::{ChromiumLikeCapabilities, DesiredCapabilities, WebDriver};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const PAGE: &str = include_str!("../fixtures/two_step_page.html");
/// How long the page may take to run its calls (each answers in milliseconds).
const PAGE_DEADLINE: Duration = Duration::from_secs(30);

/// Chromium driven by a chromedriver of its own, on a free port.
struct Browser {
    driver: Option<WebDriver>,
    chromedriver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        for program in [CHROMIUM, CHROMEDRIVER] {
            // Missing, it is a failure, never a skip: a skipped browser test looks like a pass.
            assert!(
                Path::new(program).exists(),
                "{program} is missing. This test drives Debian's Chromium through chromedriver: install them with \
                 `apt-get update && apt-get install -y chromium chromium-driver` (.ci/run does it when they are \
                 missing), or leave this test out with `cargo test -- --skip browser::`"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let chromedriver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            // A group of its own, which Chromium joins: one signal ends both (Drop).
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{CHROMEDRIVER} does not start: {e}"));
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "chromedriver did not listen within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = DesiredCapabilities::chrome();
        capabilities.set_binary(CHROMIUM).unwrap();
        // No sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        let args = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-crash-reporter"];
        for arg in args {
            capabilities.add_arg(arg).unwrap();
        }
        capabilities.add_arg("--window-size=1024,768").unwrap();
        capabilities.add_arg(&format!("--user-data-dir={}", profile.path().display())).unwrap();
        let driver = WebDriver::new(format!("http://127.0.0.1:{port}"), capabilities)
            .await
            .unwrap_or_else(|e| panic!("chromedriver cannot start {CHROMIUM}: {e}"));
        Self { driver: Some(driver), chromedriver, _profile: profile }
    }

    fn driver(&self) -> &WebDriver {
        self.driver.as_ref().expect("the browser runs until quit")
    }

    /// Opens `url` and returns what the page wrote once it says it is done.
    async fn run_page(&self, url: &str) -> Value {
        self.driver().goto(url).await.unwrap();
        let started = Instant::now();
        loop {
            let script = "const r = document.getElementById('result'); return r.dataset.done ? r.textContent : null";
            let seen = self.driver().execute(script, Vec::<Value>::new()).await.unwrap();
            if let Some(text) = seen.json().as_str() {
                return serde_json::from_str(text).unwrap_or_else(|e| panic!("the page wrote {text:?}: {e}"));
            }
            assert!(started.elapsed() < PAGE_DEADLINE, "the page did not finish within {PAGE_DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `scenario`; if it fails, saves a screenshot of the page and says where first.
    async fn check(&self, name: &str, scenario: impl std::future::Future<Output = ()>) {
        let failed = match AssertUnwindSafe(scenario).catch_unwind().await {
            Ok(()) => return,
            Err(panic) => panic,
        };
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("browser-{name}.png"));
        match self.driver().screenshot(&path).await {
            Ok(()) => eprintln!("browser test {name} failed; screenshot of the page: {}", path.display()),
            Err(error) => eprintln!("browser test {name} failed; no screenshot: {error}"),
        }
        std::panic::resume_unwind(failed);
    }

    async fn quit(mut self) {
        if let Some(driver) = self.driver.take() {
            let _ = driver.quit().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After a failure the session is still open, and thirtyfour's teardown of an unquit
        // driver blocks for its whole request timeout (120 s) here. So the driver is forgotten
        // and chromedriver's process group, Chromium with it, is killed instead.
        std::mem::forget(self.driver.take());
        // SAFETY: a plain system call on the process group this test started (its own id).
        unsafe { libc::killpg(self.chromedriver.id() as i32, libc::SIGKILL) };
        let _ = self.chromedriver.wait();
    }
}

/// Serves the page at `/` from a second origin (another port of 127.0.0.1); returns that origin.
fn serve_page() -> (String, actix_web::dev::ServerHandle) {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let page = || async { HttpResponse::Ok().content_type("text/html; charset=utf-8").body(PAGE) };
    let server =
        HttpServer::new(move || App::new().route("/", web::get().to(page))).listen(listener).unwrap().workers(1).run();
    let handle = server.handle();
    tokio::spawn(server);
    (origin, handle)
}

fn page_url(page_origin: &str, app: &TestApp, session: &str) -> String {
    let mut url = url::Url::parse(page_origin).unwrap();
    url.query_pairs_mut().append_pair("api", &app.address).append_pair("session", session);
    url.to_string()
}

/// The page's view of one answer, without the request id (a fresh one each time) or the ETag.
fn answer(saw: &Value, step: &str) -> Value {
    let seen = &saw[step];
    json!({
        "status": seen["status"], "outcome": seen["outcome"], "location": seen["location"],
        "replayed": seen["replayed"], "code": seen["code"],
    })
}

#[tokio::test]
async fn a_page_on_a_listed_origin_runs_the_two_step_flow_and_reads_every_answer() {
    let (page_origin, page_server) = serve_page();
    let app = TestApp::spawn_with(&["--cors-origins", &page_origin]).await;
    let browser = Browser::start().await;
    let session = format!("browser-{}", uuid::Uuid::new_v4());
    browser
        .check("listed", async {
            let saw = browser.run_page(&page_url(&page_origin, &app, &session)).await;
            let location = format!("/api/conversations/{session}");
            let answered = |status: u16, outcome: &str, location: Option<&str>, replayed: Option<&str>| {
                json!({"status": status, "outcome": outcome, "location": location, "replayed": replayed, "code": null})
            };
            let expected = [
                ("upload", answered(201, "inserted", Some(&location), None)),
                ("save", answered(200, "updated", None, None)),
                ("save_again", answered(200, "unchanged", None, None)),
                // The retry of the upload with its key: the first answer again.
                ("upload_retry", answered(201, "inserted", Some(&location), Some("true"))),
                ("invalid", json!({"status": 400, "outcome": null, "location": null, "replayed": null,
                                   "code": "malformed_request"})),
                // The simple form post (no key) puts back the audio's own analysis.
                ("plain_upload", answered(200, "updated", None, None)),
            ];
            for (step, wanted) in expected {
                assert_eq!(answer(&saw, step), wanted, "{step}; the page saw {saw:#}");
            }
            for step in ["upload", "save", "save_again", "upload_retry", "invalid", "plain_upload"] {
                let id = saw[step]["request_id"].as_str().unwrap_or_default();
                assert!(!id.is_empty(), "X-Request-Id is exposed on {step}: {saw:#}");
            }
            assert_eq!(saw["save"]["etag"], "\"2\"", "ETag is exposed: {saw:#}");

            let stored = format!("SELECT count(*) FROM conversations WHERE session_id = '{session}'");
            assert_eq!(app.count(&stored).await, 1, "one conversation for the session");
            assert_eq!(app.count("SELECT count(*) FROM conversations").await, 1);
            assert_eq!(app.count("SELECT count(*) FROM audio_files").await, 1, "the one recording, stored once");
            assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 1, "one key: the upload's");
        })
        .await;
    browser.quit().await;
    page_server.stop(false).await;
}

#[tokio::test]
async fn a_page_on_an_unlisted_origin_is_blocked_and_writes_nothing() {
    let (page_origin, page_server) = serve_page();
    let browser = Browser::start().await;
    // CORS on for another origin, and CORS off: either way the browser keeps every answer from
    // the page. The preflighted calls never leave the browser; the one simple form post does,
    // and local_only refuses it (no API_TOKENS, a foreign Origin).
    for (name, flags) in [("unlisted", &["--cors-origins", "https://app.example.com"][..]), ("off", &[][..])] {
        let app = TestApp::spawn_with(flags).await;
        let session = format!("browser-{}", uuid::Uuid::new_v4());
        browser
            .check(name, async {
                let saw = browser.run_page(&page_url(&page_origin, &app, &session)).await;
                for step in ["upload", "save", "save_again", "upload_retry", "invalid", "plain_upload"] {
                    assert_eq!(saw[step], json!({"error": "TypeError"}), "{name}: {step}; the page saw {saw:#}");
                }
                for table in ["conversations", "audio_files", "idempotency_keys"] {
                    let rows = app.count(&format!("SELECT count(*) FROM {table}")).await;
                    assert_eq!(rows, 0, "{name}: nothing is written to {table}");
                }
            })
            .await;
    }
    browser.quit().await;
    page_server.stop(false).await;
}
