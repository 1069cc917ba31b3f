//! Builds the application: shared state, every route in one table, and the HTTP server.

use crate::cli::Settings;
use crate::conversations::audio::AudioStore;
use crate::conversations::routes as conversations;
use crate::conversations::stt::Stt;
use crate::error::{problem_fallback, ApiError};
use crate::extract::JsonLimit;
use crate::ops::health;
use actix_web::dev::Server;
use actix_web::middleware::ErrorHandlers;
use actix_web::{web, App, HttpResponse, HttpServer};
use sqlx::PgPool;
use std::net::{SocketAddr, TcpListener};

/// What every handler can reach through `web::Data<AppState>`.
pub struct AppState {
    pub pool: PgPool,
    pub audio: AudioStore,
    pub stt: Option<Stt>,
    pub max_upload_bytes: u64,
}

pub struct Application {
    address: SocketAddr,
    server: Server,
}

impl Application {
    /// Binds `settings.bind` (port 0 picks a free port) and builds the server; it runs once
    /// [`Application::run_until_stopped`] is awaited.
    pub fn build(settings: &Settings, pool: PgPool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.bind)?;
        let address = listener.local_addr()?;
        let state = web::Data::new(AppState {
            pool,
            audio: AudioStore::open(&settings.data_dir)?,
            stt: settings
                .stt_url
                .clone()
                .map(|url| Stt::new(url, settings.stt_api_key.clone(), settings.stt_model.clone())),
            max_upload_bytes: settings.max_upload_bytes,
        });
        let json_limit = JsonLimit(settings.max_json_bytes);
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(ErrorHandlers::new().default_handler(problem_fallback))
                .app_data(state.clone())
                .app_data(json_limit)
                .configure(routes)
                .default_service(web::to(|| async {
                    Err::<HttpResponse, _>(ApiError::NotFound("no such route".into()))
                }))
        })
        .listen(listener)?;
        if let Some(workers) = settings.workers {
            server = server.workers(workers);
        }
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

    /// Serves until SIGINT/SIGTERM, then drains in-flight requests.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// 405 for a known path with a method it does not take.
fn method_not_allowed() -> actix_web::Route {
    web::to(|| async { Err::<HttpResponse, _>(ApiError::MethodNotAllowed) })
}

/// Every route the service answers, in one place.
fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz)).route("/readyz", web::get().to(health::readyz)).service(
        web::scope("/api")
            .service(
                web::resource("/conversations")
                    .post(conversations::create)
                    .get(conversations::list)
                    .default_service(method_not_allowed()),
            )
            .service(
                web::resource("/conversations/{session_id}")
                    .get(conversations::get)
                    .default_service(method_not_allowed()),
            )
            .service(
                web::resource("/conversations/{session_id}/messages")
                    .post(conversations::append_messages)
                    .get(conversations::list_messages)
                    .default_service(method_not_allowed()),
            )
            .service(
                web::resource("/save-analysis")
                    .post(conversations::save_analysis)
                    .default_service(method_not_allowed()),
            )
            .service(
                web::resource("/upload-audio").post(conversations::upload_audio).default_service(method_not_allowed()),
            )
            .service(web::resource("/audio/{id}").get(conversations::get_audio).default_service(method_not_allowed())),
    );
}
