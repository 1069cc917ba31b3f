//! The conversation resources as API.md §3 spells them, and the requests that write them.

use crate::domain::{check_json_storable, optional_header, optional_text, or_null, text_schema, Patch, SessionId};
use crate::error::{ApiError, FieldError};
use crate::reply::{Outcome, Reply};
use actix_web::http::header;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

pub const MAX_USER_ID_CHARS: usize = 256;
pub const MAX_LANGUAGE_CHARS: usize = 35;
pub const MAX_MESSAGES_PER_APPEND: usize = 50;

/// A row of `conversations`, as the store reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConversationRow {
    pub id: Uuid,
    pub session_id: String,
    pub user_id: Option<String>,
    pub language: Option<String>,
    pub transcript: Option<String>,
    pub analysis: Option<Value>,
    pub audio_id: Option<Uuid>,
    pub message_count: i64,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AudioFile {
    pub id: Uuid,
    pub sha256: String,
    pub content_type: String,
    pub bytes: i64,
    pub url: String,
    pub analysis: Value,
}

impl AudioFile {
    pub fn url_for(id: Uuid) -> String {
        format!("/api/audio/{id}")
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Conversation {
    pub id: Uuid,
    pub session_id: String,
    pub user_id: Option<String>,
    pub language: Option<String>,
    pub transcript: Option<String>,
    pub analysis: Option<Value>,
    pub audio: Option<AudioFile>,
    pub message_count: i64,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Conversation {
    pub fn new(row: ConversationRow, audio: Option<AudioFile>) -> Self {
        Self {
            id: row.id,
            session_id: row.session_id,
            user_id: row.user_id,
            language: row.language,
            transcript: row.transcript,
            analysis: row.analysis,
            audio,
            message_count: row.message_count,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }

    pub fn location(&self) -> String {
        format!("/api/conversations/{}", self.session_id)
    }

    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }

    /// The answer of a write that left the conversation so.
    pub fn reply(&self, outcome: Outcome) -> Reply {
        Reply::written("conversation", outcome, self, || self.location()).header(header::ETAG, self.etag())
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Message {
    pub id: Uuid,
    #[serde(skip)]
    pub conversation_id: Uuid,
    #[serde(skip)]
    pub seq: i64,
    #[serde(skip)]
    pub session_id: String,
    pub role: String,
    pub text: String,
    pub translation: Option<String>,
    pub grammar_suggestion: Option<String>,
    pub audio_id: Option<Uuid>,
    pub phonemes: Option<Value>,
    pub feedback: Option<Value>,
    pub created_at: DateTime<Utc>,
}

fn collect(errors: Vec<FieldError>) -> Result<(), ApiError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

fn check_user_and_language(errors: &mut Vec<FieldError>, user_id: Option<&str>, language: Option<&str>) {
    errors.extend(optional_text("user_id", user_id, MAX_USER_ID_CHARS).err());
    errors.extend(optional_text("language", language, MAX_LANGUAGE_CHARS).err());
}

/// `POST /api/conversations`: everything optional.
#[derive(Debug, Deserialize, Default, ToSchema)]
#[schema(example = json!({"session_id": "sess-42", "user_id": "alice", "language": "en"}))]
pub struct CreateConversationBody {
    /// Absent or null: the server makes one.
    #[schema(schema_with = session_id_or_null)]
    session_id: Option<String>,
    #[schema(schema_with = user_id_or_null)]
    user_id: Option<String>,
    #[schema(schema_with = language_or_null)]
    language: Option<String>,
}

/// A UUID or null, described: what the rules of a message's references are, which depend on
/// other rows and so cannot be a schema's.
fn uuid_or_null(description: &str) -> utoipa::openapi::schema::Object {
    let mut uuid = or_null(crate::extract::uuid_object());
    uuid.description = Some(description.to_owned());
    uuid
}

fn message_id_schema() -> utoipa::openapi::schema::Object {
    uuid_or_null("The message's id (default: a new one); an id another conversation holds is refused (422)")
}

fn audio_id_schema() -> utoipa::openapi::schema::Object {
    uuid_or_null("An uploaded audio file's id; one that names no file is refused (422)")
}

fn session_id_or_null() -> utoipa::openapi::schema::Object {
    or_null(SessionId::schema())
}

fn user_id_schema() -> utoipa::openapi::schema::Object {
    text_schema(Some(MAX_USER_ID_CHARS), false)
}

fn language_schema() -> utoipa::openapi::schema::Object {
    text_schema(Some(MAX_LANGUAGE_CHARS), false)
}

fn free_text_schema() -> utoipa::openapi::schema::Object {
    text_schema(None, false)
}

/// The same, for save-analysis, where `null` clears a stored value.
fn user_id_or_null() -> utoipa::openapi::schema::Object {
    text_schema(Some(MAX_USER_ID_CHARS), true)
}

fn language_or_null() -> utoipa::openapi::schema::Object {
    text_schema(Some(MAX_LANGUAGE_CHARS), true)
}

fn free_text_or_null() -> utoipa::openapi::schema::Object {
    text_schema(None, true)
}

#[derive(Debug)]
pub struct NewConversation {
    /// `None`: the server makes one, and the request always inserts.
    pub session_id: Option<SessionId>,
    pub user_id: Option<String>,
    pub language: Option<String>,
}

impl CreateConversationBody {
    pub fn validate(self) -> Result<NewConversation, ApiError> {
        let mut errors = Vec::new();
        let session_id = match self.session_id.as_deref() {
            None => None,
            Some(raw) => SessionId::parse("session_id", raw).map_err(|e| errors.push(e)).ok(),
        };
        check_user_and_language(&mut errors, self.user_id.as_deref(), self.language.as_deref());
        collect(errors)?;
        Ok(NewConversation { session_id, user_id: self.user_id, language: self.language })
    }
}

/// `POST /api/save-analysis`. Absent fields keep what is stored; present ones (even null) set.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"session_id": "sess-42", "transcript": "Hello there", "analysis": {"score": 0.92}}))]
pub struct SaveAnalysisBody {
    #[schema(schema_with = SessionId::schema, required = true)]
    session_id: Option<String>,
    #[serde(default, deserialize_with = "Patch::present")]
    #[schema(schema_with = free_text_or_null, required = false)]
    transcript: Patch<String>,
    #[serde(default, deserialize_with = "Patch::present")]
    #[schema(value_type = Option<Object>)]
    analysis: Patch<Map<String, Value>>,
    #[serde(default, deserialize_with = "Patch::present")]
    #[schema(schema_with = language_or_null, required = false)]
    language: Patch<String>,
    #[serde(default, deserialize_with = "Patch::present")]
    #[schema(schema_with = user_id_or_null, required = false)]
    user_id: Patch<String>,
}

/// The one write both legacy steps perform, whoever comes first.
#[derive(Debug, Clone)]
pub struct AnalysisUpsert {
    pub session_id: SessionId,
    pub transcript: Patch<String>,
    pub analysis: Patch<Value>,
    pub language: Patch<String>,
    pub user_id: Patch<String>,
    pub audio_id: Patch<Uuid>,
    /// From `If-Match`: update only if the stored version is this one.
    pub expected_version: Option<Expected>,
}

impl AnalysisUpsert {
    pub fn shape(&self) -> Shape {
        Shape {
            user_id: self.user_id.is_set(),
            language: self.language.is_set(),
            transcript: self.transcript.is_set(),
            analysis: self.analysis.is_set(),
            audio_id: self.audio_id.is_set(),
        }
    }
}

/// Which fields an upsert sets. Upserts of one shape can share a statement: the fields to set
/// are the statement's, the values are each row's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    pub user_id: bool,
    pub language: bool,
    pub transcript: bool,
    pub analysis: bool,
    pub audio_id: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// `If-Match: *`: the conversation must exist.
    Exists,
    Version(i64),
}

/// Parses `If-Match`: `"3"`, `W/"3"`, `3` or `*`.
/// The `If-Match` header of save-analysis as the OpenAPI document states it: what
/// [`parse_if_match`] accepts (a test holds the two together).
pub struct IfMatchHeader;

impl utoipa::IntoParams for IfMatchHeader {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r#"^(\*|(W/)?"[0-9]{1,18}"|[0-9]{1,18})$"#))
            .examples(["\"1\""]);
        optional_header(
            "If-Match",
            "Update only at this version: a conversation's ETag (\"3\"), or * for any",
            schema.build(),
        )
    }
}

pub fn parse_if_match(raw: Option<&str>) -> Result<Option<Expected>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw == "*" {
        return Ok(Some(Expected::Exists));
    }
    // An entity tag (RFC 9110 §8.8.3), weak or strong, or the bare number older clients send.
    let digits = match raw.strip_prefix("W/").unwrap_or(raw) {
        quoted if quoted.len() > 2 && quoted.starts_with('"') && quoted.ends_with('"') => &quoted[1..quoted.len() - 1],
        bare if bare == raw => bare,
        _ => "",
    };
    match digits.len() <= 18 && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        true => Ok(Some(Expected::Version(digits.parse().expect("at most 18 digits")))),
        false => Err(ApiError::Malformed {
            detail: "If-Match must be a version ETag such as \"3\"".into(),
            field: Some("If-Match".into()),
        }),
    }
}

/// The `analysis` part of an upload, whose text holds JSON (save-analysis types its field as
/// an object, and the extractor checks it).
pub fn check_analysis(errors: &mut Vec<FieldError>, analysis: Option<&Value>) {
    match analysis {
        Some(value @ Value::Object(_)) => errors.extend(check_json_storable("analysis", value).err()),
        Some(_) => errors.push(FieldError::new("analysis", "must be a JSON object or null")),
        None => {}
    }
}

impl SaveAnalysisBody {
    pub fn validate(self, expected_version: Option<Expected>) -> Result<AnalysisUpsert, ApiError> {
        let mut errors = Vec::new();
        let session_id = match self.session_id.as_deref() {
            None => {
                errors.push(FieldError::new(
                    "session_id",
                    "is required: save-analysis never invents one, a retried second step would orphan a duplicate",
                ));
                None
            }
            Some(raw) => SessionId::parse("session_id", raw).map_err(|e| errors.push(e)).ok(),
        };
        errors.extend(optional_text("transcript", self.transcript.value().map(String::as_str), usize::MAX).err());
        check_user_and_language(
            &mut errors,
            self.user_id.value().map(String::as_str),
            self.language.value().map(String::as_str),
        );
        collect(errors)?;
        Ok(AnalysisUpsert {
            session_id: session_id.expect("errors were empty"),
            transcript: self.transcript,
            analysis: self.analysis.map(Value::Object),
            language: self.language,
            user_id: self.user_id,
            audio_id: Patch::Keep,
            expected_version,
        })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"messages": [{"role": "user", "text": "Hello"}, {"role": "bot", "text": "Hi!"}]}))]
pub struct AppendBody {
    #[schema(value_type = Vec<MessageBody>, min_items = 1, max_items = 50)]
    messages: Option<Vec<MessageBody>>,
}

#[derive(Debug, Deserialize, ToSchema)]
struct MessageBody {
    #[schema(schema_with = message_id_schema)]
    id: Option<Uuid>,
    #[schema(required = true, value_type = Role)]
    role: Option<String>,
    #[schema(required = true, schema_with = free_text_schema)]
    text: Option<String>,
    #[schema(schema_with = free_text_or_null)]
    translation: Option<String>,
    #[schema(schema_with = free_text_or_null)]
    grammar_suggestion: Option<String>,
    #[schema(schema_with = audio_id_schema)]
    audio_id: Option<Uuid>,
    phonemes: Option<Value>,
    feedback: Option<Value>,
}

/// The parts of an `upload-audio` form, for the OpenAPI document only: `upload::receive` reads
/// the parts as they stream in. Empty text parts count as absent (HTML forms send every field).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)] // only for the document: it says `additionalProperties: false`
#[allow(dead_code)] // describes the form in the document; the handler streams the parts
pub struct UploadForm {
    /// The recording: WAV, WebM, Ogg, MP3, FLAC or MP4/M4A, recognised by its first bytes.
    #[schema(value_type = String, format = Binary)]
    audio: Vec<u8>,
    #[schema(schema_with = SessionId::schema)]
    session_id: Option<String>,
    #[schema(schema_with = language_schema)]
    language: Option<String>,
    #[schema(schema_with = user_id_schema)]
    user_id: Option<String>,
    #[schema(schema_with = free_text_schema)]
    transcript: Option<String>,
    /// A JSON object, sent as the part's text.
    analysis: Option<Map<String, Value>>,
}

/// Who wrote a message.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // describes `MessageBody::role` in the document; the body reads a string
enum Role {
    User,
    Bot,
}

/// A message ready to append; `id` is the client's, or a fresh UUIDv7.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: Uuid,
    pub role: String,
    pub text: String,
    pub translation: Option<String>,
    pub grammar_suggestion: Option<String>,
    pub audio_id: Option<Uuid>,
    pub phonemes: Option<Value>,
    pub feedback: Option<Value>,
}

impl AppendBody {
    pub fn validate(self) -> Result<Vec<NewMessage>, ApiError> {
        let Some(messages) = self.messages else {
            return Err(ApiError::invalid("messages", "is required"));
        };
        if messages.is_empty() || messages.len() > MAX_MESSAGES_PER_APPEND {
            return Err(ApiError::invalid("messages", "must hold 1 to 50 messages"));
        }
        let mut errors = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut valid = Vec::with_capacity(messages.len());
        for (i, m) in messages.into_iter().enumerate() {
            let field = |name: &str| format!("messages[{i}].{name}");
            if let Some(id) = m.id {
                if !seen.insert(id) {
                    errors.push(FieldError::new(field("id"), "appears twice in this request"));
                }
            }
            match m.role.as_deref() {
                Some("user" | "bot") => {}
                Some(_) => errors.push(FieldError::new(field("role"), "must be \"user\" or \"bot\"")),
                None => errors.push(FieldError::new(field("role"), "is required")),
            }
            match m.text.as_deref() {
                None => errors.push(FieldError::new(field("text"), "is required")),
                Some(text) => errors.extend(optional_text(&field("text"), Some(text), usize::MAX).err()),
            }
            errors.extend(optional_text(&field("translation"), m.translation.as_deref(), usize::MAX).err());
            errors
                .extend(optional_text(&field("grammar_suggestion"), m.grammar_suggestion.as_deref(), usize::MAX).err());
            if let (Some(role), Some(text)) = (m.role, m.text) {
                valid.push(NewMessage {
                    id: m.id.unwrap_or_else(Uuid::now_v7),
                    role,
                    text,
                    translation: m.translation,
                    grammar_suggestion: m.grammar_suggestion,
                    audio_id: m.audio_id,
                    phonemes: m.phonemes,
                    feedback: m.feedback,
                });
            }
        }
        collect(errors)?;
        Ok(valid)
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Appended {
    pub conversation: Conversation,
    pub messages: Vec<Message>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListConversationsQuery {
    /// Only this user's conversations.
    #[param(schema_with = user_id_schema)]
    user_id: Option<String>,
}

impl ListConversationsQuery {
    /// The user to filter by: a query parameter follows the body fields' rules (422 naming it).
    pub fn user_id(&self) -> Result<Option<&str>, ApiError> {
        optional_text("user_id", self.user_id.as_deref(), MAX_USER_ID_CHARS)
            .map_err(|e| ApiError::Validation(vec![e]))?;
        Ok(self.user_id.as_deref())
    }
}
