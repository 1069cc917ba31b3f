//! Receives `multipart/form-data` for upload-audio: the audio part is streamed to a file under
//! the data dir and hashed as it arrives, with the size limit enforced while streaming, so a
//! 25 MiB upload never sits in memory and an oversized one stops at the limit.

use super::audio::{AudioFormat, AudioStore};
use crate::conversations::model::{check_analysis, MAX_LANGUAGE_CHARS, MAX_USER_ID_CHARS};
use crate::domain::{optional_text, SessionId};
use crate::error::{ApiError, FieldError};
use crate::extract::multipart_boundary;
use actix_multipart::{Field, Multipart, MultipartError};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

const MAX_TEXT_PART: usize = 64 * 1024;
/// The text parts a form may carry, each at most once: with the one audio part, what a form
/// can make the server hold is bounded before it is read.
const TEXT_PARTS: [&str; 5] = ["session_id", "language", "user_id", "transcript", "analysis"];

/// A file that is deleted when dropped, unless [`TempFile::into_path`] took it.
#[derive(Debug)]
pub struct TempFile(Option<PathBuf>);

impl TempFile {
    pub fn path(&self) -> &Path {
        self.0.as_deref().expect("a live temp file has a path")
    }

    pub fn into_path(mut self) -> PathBuf {
        self.0.take().expect("a live temp file has a path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[derive(Debug)]
pub struct ReceivedAudio {
    pub file: TempFile,
    pub sha256: String,
    pub bytes: u64,
    pub format: AudioFormat,
    pub filename: Option<String>,
}

/// The parsed form. Empty text parts count as absent: HTML forms send every field.
#[derive(Debug)]
pub struct Upload {
    pub audio: ReceivedAudio,
    pub session_id: Option<SessionId>,
    pub language: Option<String>,
    pub user_id: Option<String>,
    pub transcript: Option<String>,
    pub analysis: Option<Value>,
}

/// `max_audio_bytes`: the upload limit, from which the form's limit follows ([`form`]).
fn multipart_error(error: MultipartError, max_audio_bytes: u64) -> ApiError {
    match error {
        MultipartError::ContentTypeMissing
        | MultipartError::ContentTypeParse
        | MultipartError::ContentTypeIncompatible => {
            ApiError::UnsupportedMediaType("send the upload as multipart/form-data".into())
        }
        MultipartError::Payload(PayloadError::Overflow) => {
            ApiError::PayloadTooLarge { limit: max_audio_bytes + FORM_OVERHEAD }
        }
        other => ApiError::malformed(format!("the multipart body could not be read: {other}")),
    }
}

/// Room for the parts' headers, boundaries and text parts on top of the audio itself.
const FORM_OVERHEAD: u64 = 1024 * 1024;

/// The form of a request, refused at once when its boundary is longer than RFC 2046 allows or
/// its declared length over the limit; a body that grows past the limit while it streams
/// stops there (413).
pub fn form(req: &HttpRequest, payload: web::Payload, max_audio_bytes: u64) -> Result<Multipart, ApiError> {
    if let Some(Err(error)) = multipart_boundary(req) {
        return Err(error);
    }
    let limit = max_audio_bytes + FORM_OVERHEAD;
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut seen = 0_u64;
    let limited = payload.map(move |chunk| {
        let chunk = chunk?;
        seen += chunk.len() as u64;
        if seen > limit {
            return Err(PayloadError::Overflow);
        }
        Ok(chunk)
    });
    Ok(Multipart::new(req.headers(), limited))
}

pub async fn receive(mut form: Multipart, store: &AudioStore, max_bytes: u64) -> Result<Upload, ApiError> {
    let mut audio = None;
    let mut texts: Vec<(String, String)> = Vec::new();
    while let Some(field) = form.next().await {
        let field = field.map_err(|e| multipart_error(e, max_bytes))?;
        let name = field.content_disposition().and_then(|cd| cd.get_name()).unwrap_or("").to_owned();
        if name == "audio" {
            if audio.is_some() {
                return Err(ApiError::invalid("audio", "send exactly one audio part"));
            }
            audio = Some(receive_audio(field, store, max_bytes).await?);
        } else if !TEXT_PARTS.contains(&name.as_str()) {
            // Refused as soon as it is seen, before anything of it is read.
            let known = TEXT_PARTS.join(", ");
            let name: String = name.chars().take(64).collect();
            return Err(ApiError::invalid(name, format!("is not a part of this form (audio, {known})")));
        } else if texts.iter().any(|(seen, _)| *seen == name) {
            return Err(ApiError::invalid(name, "send each part at most once"));
        } else {
            let text = read_text(field, &name, max_bytes).await?;
            texts.push((name, text));
        }
    }
    let Some(audio) = audio else {
        return Err(ApiError::invalid("audio", "the multipart part `audio` (the file) is required"));
    };
    build(audio, texts)
}

fn build(audio: ReceivedAudio, texts: Vec<(String, String)>) -> Result<Upload, ApiError> {
    let take = |name: &str| texts.iter().find(|(n, v)| n == name && !v.is_empty()).map(|(_, v)| v.clone());
    let mut errors: Vec<FieldError> = Vec::new();
    let session_id =
        take("session_id").and_then(|raw| SessionId::parse("session_id", &raw).map_err(|e| errors.push(e)).ok());
    let (language, user_id, transcript) = (take("language"), take("user_id"), take("transcript"));
    errors.extend(optional_text("language", language.as_deref(), MAX_LANGUAGE_CHARS).err());
    errors.extend(optional_text("user_id", user_id.as_deref(), MAX_USER_ID_CHARS).err());
    errors.extend(optional_text("transcript", transcript.as_deref(), usize::MAX).err());
    let analysis = match take("analysis").map(|raw| serde_json::from_str::<Value>(&raw)) {
        None => None,
        Some(Ok(value)) => Some(value),
        Some(Err(e)) => {
            errors.push(FieldError::new("analysis", format!("is not valid JSON: {e}")));
            None
        }
    };
    check_analysis(&mut errors, analysis.as_ref());
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    Ok(Upload { audio, session_id, language, user_id, transcript, analysis })
}

async fn read_text(mut field: Field, name: &str, max_audio_bytes: u64) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(|e| multipart_error(e, max_audio_bytes))?;
        if bytes.len() + chunk.len() > MAX_TEXT_PART {
            return Err(ApiError::PayloadTooLarge { limit: MAX_TEXT_PART as u64 });
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| ApiError::invalid(name, "must be UTF-8 text"))
}

async fn receive_audio(mut field: Field, store: &AudioStore, max_bytes: u64) -> Result<ReceivedAudio, ApiError> {
    let filename = field.content_disposition().and_then(|cd| cd.get_filename()).map(str::to_owned);
    let temp = TempFile(Some(store.incoming_dir().join(uuid::Uuid::now_v7().to_string())));
    let mut out = tokio::fs::File::create(temp.path()).await.map_err(anyhow::Error::from)?;
    let mut hasher = Sha256::new();
    let mut head = Vec::with_capacity(16);
    let mut bytes = 0_u64;
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(|e| multipart_error(e, max_bytes))?;
        bytes += chunk.len() as u64;
        if bytes > max_bytes {
            return Err(ApiError::PayloadTooLarge { limit: max_bytes });
        }
        if head.len() < 16 {
            head.extend_from_slice(&chunk[..chunk.len().min(16 - head.len())]);
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(anyhow::Error::from)?;
    }
    out.flush().await.map_err(anyhow::Error::from)?;
    let format = AudioFormat::sniff(&head).ok_or_else(|| {
        ApiError::UnsupportedAudio("not a recognised audio format (WAV, WebM, Ogg, MP3, FLAC, MP4/M4A)".into())
    })?;
    Ok(ReceivedAudio { file: temp, sha256: hex::encode(hasher.finalize()), bytes, format, filename })
}
