use crate::helpers::{assert_problem, TestApp};
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

/// A 16-bit PCM WAV of a sine wave at `amplitude` (0..1 of full scale) or, at 0, silence.
pub fn sine_wav(sample_rate: u32, channels: u16, seconds: f64, amplitude: f64) -> Vec<u8> {
    let spec = hound::WavSpec { channels, sample_rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut cursor = std::io::Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut cursor, spec).unwrap();
    let frames = (f64::from(sample_rate) * seconds) as u32;
    for n in 0..frames {
        let value = amplitude * (2.0 * std::f64::consts::PI * 440.0 * f64::from(n) / f64::from(sample_rate)).sin();
        for _ in 0..channels {
            writer.write_sample((value * 32767.0).round() as i16).unwrap();
        }
    }
    writer.finalize().unwrap();
    cursor.into_inner()
}

/// An upload of half a second of a 440 Hz tone for `session_id` (more fields may be added).
pub fn tone_form(session_id: &str) -> Form {
    let wav = sine_wav(16_000, 1, 0.5, 0.25);
    Form::new().text("session_id", session_id.to_owned()).part("audio", Part::bytes(wav).file_name("a.wav"))
}

fn form(bytes: Vec<u8>) -> Form {
    Form::new().part("audio", Part::bytes(bytes).file_name("clip"))
}

fn files_under(dir: &std::path::Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] }).collect()
}

#[tokio::test]
async fn a_sine_wave_is_analysed() {
    let app = TestApp::spawn().await;
    let response = app.upload_audio(form(sine_wav(16_000, 2, 1.5, 0.5))).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert!(uuid::Uuid::parse_str(body["session_id"].as_str().unwrap()).is_ok(), "the server made a session id");
    let a = &body["audio"]["analysis"];
    assert_eq!((a["format"].as_str(), a["decoded"].as_bool()), (Some("wav"), Some(true)));
    assert_eq!((a["sample_rate"].as_u64(), a["channels"].as_u64()), (Some(16_000), Some(2)));
    assert_eq!(a["duration_ms"], 1500);
    // A sine of amplitude A has RMS A/sqrt(2): 0.5 -> -9.03 dBFS, peak -6.02 dBFS.
    assert!((a["rms_dbfs"].as_f64().unwrap() + 9.03).abs() < 0.1, "rms {a}");
    assert!((a["peak_dbfs"].as_f64().unwrap() + 6.02).abs() < 0.1, "peak {a}");
    assert_eq!(a["silence_ratio"], 0.0);
    assert_eq!(a["clipped_samples"], 0);
    assert_eq!(body["analysis"], *a, "without an analysis part the conversation gets the audio's analysis");
}

#[tokio::test]
async fn silence_is_all_silent_frames_and_full_scale_counts_as_clipped() {
    let app = TestApp::spawn().await;
    let silent: Value = app.upload_audio(form(sine_wav(8_000, 1, 1.0, 0.0))).await.json().await.unwrap();
    let a = &silent["audio"]["analysis"];
    assert_eq!(a["silence_ratio"], 1.0);
    assert_eq!(a["rms_dbfs"], Value::Null, "digital silence has no level");
    let loud: Value = app.upload_audio(form(sine_wav(8_000, 1, 1.0, 1.0))).await.json().await.unwrap();
    assert!(loud["audio"]["analysis"]["clipped_samples"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn the_same_bytes_twice_are_one_stored_file_and_can_be_downloaded() {
    let app = TestApp::spawn().await;
    let wav = sine_wav(8_000, 1, 0.25, 0.3);
    let first: Value = app.upload_audio(form(wav.clone())).await.json().await.unwrap();
    let second: Value = app.upload_audio(form(wav.clone())).await.json().await.unwrap();
    assert_ne!(first["session_id"], second["session_id"], "two uploads without session id are two conversations");
    assert_eq!(first["audio"]["id"], second["audio"]["id"], "same bytes, same audio file");
    assert_eq!(app.count("SELECT count(*) FROM audio_files").await, 1);
    assert_eq!(files_under(&app.data_dir.join("audio")), 1, "one file on disk, nothing left in incoming/");
    let download = app.get(first["audio"]["url"].as_str().unwrap()).await;
    assert_eq!(download.status(), 200);
    assert_eq!(download.headers()["content-type"], "audio/wav");
    let sha256 = first["audio"]["sha256"].as_str().unwrap();
    assert_eq!(download.headers()["etag"].to_str().unwrap(), format!("\"{sha256}\""), "its content address");
    assert_eq!(download.bytes().await.unwrap().to_vec(), wav);
    // Served from the file: a range is answered with just those bytes.
    let url = app.url(first["audio"]["url"].as_str().unwrap());
    let range = app.client.get(url).header("range", "bytes=4-11").send().await.unwrap();
    assert_eq!(range.status(), 206);
    assert_eq!(range.bytes().await.unwrap().to_vec(), wav[4..12].to_vec());
}

#[tokio::test]
async fn webm_is_accepted_undecoded_text_is_415_and_oversize_is_413_with_no_file_left() {
    let app = TestApp::spawn_with(&["--max-upload-bytes", "4096"]).await;
    let mut webm = vec![0x1A, 0x45, 0xDF, 0xA3];
    webm.extend_from_slice(&[0u8; 100]);
    let accepted: Value = app.upload_audio(form(webm)).await.json().await.unwrap();
    assert_eq!(accepted["audio"]["analysis"], json!({"format": "webm", "bytes": 104, "decoded": false}));
    assert_eq!(accepted["audio"]["content_type"], "audio/webm");

    assert_problem(app.upload_audio(form(b"just some text, not audio".to_vec())).await, 415, "unsupported_audio").await;
    assert_problem(app.upload_audio(form(vec![0x52; 10_000])).await, 413, "payload_too_large").await;
    assert_eq!(
        files_under(&app.data_dir.join("audio")),
        1,
        "only the WebM file is stored; rejected uploads leave nothing"
    );
    assert_eq!(app.count("SELECT count(*) FROM audio_files").await, 1);
}

#[tokio::test]
async fn uploads_are_transcribed_by_the_configured_stt_backend() {
    let stt = crate::helpers::fake_stt("transcribed by stt", std::time::Duration::ZERO);
    let app = TestApp::spawn_with(&["--stt-url", &stt.url]).await;
    let upload = form(sine_wav(8_000, 1, 0.2, 0.3)).text("transcript", "the client's guess");
    let body: Value = app.upload_audio(upload).await.json().await.unwrap();
    assert_eq!(body["transcript"], "transcribed by stt", "STT wins over the client's transcript part");
    assert_eq!(stt.calls.load(std::sync::atomic::Ordering::SeqCst), 1, "one upload, one transcription");
    stt.handle.stop(false).await;
}
