//! The JSON body extractor every write uses: size limit while reading (413), content type
//! (415), "is it JSON, is it an object, does it fit the types" (400 naming the field), and no
//! NUL anywhere (422) - in that order, so each mistake gets the code API.md gives it.

use crate::domain::check_json_storable;
use crate::error::ApiError;
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use bytes::BytesMut;
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Default JSON body limit; `--max-json-bytes` changes it through [`JsonLimit`] app data.
pub const DEFAULT_JSON_LIMIT: usize = 64 * 1024;

/// How JSON bodies are read, registered as app data.
#[derive(Debug, Clone, Copy)]
pub struct JsonConfig {
    pub limit: usize,
    /// A body without `Content-Type` is refused (415). Set when there are no API tokens: a web
    /// page on any site may POST a bare body without a preflight, and only a declared JSON
    /// type makes its browser ask first.
    pub require_content_type: bool,
}

impl Default for JsonConfig {
    fn default() -> Self {
        Self { limit: DEFAULT_JSON_LIMIT, require_content_type: false }
    }
}

pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let config = req.app_data::<JsonConfig>().copied().unwrap_or_default();
        let limit = config.limit;
        let content_type = check_json_content_type(req);
        let declared = declared_length(req);
        let mut payload = payload.take();
        Box::pin(async move {
            let declared_json = content_type?;
            if declared.is_some_and(|len| len > limit) {
                return Err(ApiError::PayloadTooLarge { limit: limit as u64 });
            }
            let body = read_limited(&mut payload, limit).await?;
            // An empty body says nothing to interpret, and the legacy `curl -X POST` sends one.
            if config.require_content_type && !declared_json && !body.is_empty() {
                return Err(ApiError::UnsupportedMediaType("send the body with Content-Type: application/json".into()));
            }
            parse_object(&body).map(JsonBody)
        })
    }
}

fn declared_length(req: &HttpRequest) -> Option<usize> {
    req.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// A JSON Content-Type is `Ok(true)`, a missing one `Ok(false)` (legacy clients omit it; see
/// [`JsonConfig::require_content_type`]), any other a 415.
fn check_json_content_type(req: &HttpRequest) -> Result<bool, ApiError> {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else { return Ok(false) };
    let essence = value.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(true)
    } else {
        Err(ApiError::UnsupportedMediaType(format!("send the body as application/json, not {essence:?}")))
    }
}

/// Longest multipart boundary RFC 2046 allows.
pub const MAX_BOUNDARY: usize = 70;

/// The boundary of a `multipart/form-data` body, if the request declares one. A longer one
/// than RFC 2046 allows is a 400 before anything searches a body for it.
pub fn multipart_boundary(req: &impl HttpMessage) -> Option<Result<String, ApiError>> {
    let mime = req.mime_type().ok().flatten().filter(|mime| mime.essence_str() == "multipart/form-data")?;
    let boundary = mime.get_param("boundary")?.as_str().to_owned();
    Some(match boundary.len() {
        0 => return None,
        n if n > MAX_BOUNDARY => Err(ApiError::malformed(format!(
            "the multipart boundary is {n} characters long; at most {MAX_BOUNDARY} are allowed (RFC 2046)"
        ))),
        _ => Ok(boundary),
    })
}

pub async fn read_limited(payload: &mut Payload, limit: usize) -> Result<BytesMut, ApiError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::malformed(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit: limit as u64 });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses a body that must be a JSON object; an empty body, or `null`, counts as `{}` (a body
/// the document marks optional may come as either).
pub fn parse_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::malformed(format!("the body is not valid JSON: {e}")))?
    };
    let value = if value.is_null() { Value::Object(Default::default()) } else { value };
    if !value.is_object() {
        return Err(ApiError::malformed("the body must be a JSON object"));
    }
    check_json_storable("body", &value).map_err(|mut e| {
        e.field = e.field.trim_start_matches("body.").to_owned();
        ApiError::Validation(vec![e])
    })?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let message = e.into_inner().to_string();
        // The contract's one rule (API.md §1), for every field of every body: a JSON value of
        // the wrong type is 400, a value of the right type that is not valid is 422. serde
        // words the first, and only the first, "invalid type" (`de::Error::invalid_type`);
        // what a field's own type refuses (a string that is no UUID, an amount with seven
        // decimals, a number out of range, an unknown variant) is worded otherwise.
        if message.starts_with("invalid type") {
            ApiError::Malformed { detail: format!("{field}: {message}"), field: Some(field) }
        } else {
            ApiError::Validation(vec![crate::error::FieldError::new(field, message)])
        }
    })
}

/// A value named by a segment of the route's path (`{id}`, `{session_id}`, `{token}`).
pub trait PathSegment: Sized {
    /// The segment's name in the route pattern.
    const NAME: &'static str;
    /// What a 404 says, for a value that is malformed or names nothing.
    const NOT_FOUND: &'static str;
    fn parse(raw: &str) -> Option<Self>;
    /// How the OpenAPI document describes the segment.
    fn schema() -> utoipa::openapi::Schema;
}

/// The extractor of a path segment, one type per kind of id: a malformed id answers 404, like
/// an id that names nothing, on every route that takes it, and before any body is read. It is
/// also the operation's `IntoParams`, so the document describes the segment as it is parsed.
pub struct InPath<T>(pub T);

impl<T: PathSegment> FromRequest for InPath<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let parsed = req.match_info().get(T::NAME).and_then(T::parse);
        std::future::ready(parsed.map(InPath).ok_or_else(|| ApiError::NotFound(T::NOT_FOUND.into())))
    }
}

impl<T: PathSegment> utoipa::IntoParams for InPath<T> {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        let parameter = ParameterBuilder::new()
            .name(T::NAME)
            .parameter_in(ParameterIn::Path)
            .required(utoipa::openapi::Required::True)
            .schema(Some(T::schema()));
        vec![parameter.build()]
    }
}

/// Makes a type the value of a path segment: its name in the route pattern, what a 404 says,
/// how a raw segment parses (`Option<Self>`), and its schema.
macro_rules! path_segment {
    ($type:ty, $name:literal, $not_found:literal, $parse:expr, $schema:expr) => {
        impl $crate::extract::PathSegment for $type {
            const NAME: &'static str = $name;
            const NOT_FOUND: &'static str = $not_found;

            fn parse(raw: &str) -> Option<Self> {
                ($parse)(raw)
            }

            fn schema() -> utoipa::openapi::Schema {
                $schema
            }
        }
    };
}
pub(crate) use path_segment;

/// Declares the path id of a resource named by a UUID (`{id}`): its own type, so that the
/// extractor and the document say which resource a 404 is about.
macro_rules! uuid_path_id {
    ($(#[$doc:meta])* $name:ident, $not_found:literal) => {
        $(#[$doc])*
        pub struct $name(pub uuid::Uuid);

        $crate::extract::path_segment!(
            $name,
            "id",
            $not_found,
            |raw: &str| raw.parse().ok().map($name),
            $crate::extract::uuid_schema()
        );
    };
}
pub(crate) use uuid_path_id;

/// The schema of a UUID path segment.
pub fn uuid_schema() -> utoipa::openapi::Schema {
    uuid_object().into()
}

/// A UUID in its usual spelling. The pattern states it because `format: uuid` is only a hint to
/// most tools; the parser also reads the other spellings of the `uuid` crate (no hyphens, braces).
pub fn uuid_object() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    let hex = "[0-9A-Fa-f]";
    let pattern = format!("^{hex}{{8}}-{hex}{{4}}-{hex}{{4}}-{hex}{{4}}-{hex}{{12}}$");
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .pattern(Some(pattern))
        .examples(["0190b9d2-0000-7000-8000-000000000001"])
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        session_id: Option<String>,
    }

    fn code(err: ApiError) -> String {
        use actix_web::ResponseError;
        err.status_code().as_u16().to_string()
    }

    #[test]
    fn wrong_shapes_are_400_and_name_the_field() {
        let err = parse_object::<Body>(br#"{"session_id": 5}"#).unwrap_err();
        match &err {
            ApiError::Malformed { field, .. } => assert_eq!(field.as_deref(), Some("session_id")),
            other => panic!("expected malformed, got {other:?}"),
        }
        assert_eq!(code(parse_object::<Body>(b"[1]").unwrap_err()), "400");
        assert_eq!(code(parse_object::<Body>(b"{nope").unwrap_err()), "400");
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Typed {
        id: Option<uuid::Uuid>,
        count: Option<serde_json::Number>,
        cost: Option<crate::domain::Money>,
    }

    #[test]
    fn the_wrong_json_type_is_400_and_an_invalid_value_of_the_right_one_422() {
        let status = |body: &str| code(parse_object::<Typed>(body.as_bytes()).unwrap_err());
        for wrong in [r#"{"id": 5}"#, r#"{"count": "5"}"#, r#"{"cost": true}"#, r#"{"cost": [1]}"#] {
            assert_eq!(status(wrong), "400", "{wrong}");
        }
        for invalid in [r#"{"id": "not-a-uuid"}"#, r#"{"cost": "lots"}"#, r#"{"cost": "0.0000001"}"#] {
            assert_eq!(status(invalid), "422", "{invalid}");
        }
        let typed = parse_object::<Typed>(br#"{"count": 18446744073709551616, "cost": "1.5"}"#).unwrap();
        assert_eq!(typed.count.unwrap().to_string(), "18446744073709551616", "the number's text is kept");
    }

    #[test]
    fn nul_is_422_and_empty_is_an_empty_object() {
        assert_eq!(code(parse_object::<Body>(br#"{"session_id": "a\u0000"}"#).unwrap_err()), "422");
        assert!(parse_object::<Body>(b"  ").unwrap().session_id.is_none());
    }
}
