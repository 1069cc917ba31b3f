//! Speech-to-text through an OpenAI-compatible `/v1/audio/transcriptions` endpoint.

use crate::error::ApiError;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Stt {
    client: reqwest::Client,
    url: String,
    api_key: Option<String>,
    model: String,
}

#[derive(serde::Deserialize)]
struct Transcription {
    text: String,
}

impl Stt {
    pub fn new(url: String, api_key: Option<String>, model: String) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("a plain reqwest client always builds");
        Self { client, url, api_key, model }
    }

    /// Sends the stored file; a failure is a 502 so the client retries (and 5xx are never
    /// stored as an idempotent answer).
    pub async fn transcribe(
        &self,
        path: &Path,
        content_type: &str,
        language: Option<&str>,
    ) -> Result<String, ApiError> {
        let fail = |why: String| ApiError::SttFailed(why);
        let bytes = tokio::fs::read(path).await.map_err(|e| fail(e.to_string()))?;
        let file_name = format!("audio.{}", content_type.rsplit('/').next().unwrap_or("bin"));
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(file_name)
            .mime_str(content_type)
            .map_err(|e| fail(e.to_string()))?;
        let mut form = reqwest::multipart::Form::new().part("file", part).text("model", self.model.clone());
        if let Some(language) = language {
            form = form.text("language", language.to_owned());
        }
        let mut request = self.client.post(&self.url).multipart(form);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| fail(e.to_string()))?;
        if !response.status().is_success() {
            return Err(fail(format!("status {}", response.status())));
        }
        let transcription: Transcription = response.json().await.map_err(|e| fail(e.to_string()))?;
        Ok(transcription.text)
    }
}
