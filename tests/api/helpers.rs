use futures_util::{stream, StreamExt};
use reqwest::{Response, StatusCode};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use std::borrow::Borrow;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use upsertd::db::cluster::{Cluster, Durability};
use upsertd::settings::Settings;
use upsertd::startup::Application;
use uuid::Uuid;

const TEMPLATE: &str = "upsertd_test_template";
const TEST_DB_PREFIX: &str = "upsertd_test_";

/// The PostgreSQL server all tests of this process share; each test gets its own database.
struct TestServer {
    admin: PgConnectOptions,
    /// `DATABASE_URL` named a Citus coordinator whose `postgres` database has its workers
    /// registered (README, "Scaling out"): each test database is then created on every node and
    /// migrated on its own, since a template cannot copy the workers' shards.
    citus: Option<Citus>,
    _cluster: std::sync::Mutex<Option<Cluster>>,
}

/// Where a Citus coordinator and its workers listen, as its `pg_dist_node` says.
struct Citus {
    coordinator: (String, i32),
    workers: Vec<(String, i32)>,
}

impl Citus {
    /// The nodes registered in the database `conn` is connected to, if it runs Citus.
    async fn registered(conn: &mut PgConnection) -> Option<Self> {
        let citus: bool = sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        if !citus {
            return None;
        }
        let nodes: Vec<(i32, String, i32)> = sqlx::query_as(
            "SELECT groupid, nodename, nodeport FROM pg_dist_node WHERE noderole = 'primary' ORDER BY groupid",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let coordinator = nodes.iter().find(|(group, ..)| *group == 0).expect("the coordinator is registered");
        let workers = nodes.iter().filter(|(group, ..)| *group != 0).map(|(_, h, p)| (h.clone(), *p)).collect();
        Some(Self { coordinator: (coordinator.1.clone(), coordinator.2), workers })
    }

    /// Sets up database `name`, just created on every node, as a Citus database: the extension
    /// on each node, then the coordinator and the workers registered in it.
    async fn prepare(&self, admin: &PgConnectOptions, name: &str) {
        for (host, port) in &self.workers {
            let options = admin.clone().host(host).port(*port as u16).database(name);
            let mut worker = PgConnection::connect_with(&options).await.expect("connect to a Citus worker");
            sqlx::query("CREATE EXTENSION IF NOT EXISTS citus").execute(&mut worker).await.unwrap();
            worker.close().await.unwrap();
        }
        let mut conn = PgConnection::connect_with(&admin.clone().database(name)).await.unwrap();
        sqlx::query("CREATE EXTENSION IF NOT EXISTS citus").execute(&mut conn).await.unwrap();
        sqlx::query("SELECT citus_set_coordinator_host($1, $2)")
            .bind(&self.coordinator.0)
            .bind(self.coordinator.1)
            .execute(&mut conn)
            .await
            .unwrap();
        for (host, port) in &self.workers {
            sqlx::query("SELECT citus_add_node($1, $2)").bind(host).bind(port).execute(&mut conn).await.unwrap();
        }
        conn.close().await.unwrap();
    }
}

/// A connection to the server's `postgres` database that creates and drops databases on every
/// node of a Citus cluster too.
async fn admin_connection(admin: &PgConnectOptions, citus: bool) -> PgConnection {
    let mut conn = PgConnection::connect_with(admin).await.expect("connect to the test server");
    if citus {
        sqlx::query("SET citus.enable_create_database_propagation = on").execute(&mut conn).await.unwrap();
    }
    conn
}

static SERVER: OnceLock<TestServer> = OnceLock::new();

fn server() -> &'static TestServer {
    // Set up once, on a thread of its own: each #[tokio::test] has its own runtime, and a
    // connection must not outlive the runtime it was made on.
    SERVER.get_or_init(|| {
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(TestServer::start())
        })
        .join()
        .expect("test database setup panicked")
    })
}

const SCRATCH_PREFIX: &str = "upsertd-tests-";

/// A folder the `postgres` OS user can reach even when the checkout lives under /root: one
/// per checkout, whose test cluster the next run of that checkout reuses.
pub fn scratch_dir(name: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    env!("CARGO_TARGET_TMPDIR").hash(&mut hasher);
    std::env::temp_dir().join(format!("{SCRATCH_PREFIX}{:x}", hasher.finish())).join(name)
}

/// Removes the scratch folders of other checkouts that no test has used for a day and whose
/// cluster is not running: a clean clone (CI's) leaves its folder behind, about 140 MB, and
/// nothing else would ever reuse it.
fn prune_stale_scratch_dirs() {
    const IDLE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
    let ours = scratch_dir("");
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for dir in entries.flatten().map(|entry| entry.path()) {
        let named = dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(SCRATCH_PREFIX));
        let idle = |path: &Path| {
            std::fs::metadata(path).and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age > IDLE))
        };
        let running = dir.join("cluster/postgres/postmaster.pid").exists();
        if named && !ours.starts_with(&dir) && !running && idle(&dir) && idle(&dir.join("cluster/postgres.log")) {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

impl TestServer {
    async fn start() -> Self {
        let (admin, cluster) = match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
            Some(url) => (PgConnectOptions::from_str(&url).expect("DATABASE_URL parses").database("postgres"), None),
            None => {
                prune_stale_scratch_dirs();
                let cluster = Cluster::start(&scratch_dir("cluster"), Durability::Throwaway)
                    .unwrap_or_else(|e| panic!("cannot start the test cluster: {e:#}"));
                (cluster.connect_options("postgres"), Some(cluster))
            }
        };
        let mut conn = PgConnection::connect_with(&admin).await.expect("connect to the test server");
        let citus = Citus::registered(&mut conn).await;
        conn.close().await.unwrap();
        // Earlier runs' databases, node by node: a run cut short may have left one on some
        // nodes of a Citus cluster only.
        let workers =
            citus.iter().flat_map(|c| &c.workers).map(|(host, port)| admin.clone().host(host).port(*port as u16));
        for node in std::iter::once(admin.clone()).chain(workers) {
            let mut conn = PgConnection::connect_with(&node).await.expect("connect to the test server");
            let leftovers: Vec<String> =
                sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'upsertd\\_test\\_%'")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
            for name in leftovers {
                let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                sqlx::query(&drop).execute(&mut conn).await.unwrap();
            }
            conn.close().await.unwrap();
        }
        let server = Self { admin, citus, _cluster: std::sync::Mutex::new(cluster) };
        if server.citus.is_none() {
            server.create_database(TEMPLATE).await;
        }
        server
    }

    /// A migrated database: a copy of the template, or on Citus made and migrated afresh.
    async fn create_database(&self, name: &str) {
        let mut conn = admin_connection(&self.admin, self.citus.is_some()).await;
        let template =
            if name == TEMPLATE || self.citus.is_some() { String::new() } else { format!(" TEMPLATE {TEMPLATE}") };
        sqlx::query(&format!("CREATE DATABASE {name}{template}")).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        if template.is_empty() {
            if let Some(citus) = &self.citus {
                citus.prepare(&self.admin, name).await;
            }
            let mut fresh = PgConnection::connect_with(&self.admin.clone().database(name)).await.unwrap();
            upsertd::db::MIGRATOR.run(&mut fresh).await.expect("migrations apply to a fresh database");
            fresh.close().await.unwrap();
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub data_dir: PathBuf,
    db_name: String,
    handles: Vec<actix_web::dev::ServerHandle>,
    audit_at_end: bool,
}

async fn start_server(pool: &PgPool, data_dir: &Path, flags: &[&str]) -> (String, actix_web::dev::ServerHandle) {
    let data_dir_flag = data_dir.to_str().unwrap().to_owned();
    let mut args = vec!["--bind", "127.0.0.1:0", "--workers", "2", "--data-dir", &data_dir_flag];
    args.extend_from_slice(flags);
    let app = Application::build(&Settings::from_args(args), pool.clone()).await.expect("the app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    (address, handle)
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// `flags` are extra command-line settings, e.g. `["--max-upload-bytes", "1000"]`.
    pub async fn spawn_with(flags: &[&str]) -> Self {
        // TEST_LOG=1: the servers' logs on stderr (RUST_LOG filters them, as for the service).
        if std::env::var_os("TEST_LOG").is_some() {
            upsertd::telemetry::init();
        }
        let server = server();
        let db_name = format!("{TEST_DB_PREFIX}{}", Uuid::new_v4().simple());
        server.create_database(&db_name).await;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect_with(server.admin.clone().database(&db_name))
            .await
            .unwrap();
        let data_dir = scratch_dir(&format!("apps/{db_name}"));
        let (address, handle) = start_server(&pool, &data_dir, flags).await;
        let client = reqwest::Client::new();
        Self { address, client, pool, data_dir, db_name, handles: vec![handle], audit_at_end: true }
    }

    /// For a test that breaks its database on purpose, which the audit at its end would report.
    pub fn skip_final_audit(&mut self) {
        self.audit_at_end = false;
    }

    /// Another server on this test's database, as a second upsertd process would be (its own
    /// coalescing lanes and pools); returns its address. Stopped with the test.
    pub async fn second_server(&mut self) -> String {
        let (address, handle) = start_server(&self.pool, &self.data_dir, &[]).await;
        self.handles.push(handle);
        address
    }

    /// A URL that reaches this test's own database, for the binary run as another process.
    pub fn database_url(&self) -> String {
        let options = self.pool.connect_options();
        let database = options.get_database().expect("test pools name their database");
        if let Some(mut url) =
            std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()).and_then(|u| url::Url::parse(&u).ok())
        {
            url.set_path(database);
            return url.to_string();
        }
        let socket = options.get_socket().expect("the test cluster listens on a socket");
        // The embedded cluster asks for its superuser's password, kept in pgpass beside it.
        let pgpass = std::fs::read_to_string(scratch_dir("cluster").join("pgpass")).expect("the test cluster's pgpass");
        let password = pgpass.trim().rsplit(':').next().unwrap().to_owned();
        format!(
            "postgres://{}:{password}@localhost:{}/{database}?host={}",
            options.get_username(),
            options.get_port(),
            socket.display()
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post_json(&self, path: &str, body: impl Borrow<Value>) -> Response {
        self.client.post(self.url(path)).json(body.borrow()).send().await.expect("request reaches the server")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.expect("request reaches the server")
    }

    /// Follows `next_cursor` from the first page of `list` (a path with its query) to the
    /// last, returning every item in the order served.
    pub async fn all_pages(&self, list: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor = String::new();
        for _ in 0..10_000 {
            let page: Value = self.get(&format!("{list}&cursor={cursor}")).await.json().await.unwrap();
            items.extend(page["items"].as_array().expect("a page has items").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = next.to_owned(),
                None => return items,
            }
        }
        panic!("{list}: 10,000 pages and still a next_cursor; the cursor does not advance");
    }

    /// Create-or-get of a participation; panics unless it succeeds.
    pub async fn participation(&self, campaign_id: &str, streamer_id: &str) -> Value {
        let response = self
            .post_json(
                "/api/participations",
                serde_json::json!({"campaign_id": campaign_id, "streamer_id": streamer_id}),
            )
            .await;
        assert!(response.status().is_success(), "creating a participation: {}", response.status());
        response.json().await.unwrap()
    }

    pub async fn save_analysis(&self, body: impl Borrow<Value>) -> Response {
        self.post_json("/api/save-analysis", body).await
    }

    pub async fn create_conversation(&self, body: impl Borrow<Value>) -> Response {
        self.post_json("/api/conversations", body).await
    }

    pub async fn get_conversation(&self, session_id: &str) -> Response {
        self.get(&format!("/api/conversations/{session_id}")).await
    }

    pub async fn append_messages(&self, session_id: &str, body: impl Borrow<Value>) -> Response {
        self.post_json(&format!("/api/conversations/{session_id}/messages"), body).await
    }

    pub async fn upload_audio(&self, form: reqwest::multipart::Form) -> Response {
        self.client
            .post(self.url("/api/upload-audio"))
            .multipart(form)
            .send()
            .await
            .expect("request reaches the server")
    }

    /// Sends `n` requests, `concurrency` at a time, and returns (status, body) of each.
    pub async fn concurrently<F, Fut>(&self, n: usize, concurrency: usize, request: F) -> Vec<(StatusCode, Value)>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = Response>,
    {
        stream::iter(0..n)
            .map(|i| {
                let sent = request(i);
                async move {
                    let response = sent.await;
                    let status = response.status();
                    (status, response.json::<Value>().await.unwrap_or(Value::Null))
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await
    }

    /// Create-or-get of existing resources shares reads (`coalesce::Reads`): after one create
    /// per body, 600 concurrent calls over them, half with an `Idempotency-Key`, must each get
    /// the resource of their own body (`key_of` names it in an answer), nothing is inserted,
    /// the keyed calls are recorded, and one of them replays.
    pub async fn creates_of_existing_each_get_their_own(
        &self,
        path: &str,
        bodies: &[Value],
        key_of: impl Fn(&Value) -> String,
        table: &str,
    ) {
        let mut ids = std::collections::HashMap::new();
        let mut created_ids = Vec::new();
        for body in bodies {
            let created: Value = self.post_json(path, body.clone()).await.json().await.unwrap();
            ids.insert(key_of(&created), created["id"].clone());
            created_ids.push(created["id"].clone());
        }
        let send = |i: usize| {
            let request = self.client.post(self.url(path)).json(&bodies[i % bodies.len()]);
            let request = if i % 2 == 0 { request.header("idempotency-key", format!("read-{i}")) } else { request };
            async move { request.send().await.expect("request reaches the server") }
        };
        let results = self.concurrently(600, 64, send).await;
        let mut per_key = std::collections::HashMap::new();
        for (status, found) in &results {
            assert_eq!(*status, 200, "{found}");
            let key = key_of(found);
            assert_eq!(found["id"], ids[&key], "the resource of its own body: {found}");
            *per_key.entry(key).or_insert(0) += 1;
        }
        assert!(per_key.values().all(|n| *n == 600 / bodies.len()), "every call answered once: {per_key:?}");
        assert_eq!(self.count(&format!("SELECT count(*) FROM {table}")).await, bodies.len() as i64);
        assert_eq!(self.count("SELECT count(*) FROM idempotency_keys WHERE response_status = 200").await, 300);
        let replay = send(42).await;
        assert_eq!(replay.headers()["idempotent-replayed"], "true");
        let replay: Value = replay.json().await.unwrap();
        assert_eq!(replay["id"], created_ids[42 % bodies.len()]);
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.expect("count query runs")
    }
}

/// Every test that passes also proves its database keeps the contract: the ledger, the message
/// counts, no key stuck (`upsertd audit`'s checks).
async fn final_audit(database: &PgConnectOptions, data_dir: &Path) -> Result<(), String> {
    let mut conn = PgConnection::connect_with(database).await.map_err(|e| format!("cannot connect: {e}"))?;
    let report = upsertd::ops::audit::run(&mut conn, data_dir).await.map_err(|e| format!("{e:#}"))?;
    conn.close().await.ok();
    if report.clean {
        Ok(())
    } else {
        Err(report.render())
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The stop command is sent when called; awaiting its completion is not needed here.
        for handle in &self.handles {
            drop(handle.stop(false));
        }
        let admin = server().admin.clone();
        let db_name = self.db_name.clone();
        let data_dir = self.data_dir.clone();
        // A test that failed has said why already.
        let audit = self.audit_at_end && !std::thread::panicking();
        // Drop runs inside the test's runtime, which cannot block on itself.
        let audited = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let audited = runtime.block_on(async {
                let audited =
                    if audit { final_audit(&admin.clone().database(&db_name), &data_dir).await } else { Ok(()) };
                if let Ok(mut conn) = PgConnection::connect_with(&admin).await {
                    if server().citus.is_some() {
                        let _ =
                            sqlx::query("SET citus.enable_create_database_propagation = on").execute(&mut conn).await;
                    }
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
                audited
            });
            let _ = std::fs::remove_dir_all(data_dir);
            audited
        })
        .join();
        if let Ok(Err(findings)) = audited {
            panic!("the audit at the end of the test:\n{findings}");
        }
    }
}

/// Asserts status and stable `code` of a problem document.
pub async fn assert_problem(response: Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status for expected {code}");
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "problem body: {body}");
    assert_eq!(body["status"], status);
    body
}

/// A stand-in for an OpenAI-compatible transcription API on a free port: it checks that the
/// request carries the `file` and `model` parts and answers `text` after `delay`.
pub fn fake_stt(text: &'static str, delay: std::time::Duration) -> FakeStt {
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let calls = Arc::new(AtomicUsize::new(0));
    let called = calls.clone();
    let transcribe = move |req: HttpRequest, body: web::Bytes| {
        called.fetch_add(1, Ordering::SeqCst);
        async move {
            let content_type = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
            let form = String::from_utf8_lossy(&body);
            if !content_type.starts_with("multipart/form-data")
                || !form.contains("name=\"file\"")
                || !form.contains("name=\"model\"")
            {
                return HttpResponse::BadRequest().finish();
            }
            tokio::time::sleep(delay).await;
            HttpResponse::Ok().json(serde_json::json!({"text": text}))
        }
    };
    let server =
        HttpServer::new(move || App::new().route("/v1/audio/transcriptions", web::post().to(transcribe.clone())))
            .listen(listener)
            .unwrap()
            .workers(1)
            .run();
    let handle = server.handle();
    tokio::spawn(server);
    FakeStt { url: format!("http://127.0.0.1:{port}/v1/audio/transcriptions"), handle, calls }
}

/// A running [`fake_stt`].
pub struct FakeStt {
    /// The endpoint's URL, for `STT_URL`.
    pub url: String,
    pub handle: actix_web::dev::ServerHandle,
    /// How many requests reached it (counted on arrival, before its delay).
    pub calls: Arc<AtomicUsize>,
}
