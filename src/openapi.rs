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
    modifiers(&BearerAuth, &Links)
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

/// Where what an operation returns is used next, as OpenAPI links on its 2xx answers, so that
/// a stateful tester (and a reader) can chain real calls: (from, to, the parameter of `to`,
/// the runtime expression that fills it).
const LINKS: &[(&str, &str, &str, &str)] = &[
    ("create_chat", "get_chat", "id", "$response.body#/id"),
    ("create_conversation", "get_conversation", "session_id", "$response.body#/session_id"),
    ("create_conversation", "append_messages", "session_id", "$response.body#/session_id"),
    ("create_conversation", "list_messages", "session_id", "$response.body#/session_id"),
    ("save_analysis", "get_conversation", "session_id", "$response.body#/session_id"),
    ("save_analysis", "append_messages", "session_id", "$response.body#/session_id"),
    ("upload_audio", "get_conversation", "session_id", "$response.body#/session_id"),
    ("upload_audio", "get_audio", "id", "$response.body#/audio/id"),
    ("append_messages", "list_messages", "session_id", "$response.body#/conversation/session_id"),
    ("create_participation", "get_participation", "id", "$response.body#/id"),
    ("create_participation", "impressions", "id", "$response.body#/id"),
    ("create_participation", "clicks", "id", "$response.body#/id"),
    ("create_participation", "viewer_samples", "id", "$response.body#/id"),
    ("create_participation", "earnings", "id", "$response.body#/id"),
    ("create_participation", "chat_command", "id", "$response.body#/id"),
    ("create_participation", "make_qr_code", "id", "$response.body#/id"),
    ("create_participation", "overlay", "token", "$response.body#/browser_source_token"),
    ("make_qr_code", "qr_code_png", "id", "$response.body#/id"),
    ("make_qr_code", "overlay_qr_code_png", "token", "$response.body#/browser_source_token"),
];

struct Links;

impl utoipa::Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::extensions::Extensions;
        use utoipa::openapi::RefOr;
        let operations = openapi.paths.paths.values_mut().flat_map(|item| {
            [&mut item.get, &mut item.post].into_iter().flatten().filter_map(|op| Some((op.operation_id.clone()?, op)))
        });
        for (id, operation) in operations {
            // Written as JSON: utoipa 5.5 spells a `Link`'s field `operation_id`, where OpenAPI
            // (and every tool reading links) wants `operationId`.
            let links: serde_json::Map<String, serde_json::Value> = LINKS
                .iter()
                .filter(|(from, ..)| *from == id)
                .map(|(_, to, parameter, value)| {
                    (to.to_string(), serde_json::json!({"operationId": to, "parameters": {*parameter: value}}))
                })
                .collect();
            if links.is_empty() {
                continue;
            }
            let answers = operation.responses.responses.iter_mut().filter(|(status, _)| status.starts_with('2'));
            for (_, answer) in answers {
                if let RefOr::T(answer) = answer {
                    let links = Extensions::from_iter([("links", serde_json::Value::Object(links.clone()))]);
                    answer.extensions.get_or_insert_with(Default::default).merge(links);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn document() -> serde_json::Value {
        serde_json::to_value(ApiDoc::openapi()).unwrap()
    }

    fn operations(doc: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
        let paths = doc["paths"].as_object().unwrap().values();
        let ops = paths.flat_map(|item| item.as_object().unwrap().values().cloned().collect::<Vec<_>>());
        ops.map(|op| (op["operationId"].as_str().unwrap().to_owned(), op)).collect()
    }

    #[test]
    fn operation_ids_are_unique_and_every_link_names_an_operation_and_its_parameter() {
        let doc = document();
        let ops = operations(&doc);
        let mut ids: Vec<&str> = ops.iter().map(|(id, _)| id.as_str()).collect();
        ids.sort();
        let count = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), count, "duplicate operationIds: {ids:?}");
        let mut linked = 0;
        for (from, op) in &ops {
            for answer in op["responses"].as_object().unwrap().values() {
                for link in answer["links"].as_object().into_iter().flat_map(|links| links.values()) {
                    let to = link["operationId"].as_str().unwrap();
                    let (_, target) = ops.iter().find(|(id, _)| id == to).unwrap_or_else(|| panic!("{from} -> {to}"));
                    for parameter in link["parameters"].as_object().unwrap().keys() {
                        let names = target["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str());
                        assert!(names.into_iter().any(|n| n == Some(parameter)), "{from} -> {to}: {parameter}");
                    }
                    linked += 1;
                }
            }
        }
        assert!(linked >= LINKS.len(), "every link is on the document ({linked} found)");
    }

    /// The `If-Match` pattern of save-analysis states exactly what `parse_if_match` accepts.
    fn if_match_pattern() -> regex::Regex {
        let doc = document();
        let params = doc["paths"]["/api/save-analysis"]["post"]["parameters"].as_array().unwrap().clone();
        let header = params.into_iter().find(|p| p["name"] == "If-Match").unwrap();
        regex::Regex::new(header["schema"]["pattern"].as_str().unwrap()).unwrap()
    }

    proptest! {
        #[test]
        fn the_if_match_pattern_is_the_parser(raw in prop_oneof!["(W/)?\"?[0-9]{0,20}\"?", "[W/\"*0-9 -]{0,6}"]) {
            let parsed = crate::conversations::model::parse_if_match(Some(&raw)).is_ok();
            prop_assert_eq!(parsed, if_match_pattern().is_match(&raw), "{}", raw);
        }
    }
}
