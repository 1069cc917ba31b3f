//! Builds the application: shared state, every route in one table, and the HTTP server.

use crate::auth::{self, ApiTokens};
use crate::chats::routes as chats;
use crate::coalesce::Reads;
use crate::conversations::audio::AudioStore;
use crate::conversations::batcher as conversations_batcher;
use crate::conversations::routes as conversations;
use crate::conversations::stt::Stt;
use crate::cors;
use crate::db::shards::Shards;
use crate::error::{problem_fallback, ApiError};
use crate::extract::JsonConfig;
use crate::idempotency::{self, Claims, IdempotencyConfig, Keys};
use crate::local_only::{self, LocalOnly};
use crate::ops::{health, metrics};
use crate::participations::batcher as participations_batcher;
use crate::participations::routes as participations;
use crate::settings::Settings;
use crate::state::{Counters, Db, Lookups, PublicBaseUrl, Uploads, Upserts, WorkerPools};
use crate::telemetry;
use actix_web::dev::Server;
use actix_web::middleware::{from_fn, ErrorHandlers};
use actix_web::{guard, web, App, HttpResponse, HttpServer};
use sqlx::PgPool;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use utoipa::OpenApi;

pub struct Application {
    address: SocketAddr,
    server: Server,
}

impl Application {
    /// Binds `settings.bind` (port 0 picks a free port) and builds the server; it runs once
    /// [`Application::run_until_stopped`] is awaited.
    pub async fn build(settings: &Settings, pool: PgPool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.bind)?;
        let address = listener.local_addr()?;
        let idempotency = IdempotencyConfig { ttl: settings.idempotency_ttl.0, lease: settings.idempotency_lease.0 };
        idempotency::render_rows_with(idempotency::Kept::Shared, participations_batcher::RecordedAnswers);
        idempotency::render_rows_with(idempotency::Kept::Own, conversations_batcher::RecordedAnswers);
        let uploads = web::Data::new(Uploads {
            audio: AudioStore::open(&settings.data_dir)?,
            stt: settings
                .stt_url
                .clone()
                .map(|url| Stt::new(url, settings.stt_api_key.clone(), settings.stt_model.clone())),
            max_bytes: settings.max_upload_bytes,
        });
        let public_base_url = web::Data::new(PublicBaseUrl(
            settings
                .public_base_url
                .clone()
                .unwrap_or_else(|| format!("http://{address}"))
                .trim_end_matches('/')
                .to_owned(),
        ));
        // Coalescers are shared by the workers: a lane holds the writes of one row, whichever
        // worker they came through, and on Citus of one shard.
        let counters = participations_batcher::Batcher::default();
        let upserts = conversations_batcher::Batcher::new(Shards::load(&pool, "conversations").await);
        let chat_reads = Reads::<crate::chats::store::ByKey>::default();
        let participation_reads = Reads::<crate::participations::store::ByPair>::default();
        let conversation_reads = Reads::<crate::conversations::store::BySessionId>::default();
        let claims = Claims::new(Shards::load(&pool, "idempotency_keys").await);
        // The pool's maximum (DB_MAX_CONNECTIONS), shared out among the workers' pools.
        let max_connections = pool.options().get_max_connections().max(1);
        // Each worker has a pool of its own, and at least one connection in it: no more
        // workers than connections.
        let workers = settings
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, max_connections as usize);
        let started = Arc::new(AtomicUsize::new(0));
        let failures = crate::db::Failures::default();
        let pools = web::Data::new(WorkerPools::default());
        let tokens = web::Data::new(ApiTokens::parse(settings.api_tokens.as_deref()));
        let json = JsonConfig { limit: settings.max_json_bytes, require_content_type: !tokens.enabled() };
        let cors_origins = settings.cors_origins.clone().unwrap_or_default();
        // Without tokens, requests must name this server and writes come from no foreign page.
        let local_only = (!tokens.enabled())
            .then(|| web::Data::new(LocalOnly::new(address, settings.public_base_url.as_deref(), &cors_origins)));
        crate::recorder::handle();
        let server = HttpServer::new(move || {
            // A worker that restarts after a panic is counted again, and takes the same place.
            let worker = started.fetch_add(1, Ordering::Relaxed) % workers;
            let connections = connections_of(max_connections, workers, worker);
            // One of a worker's connections stays warm outside its pool (`db::Conn`), when it
            // has more than one.
            let warm = connections > 1;
            let pool = worker_pool(&pool, connections - u32::from(warm));
            if warm {
                crate::db::keep_warm(&pool, &failures);
            }
            pools.insert(worker, pool.clone());
            if worker == 0 {
                actix_web::rt::spawn(purge_idempotency_keys(pool.clone(), idempotency));
            }
            let keys = web::Data::new(idempotency::Layer {
                pool: pool.clone(),
                config: idempotency,
                claims: claims.clone(),
                max_multipart_bytes: uploads.max_bytes as usize + 1024 * 1024,
            });
            let counters = Counters { batcher: counters.clone(), pool: pool.clone(), idempotency };
            let upserts = Upserts { batcher: upserts.clone(), pool: pool.clone(), idempotency };
            let chat_lookups = Lookups { reads: chat_reads.clone(), pool: pool.clone() };
            let participation_lookups = Lookups { reads: participation_reads.clone(), pool: pool.clone() };
            let conversation_lookups = Lookups { reads: conversation_reads.clone(), pool: pool.clone() };
            let local_only = local_only.clone();
            // Innermost first. CORS sits outside the problem rewriting, so that the headers it
            // adds stay on problem documents, and outside everything that could refuse a
            // preflight (src/cors.rs); inside telemetry, so that preflights are logged, counted
            // and given a request id too.
            App::new()
                .wrap(from_fn(local_only::refuse_foreign))
                .wrap(ErrorHandlers::new().default_handler(problem_fallback))
                .wrap(cors::layer(&cors_origins))
                .wrap(from_fn(cors::only_when_granted))
                .wrap(from_fn(telemetry::observe))
                .app_data(web::Data::new(Db { pool }))
                .app_data(web::Data::new(counters))
                .app_data(web::Data::new(upserts))
                .app_data(web::Data::new(chat_lookups))
                .app_data(web::Data::new(participation_lookups))
                .app_data(web::Data::new(conversation_lookups))
                .app_data(uploads.clone())
                .app_data(public_base_url.clone())
                .app_data(keys)
                .app_data(pools.clone())
                .app_data(json)
                .app_data(tokens.clone())
                .configure(move |cfg| {
                    if let Some(local_only) = local_only {
                        cfg.app_data(local_only);
                    }
                })
                .configure(routes)
                .configure(docs)
                .default_service(web::to(|| async {
                    Err::<HttpResponse, _>(ApiError::NotFound("no such route".into()))
                }))
        })
        .listen(listener)?
        .workers(workers);
        Ok(Self { address, server: server.run() })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT/SIGTERM, then drains in-flight requests. The first worker also
    /// purges expired idempotency keys while it serves.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Runs the purge a few times per TTL (at most once a minute, at least every 200 ms).
async fn purge_idempotency_keys(pool: PgPool, config: IdempotencyConfig) {
    let every = (config.ttl / 4).clamp(std::time::Duration::from_millis(200), std::time::Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        match idempotency::purge_expired(&pool).await {
            Ok(0) => {}
            Ok(purged) => tracing::debug!(purged, "purged expired idempotency keys"),
            Err(error) => tracing::warn!(%error, "purging expired idempotency keys failed; will retry"),
        }
    }
}

/// Each HTTP worker gets its own pool, made on the worker's runtime. A connection belongs to
/// the runtime that opened it, and on SIGTERM an idle worker's runtime ends first: with one
/// shared pool, a request still draining on another worker could be handed a connection whose
/// runtime was gone and fail.
fn worker_pool(shared: &PgPool, connections: u32) -> PgPool {
    shared.options().clone().max_connections(connections).connect_lazy_with((*shared.connect_options()).clone())
}

/// Worker `worker`'s share of `max` connections: the workers' shares add up to `max` exactly.
fn connections_of(max: u32, workers: usize, worker: usize) -> u32 {
    let workers = workers as u32;
    max / workers + u32::from((worker as u32) < max % workers)
}

/// A route path served for `methods` (the table's names); any other method answers 405 with
/// the `Allow` header RFC 9110 §15.5.6 requires, which lists them (a `get` brings `HEAD`).
/// `pattern` is its whole path, the route label of its logs and metrics.
fn at(path: &str, pattern: &'static str, methods: &[&str]) -> actix_web::Resource {
    let allow = methods
        .iter()
        .flat_map(|name| match *name {
            "get" => ["GET", "HEAD"].as_slice(),
            _ => std::slice::from_ref(name),
        })
        .map(|name| name.to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(", ");
    web::resource(path).app_data(telemetry::Route(pattern)).default_service(web::to(move || {
        let allow = allow.clone();
        async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow }) }
    }))
}

/// The route of a method in the table. A `get` route answers `HEAD` too (RFC 9110 §9.3.2): the
/// same handler, and actix-web sends the headers without the body.
fn method(name: &str) -> actix_web::Route {
    match name {
        "get" => web::route().guard(guard::Any(guard::Get()).or(guard::Head())),
        "post" => web::post(),
        other => unreachable!("the route table names only get and post, not {other}"),
    }
}

/// Routes grouped into sections, each a scope of its own named by the static part of its
/// paths before the first `{param}` segment (`/participations`, `/api/overlay`). actix-web
/// tries services in order and matches every resource with a `{param}` by running its regex;
/// a static scope prefix is a string comparison. In one flat list a click tried about eight
/// regexes before its own (6.7% of the server's CPU on hot clicks, bench/PROFILE.md); now it
/// tries those of its section only.
#[derive(Default)]
struct Sections(Vec<(&'static str, Vec<actix_web::Resource>)>);

impl Sections {
    /// Adds the resource `build` makes from the rest of `path` after its section.
    fn add(&mut self, path: &'static str, build: impl FnOnce(&'static str) -> actix_web::Resource) {
        let split = path.find("/{").unwrap_or(path.len());
        let (section, rest) = path.split_at(split);
        let resource = build(rest);
        match self.0.iter_mut().find(|(name, _)| *name == section) {
            Some((_, resources)) => resources.push(resource),
            None => self.0.push((section, vec![resource])),
        }
    }

    /// The sections, in the order their first routes were added.
    fn scopes(self) -> impl Iterator<Item = actix_web::Scope> {
        self.0
            .into_iter()
            .map(|(section, resources)| resources.into_iter().fold(web::scope(section), actix_web::Scope::service))
    }
}

/// Declares every route once: registers it with its policies and lists it in [`ROUTES`],
/// which a test compares with the OpenAPI document so the two cannot drift apart.
///
/// Policies are bound here, to what the router matched, never to the URL as a string: the
/// routes under `api` sit in one scope wrapped in bearer auth (the public ones, the overlay
/// among them, are registered before it and outside it), and a route that takes
/// `Idempotency-Key`s names how, `post[Keys::IN_TRANSACTION] handler`, and is wrapped in the
/// guard.
macro_rules! route_table {
    (
        public { $($path:literal => [$($method:ident $handler:path),+ $(,)?]),* $(,)? }
        api $scope:literal { $($api:literal => [$($verb:ident $([$keys:expr])? $action:path),+ $(,)?]),* $(,)? }
    ) => {
        /// Every (method, path) the service answers.
        pub const ROUTES: &[(&str, &str)] = &[
            $($((stringify!($method), $path),)+)*
            $($((stringify!($verb), concat!($scope, $api)),)+)*
        ];

        fn routes(cfg: &mut web::ServiceConfig) {
            let mut public = Sections::default();
            $(public.add($path, |rest| {
                at(rest, $path, &[$(stringify!($method)),+])$(.route(method(stringify!($method)).to($handler)))+
            });)*
            public.scopes().for_each(|scope| { cfg.service(scope); });
            let mut api = Sections::default();
            $(api.add($api, |rest| {
                at(rest, concat!($scope, $api), &[$(stringify!($verb)),+])
                    $(.route(method(stringify!($verb)).to($action)$(.wrap(idempotency::keys($keys)))?))+
            });)*
            let protected = web::scope($scope).wrap(from_fn(auth::require_token));
            cfg.service(api.scopes().fold(protected, actix_web::Scope::service));
        }
    };
}

route_table! {
    public {
        "/healthz" => [get health::healthz],
        "/readyz" => [get health::readyz],
        "/metrics" => [get metrics::render],
        // What a stream overlay loads: it holds only its token, never an API token.
        "/api/overlay/{token}" => [get participations::overlay],
        "/api/overlay/{token}/qr-code.png" => [get participations::overlay_qr_code_png],
    }
    api "/api" {
        "/conversations" => [post[Keys::IN_TRANSACTION] conversations::create, get conversations::list],
        "/conversations/{session_id}" => [get conversations::get],
        "/conversations/{session_id}/messages" => [
            post[Keys::IN_TRANSACTION] conversations::append_messages,
            get conversations::list_messages,
        ],
        "/save-analysis" => [post[Keys::IN_TRANSACTION] conversations::save_analysis],
        "/upload-audio" => [post[Keys::MULTIPART] conversations::upload_audio],
        "/audio/{id}" => [get conversations::get_audio],
        "/chats" => [post[Keys::IN_TRANSACTION] chats::create, get chats::list],
        "/chats/{id}" => [get chats::get],
        "/participations" => [post[Keys::IN_TRANSACTION] participations::create],
        "/participations/{id}" => [get participations::get],
        "/participations/{id}/impressions" => [post[Keys::IN_STATEMENT] participations::impressions],
        "/participations/{id}/clicks" => [post[Keys::IN_STATEMENT] participations::clicks],
        "/participations/{id}/viewer-samples" => [post[Keys::IN_STATEMENT] participations::viewer_samples],
        "/participations/{id}/earnings" => [post[Keys::IN_STATEMENT] participations::earnings],
        "/participations/{id}/qr-code" => [post[Keys::IN_TRANSACTION] participations::make_qr_code],
        "/participations/{id}/qr-code.png" => [get participations::qr_code_png],
        "/participations/{id}/chat-command" => [post[Keys::IN_TRANSACTION] participations::chat_command],
    }
}

/// The OpenAPI document and its docs page; the page's assets are compiled into the binary.
fn docs(cfg: &mut web::ServiceConfig) {
    cfg.service(
        utoipa_swagger_ui::SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", crate::openapi::ApiDoc::openapi()),
    )
    .service(web::redirect("/docs", "/docs/"));
}

#[cfg(test)]
mod tests {
    use super::connections_of;

    #[test]
    fn the_workers_pools_add_up_to_the_maximum_and_none_is_empty() {
        for max in 1..=40_u32 {
            for workers in 1..=max as usize {
                let shares: Vec<u32> = (0..workers).map(|w| connections_of(max, workers, w)).collect();
                assert_eq!(shares.iter().sum::<u32>(), max, "{max} connections, {workers} workers: {shares:?}");
                assert!(shares.iter().all(|s| *s >= 1), "{max} connections, {workers} workers: {shares:?}");
            }
        }
    }
}
