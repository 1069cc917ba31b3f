use crate::error::{ApiError, Unready};
use crate::state::Db;
use actix_web::{web, HttpResponse};
use serde_json::json;

/// The process is up; says nothing about the database.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process is up"))
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 200 only when the database answers and every migration this binary knows is applied.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Database reachable, migrations applied"),
        Unready
    )
)]
pub async fn readyz(db: web::Data<Db>) -> Result<HttpResponse, ApiError> {
    let expected = crate::db::MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()).count() as i64;
    let applied = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut *db.conn().await?)
        .await
        .map_err(|e| ApiError::DatabaseUnavailable(e.to_string()))?;
    if applied < expected {
        return Err(ApiError::DatabaseUnavailable(format!("{applied} of {expected} migrations applied")));
    }
    Ok(HttpResponse::Ok().json(json!({"status": "ready", "migrations": applied})))
}
