//! Audio files: recognised by magic bytes, stored once per content hash, and analysed.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioFormat {
    Wav,
    WebM,
    Ogg,
    Mp3,
    Flac,
    Mp4,
}

impl AudioFormat {
    /// Recognises the container from its first bytes; a file extension or a client's
    /// Content-Type is never trusted.
    pub fn sniff(head: &[u8]) -> Option<Self> {
        let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
        Some(if at(0, b"RIFF") && at(8, b"WAVE") {
            Self::Wav
        } else if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
            Self::WebM
        } else if at(0, b"OggS") {
            Self::Ogg
        } else if at(0, b"fLaC") {
            Self::Flac
        } else if at(4, b"ftyp") {
            Self::Mp4
        } else if at(0, b"ID3") || (head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0) {
            Self::Mp3
        } else {
            return None;
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Wav => "wav",
            Self::WebM => "webm",
            Self::Ogg => "ogg",
            Self::Mp3 => "mp3",
            Self::Flac => "flac",
            Self::Mp4 => "mp4",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Wav => "audio/wav",
            Self::WebM => "audio/webm",
            Self::Ogg => "audio/ogg",
            Self::Mp3 => "audio/mpeg",
            Self::Flac => "audio/flac",
            Self::Mp4 => "audio/mp4",
        }
    }
}

/// Content-addressed files under `<data-dir>/audio`: the same bytes are one file.
#[derive(Debug, Clone)]
pub struct AudioStore {
    root: PathBuf,
}

impl AudioStore {
    /// The folder is private (mode 0700): recordings are personal data, and no other local
    /// user has a reason to read them.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let root = data_dir.join("audio");
        std::fs::create_dir_all(root.join("incoming"))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self { root })
    }

    /// Uploads stream here first, on the same file system, so moving them is a rename.
    pub fn incoming_dir(&self) -> PathBuf {
        self.root.join("incoming")
    }

    pub fn path_for(&self, sha256: &str) -> PathBuf {
        self.root.join(&sha256[..2]).join(sha256)
    }

    /// Moves a finished upload to its content address; if those bytes are already stored
    /// the upload is simply dropped.
    ///
    /// The row that names the file commits (with fsync) after this returns, so the file must
    /// be as durable as the row by then: its bytes are synced, then it is renamed, then the
    /// folder that holds the new name is synced (and the audio folder, when the shard folder
    /// is new). Without that a power cut could leave the row pointing at an empty or missing
    /// file.
    pub fn keep(&self, incoming: &Path, sha256: &str) -> std::io::Result<PathBuf> {
        let target = self.path_for(sha256);
        if target.exists() {
            std::fs::remove_file(incoming)?;
        } else {
            let shard = target.parent().expect("content paths have a parent");
            let new_shard = !shard.exists();
            std::fs::create_dir_all(shard)?;
            std::fs::File::open(incoming)?.sync_all()?;
            std::fs::rename(incoming, &target)?;
            sync_folder(shard)?;
            if new_shard {
                sync_folder(&self.root)?;
            }
        }
        Ok(target)
    }
}

/// Makes a folder's entries (a rename into it, a new subfolder) durable.
fn sync_folder(folder: &Path) -> std::io::Result<()> {
    std::fs::File::open(folder)?.sync_all()
}

/// 20 ms frames below this level count as silence.
const SILENCE_DBFS: f64 = -50.0;

/// What a WAV header may say and still describe real audio: telephone rates to studio ones.
const MIN_SAMPLE_RATE: u32 = 1_000;
const MAX_SAMPLE_RATE: u32 = 768_000;
const MAX_CHANNELS: u16 = 32;

/// The analysis stored with a file: full figures for WAV, format and size for the rest.
pub fn analyse(path: &Path, format: AudioFormat, bytes: u64) -> Value {
    let undecoded = |why: Option<String>| {
        let mut value = json!({"format": format.name(), "bytes": bytes, "decoded": false});
        if let Some(why) = why {
            value["error"] = Value::String(why);
        }
        value
    };
    if format != AudioFormat::Wav {
        return undecoded(None);
    }
    match analyse_wav(path) {
        Ok(mut value) => {
            value["bytes"] = json!(bytes);
            value
        }
        Err(e) => undecoded(Some(e.to_string())),
    }
}

/// One pass over the samples, in constant memory: running sums for the whole file and for
/// the current 20 ms frame, never the samples themselves (a 25 MiB upload would otherwise
/// hold 8 bytes per sample).
fn analyse_wav(path: &Path) -> Result<Value, hound::Error> {
    let mut reader = hound::WavReader::open(path)?;
    let spec = reader.spec();
    // A header can say anything; one that no real recording has (a sample rate of 0 makes a
    // second of samples last hours) is not analysed into figures that look real.
    if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&spec.sample_rate) || !(1..=MAX_CHANNELS).contains(&spec.channels)
    {
        return Err(hound::Error::FormatError("the header's sample rate or channel count describes no real audio"));
    }
    let channels = usize::from(spec.channels.max(1));
    let mut levels = Levels::new(((spec.sample_rate as usize) / 50).max(1) * channels);
    match spec.sample_format {
        hound::SampleFormat::Float => {
            for sample in reader.samples::<f32>() {
                levels.add(f64::from(sample?), 1.0);
            }
        }
        hound::SampleFormat::Int => {
            let full_scale = (1_i64 << (spec.bits_per_sample - 1)) as f64;
            // The largest integer value is one step short of full scale: count it as clipped too.
            let clip_level = 1.0 - 1.0 / full_scale;
            for sample in reader.samples::<i32>() {
                levels.add(f64::from(sample?) / full_scale, clip_level);
            }
        }
    }
    let frames = levels.samples / channels as u64;
    let chunks = levels.frames + u64::from(levels.frame_samples > 0);
    let silent = levels.silent_frames + u64::from(levels.frame_samples > 0 && levels.frame_is_silent());
    Ok(json!({
        "format": "wav",
        "decoded": true,
        "sample_rate": spec.sample_rate,
        "channels": spec.channels,
        "bits_per_sample": spec.bits_per_sample,
        "duration_ms": (frames * 1000) / u64::from(spec.sample_rate.max(1)),
        "rms_dbfs": dbfs(rms(levels.squares, levels.samples)),
        "peak_dbfs": dbfs(levels.peak),
        "silence_ratio": if chunks == 0 { 1.0 } else { silent as f64 / chunks as f64 },
        "clipped_samples": levels.clipped,
    }))
}

/// Running figures of a stream of samples scaled to full scale 1.0.
struct Levels {
    frame_len: usize,
    samples: u64,
    squares: f64,
    peak: f64,
    clipped: u64,
    frames: u64,
    silent_frames: u64,
    frame_samples: usize,
    frame_squares: f64,
}

impl Levels {
    fn new(frame_len: usize) -> Self {
        Self {
            frame_len,
            samples: 0,
            squares: 0.0,
            peak: 0.0,
            clipped: 0,
            frames: 0,
            silent_frames: 0,
            frame_samples: 0,
            frame_squares: 0.0,
        }
    }

    fn add(&mut self, sample: f64, clip_level: f64) {
        let square = sample * sample;
        self.samples += 1;
        self.squares += square;
        self.peak = self.peak.max(sample.abs());
        self.clipped += u64::from(sample.abs() >= clip_level);
        self.frame_samples += 1;
        self.frame_squares += square;
        if self.frame_samples == self.frame_len {
            self.frames += 1;
            self.silent_frames += u64::from(self.frame_is_silent());
            (self.frame_samples, self.frame_squares) = (0, 0.0);
        }
    }

    fn frame_is_silent(&self) -> bool {
        dbfs(rms(self.frame_squares, self.frame_samples as u64)).is_none_or(|db| db < SILENCE_DBFS)
    }
}

fn rms(squares: f64, count: u64) -> f64 {
    if count == 0 {
        return 0.0;
    }
    (squares / count as f64).sqrt()
}

/// Level in dBFS, rounded to 0.01 dB; `None` (JSON null) for digital silence, which has none.
fn dbfs(level: f64) -> Option<f64> {
    (level > 0.0).then(|| (20.0 * level.log10() * 100.0).round() / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_by_their_magic_bytes() {
        assert_eq!(AudioFormat::sniff(b"RIFF\0\0\0\0WAVEfmt "), Some(AudioFormat::Wav));
        assert_eq!(AudioFormat::sniff(&[0x1A, 0x45, 0xDF, 0xA3, 1]), Some(AudioFormat::WebM));
        assert_eq!(AudioFormat::sniff(b"OggS\0"), Some(AudioFormat::Ogg));
        assert_eq!(AudioFormat::sniff(b"fLaC\0"), Some(AudioFormat::Flac));
        assert_eq!(AudioFormat::sniff(b"\0\0\0\x20ftypM4A "), Some(AudioFormat::Mp4));
        assert_eq!(AudioFormat::sniff(b"ID3\x04"), Some(AudioFormat::Mp3));
        assert_eq!(AudioFormat::sniff(b"hello, world"), None);
        assert_eq!(AudioFormat::sniff(b""), None);
    }

    /// A 16-bit PCM WAV of `frames` silent frames whose header says `sample_rate`.
    fn wav(sample_rate: u32, channels: u16, frames: u32) -> Vec<u8> {
        let data_len = frames * u32::from(channels) * 2;
        let mut bytes = b"RIFF".to_vec();
        bytes.extend((36 + data_len).to_le_bytes());
        bytes.extend(b"WAVEfmt ");
        bytes.extend(16_u32.to_le_bytes());
        bytes.extend(1_u16.to_le_bytes());
        bytes.extend(channels.to_le_bytes());
        bytes.extend(sample_rate.to_le_bytes());
        bytes.extend((sample_rate * u32::from(channels) * 2).to_le_bytes());
        bytes.extend((channels * 2).to_le_bytes());
        bytes.extend(16_u16.to_le_bytes());
        bytes.extend(b"data");
        bytes.extend(data_len.to_le_bytes());
        bytes.resize(bytes.len() + data_len as usize, 0);
        bytes
    }

    #[test]
    fn a_header_that_describes_no_real_audio_is_not_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let analysed = |name: &str, bytes: Vec<u8>| {
            let path = dir.path().join(name);
            std::fs::write(&path, &bytes).unwrap();
            analyse(&path, AudioFormat::Wav, bytes.len() as u64)
        };
        let real = analysed("real.wav", wav(16_000, 1, 16_000));
        assert_eq!((real["decoded"].as_bool(), real["duration_ms"].as_u64()), (Some(true), Some(1000)));
        for (name, rate, channels) in [("zero.wav", 0, 1), ("slow.wav", 1, 1), ("fast.wav", 10_000_000, 1)] {
            let value = analysed(name, wav(rate, channels, 100));
            assert_eq!(value["decoded"], false, "{name}: {value}");
            assert!(value.get("duration_ms").is_none(), "{name}: no made-up duration");
        }
    }
}
