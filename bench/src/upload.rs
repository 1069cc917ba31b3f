//! The `upload-audio` workload's requests: a `multipart/form-data` body with a `session_id` text
//! part and an `audio` part holding a PCM WAV made once at setup. Each request's session id is
//! written into the first samples of its audio, so every upload is new bytes: a new stored file
//! (the server keeps one file per content hash, and would skip storing a repeat).

use bytes::{BufMut, Bytes, BytesMut};

/// The boundary: ASCII that 16-bit samples of a sine wave do not spell out.
macro_rules! boundary {
    () => {
        "upsertd-bench-5f0c93a1d7e2b846"
    };
}
const BOUNDARY: &str = boundary!();
pub const CONTENT_TYPE: &str = concat!("multipart/form-data; boundary=", boundary!());

/// PCM bytes per upload: 300 KiB, 9.6 s of 16-bit mono at 16 kHz.
const AUDIO_BYTES: usize = 300 * 1024;
const SAMPLE_RATE: u32 = 16_000;
/// The canonical 44-byte header: RIFF, a 16-byte `fmt ` chunk, the `data` chunk's header.
const WAV_HEADER: usize = 44;

/// The audio every request starts from.
pub struct Form {
    wav: Vec<u8>,
}

impl Form {
    pub fn new() -> Self {
        Self { wav: wav(AUDIO_BYTES) }
    }

    /// The form for one request: `session_id` as its text part and stamped into the audio.
    pub fn body(&self, session_id: &str) -> Bytes {
        let head = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"session_id\"\r\n\r\n{session_id}\r\n\
             --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"bench.wav\"\r\n\
             Content-Type: audio/wav\r\n\r\n"
        );
        let tail = concat!("\r\n--", boundary!(), "--\r\n");
        let mut body = BytesMut::with_capacity(head.len() + self.wav.len() + tail.len());
        body.put_slice(head.as_bytes());
        let samples = body.len() + WAV_HEADER;
        body.put_slice(&self.wav);
        let stamp = &session_id.as_bytes()[..session_id.len().min(self.wav.len() - WAV_HEADER)];
        body[samples..samples + stamp.len()].copy_from_slice(stamp);
        body.put_slice(tail.as_bytes());
        body.freeze()
    }
}

/// A valid PCM WAV of `data_bytes` bytes of samples: a 440 Hz sine at half scale.
fn wav(data_bytes: usize) -> Vec<u8> {
    let samples = data_bytes / 2;
    let data_len = u32::try_from(samples * 2).expect("a WAV holds less than 4 GiB");
    let mut out = Vec::with_capacity(WAV_HEADER + samples * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&(SAMPLE_RATE * 2).to_le_bytes()); // bytes per second
    out.extend_from_slice(&2u16.to_le_bytes()); // bytes per frame
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    let step = std::f64::consts::TAU * 440.0 / f64::from(SAMPLE_RATE);
    for i in 0..samples {
        let sample = (step * i as f64).sin() * f64::from(i16::MAX / 2);
        out.extend_from_slice(&(sample as i16).to_le_bytes());
    }
    debug_assert_eq!(out.len(), WAV_HEADER + data_bytes / 2 * 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_form_is_a_valid_wav_in_a_well_formed_body() {
        let form = Form::new();
        let (a, b) = (form.body("up-1"), form.body("up-2"));
        assert_ne!(a, b);
        let text = String::from_utf8_lossy(&a);
        assert!(text.starts_with(concat!("--", boundary!(), "\r\n")));
        assert!(text.ends_with(concat!("\r\n--", boundary!(), "--\r\n")));
        assert_eq!(text.matches(BOUNDARY).count(), 3, "the audio never spells the boundary");
        let audio = a.windows(4).position(|w| w == b"RIFF").expect("the audio part");
        let wav = &a[audio..a.len() - BOUNDARY.len() - 8];
        assert_eq!(wav.len(), WAV_HEADER + AUDIO_BYTES);
        assert_eq!(u32::from_le_bytes(wav[4..8].try_into().unwrap()) as usize, wav.len() - 8);
        assert_eq!(&wav[8..16], b"WAVEfmt ");
        assert_eq!(u32::from_le_bytes(wav[40..44].try_into().unwrap()) as usize, AUDIO_BYTES);
        assert_eq!(&wav[WAV_HEADER..WAV_HEADER + 4], b"up-1");
    }
}
