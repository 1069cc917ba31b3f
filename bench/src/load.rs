//! The HTTP load generator: one OS thread running a single-threaded tokio runtime (so it can
//! never take more than one core), N HTTP/1.1 keep-alive connections, each sending its next
//! request as soon as the previous answer has been read (closed loop). Every request is built
//! from a global sequence number, so keys, bodies and headers differ per request.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One request to send.
pub struct Req {
    pub method: Method,
    pub path: String,
    pub content_type: &'static str,
    pub body: Bytes,
    pub idempotency_key: Option<String>,
}

impl Req {
    pub fn get(path: impl Into<String>) -> Self {
        Self { method: Method::GET, path: path.into(), content_type: JSON, body: Bytes::new(), idempotency_key: None }
    }

    /// A POST with a JSON body, and its `Idempotency-Key` when `key` is given.
    pub fn json(path: impl Into<String>, body: String, key: Option<String>) -> Self {
        Self::post(path, JSON, body.into(), key)
    }

    pub fn post(path: impl Into<String>, content_type: &'static str, body: Bytes, key: Option<String>) -> Self {
        Self { method: Method::POST, path: path.into(), content_type, body, idempotency_key: key }
    }
}

const JSON: &str = "application/json";

/// Builds request number `n`.
pub type Builder = Arc<dyn Fn(u64) -> Req + Send + Sync>;

/// `build` for turn `turn` of a workload run in several turns: each [`run`] numbers its
/// requests from 0, so without an offset a later turn would send an earlier one's session ids
/// again, and an insert workload would measure repeats.
pub fn turn(build: &Builder, turn: u64) -> Builder {
    let (build, offset) = (build.clone(), turn << 32);
    Arc::new(move |n| build(offset + n))
}

#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub ok: u64,
    pub client_errors: u64,
    pub server_errors: u64,
    pub route_missing: u64,
    pub transport_errors: u64,
    pub latencies_us: Vec<u32>,
    pub elapsed: Duration,
    /// CPU time of the load generator's thread during the run.
    pub cpu: Duration,
    pub first_error: Option<String>,
}

impl Outcome {
    pub fn completed(&self) -> u64 {
        self.ok + self.client_errors + self.server_errors + self.route_missing
    }

    /// Adds another run of the same workload (a later slice of one point) to this one.
    pub fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.client_errors += other.client_errors;
        self.server_errors += other.server_errors;
        self.route_missing += other.route_missing;
        self.transport_errors += other.transport_errors;
        self.latencies_us.extend(other.latencies_us);
        self.elapsed += other.elapsed;
        self.cpu += other.cpu;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

pub fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

pub fn children_cpu() -> Duration {
    // SAFETY: as above.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// Runs the closed loop for `duration` on its own thread and returns what it saw.
pub fn run(addr: SocketAddr, build: Builder, connections: usize, duration: Duration) -> Outcome {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let cpu_before = thread_cpu();
        let mut outcome = runtime.block_on(drive(addr, build, connections, duration));
        outcome.cpu = thread_cpu().saturating_sub(cpu_before);
        outcome
    })
    .join()
    .expect("load generator thread panicked")
}

async fn drive(addr: SocketAddr, build: Builder, connections: usize, duration: Duration) -> Outcome {
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> =
        (0..connections).map(|_| tokio::spawn(connection(addr, build.clone(), counter.clone(), deadline))).collect();
    let mut total = Outcome::default();
    for task in tasks {
        total.merge(task.await.unwrap_or_else(|e| Outcome {
            transport_errors: 1,
            first_error: Some(e.to_string()),
            ..Default::default()
        }));
    }
    total.elapsed = start.elapsed();
    total
}

async fn connection(addr: SocketAddr, build: Builder, counter: Arc<AtomicU64>, deadline: Instant) -> Outcome {
    let mut out = Outcome { latencies_us: Vec::with_capacity(65_536), ..Default::default() };
    let mut sender = None;
    while Instant::now() < deadline {
        if sender.is_none() {
            match open(addr).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    out.transport_errors += 1;
                    out.first_error.get_or_insert(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let send = sender.as_mut().expect("opened above");
        let http = to_http(build(counter.fetch_add(1, Ordering::Relaxed))).expect("valid request");
        let t0 = Instant::now();
        let result = async {
            let response = send.send_request(http).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        }
        .await;
        match result {
            Ok((status, body)) => {
                out.latencies_us.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                let code = status.as_u16();
                if status.is_success() {
                    out.ok += 1;
                } else if code == 404 || code == 405 {
                    out.route_missing += 1;
                    note(&mut out.first_error, code, &body);
                } else if status.is_server_error() {
                    out.server_errors += 1;
                    note(&mut out.first_error, code, &body);
                } else {
                    out.client_errors += 1;
                    note(&mut out.first_error, code, &body);
                }
            }
            Err(e) => {
                out.transport_errors += 1;
                out.first_error.get_or_insert(format!("http: {e}"));
                sender = None;
            }
        }
    }
    out
}

fn note(first: &mut Option<String>, code: u16, body: &[u8]) {
    if first.is_none() {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
        *first = Some(format!("{code}: {text}"));
    }
}

async fn open(addr: SocketAddr) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The HTTP/1.1 request for `req`: its body and content type, and its `Idempotency-Key` when it
/// has one.
fn to_http(req: Req) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
    let mut http = Request::builder()
        .method(req.method)
        .uri(&req.path)
        .header(hyper::header::HOST, "127.0.0.1")
        .header(hyper::header::CONTENT_TYPE, req.content_type);
    if let Some(key) = &req.idempotency_key {
        http = http.header("idempotency-key", key);
    }
    http.body(Full::new(req.body))
}

/// One request outside a measurement (setup): status and body.
pub fn once(addr: SocketAddr, req: Req) -> anyhow::Result<(u16, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut sender = open(addr).await?;
        let http = to_http(req)?;
        let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(http)).await??;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}

/// p50 and p99 in milliseconds.
pub fn percentiles(latencies_us: &mut [u32]) -> (f64, f64) {
    if latencies_us.is_empty() {
        return (0.0, 0.0);
    }
    latencies_us.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies_us.len() as f64 * q).ceil() as usize).clamp(1, latencies_us.len()) - 1;
        f64::from(latencies_us[i]) / 1000.0
    };
    (at(0.50), at(0.99))
}
