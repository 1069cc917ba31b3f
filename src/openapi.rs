//! The OpenAPI document, generated from the handlers' own annotations, and its docs page.

use crate::chats::routes as chats;
use crate::conversations::routes as conversations;
use crate::ops::{health, metrics};
use crate::participations::routes as participations;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "upsertd",
        description = "Writes that are safe to repeat. The contract: API.md v1. Errors are RFC 9457 problem \
                       documents; every POST under /api accepts Idempotency-Key; writes answer 201 when they \
                       inserted, 200 otherwise, with Upsert-Outcome: inserted | updated | unchanged."
    ),
    paths(
        conversations::create,
        conversations::get,
        conversations::list,
        conversations::save_analysis,
        conversations::upload_audio,
        conversations::append_messages,
        conversations::list_messages,
        conversations::get_audio,
        chats::create,
        chats::get,
        chats::list,
        participations::create,
        participations::get,
        participations::impressions,
        participations::clicks,
        participations::viewer_samples,
        participations::earnings,
        participations::chat_command,
        participations::make_qr_code,
        participations::qr_code_png,
        participations::overlay,
        participations::overlay_qr_code_png,
        health::healthz,
        health::readyz,
        metrics::render,
    ),
    components(schemas(crate::error::Problem, crate::error::FieldError)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("Needed on /api (except the overlay) when the server runs with API_TOKENS"))
                    .build(),
            ),
        );
    }
}
