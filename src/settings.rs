//! Every setting, each a flag and an environment variable, documented here. A leaf: the
//! command line (`cli`) parses these for its commands, and everything below reads them.

use clap::{Args, Parser};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A duration as humantime reads it (`500ms`, `90s`, `15m`, `24h`, `7d`, `1h 30m`), or a bare
/// number of seconds, which earlier releases accepted and deployments may still set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if let Ok(seconds) = raw.parse::<u64>() {
            return Ok(Self(Duration::from_secs(seconds)));
        }
        humantime::parse_duration(raw)
            .map(Self)
            .map_err(|error| format!("{raw:?} is not a duration like 60s, 15m or 24h: {error}"))
    }
}

/// `CORS_ORIGINS`: web origins written as browsers send them in `Origin`: a scheme, a host and
/// a port unless it is the scheme's default, and nothing after (`https://app.example.com`,
/// `http://localhost:5173`). They are compared byte for byte with `Origin`, so a spelling no
/// browser sends (`HTTPS://App.example.com`, `https://app.example.com:443`, a path) would never
/// match: it is refused at start with the spelling to use instead. A trailing `/` is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins(pub Vec<String>);

impl FromStr for Origins {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let given = raw.split(',').map(|origin| origin.trim().trim_end_matches('/')).filter(|o| !o.is_empty());
        given
            .map(|origin| {
                let parsed =
                    url::Url::parse(origin).map_err(|error| format!("{origin:?} is not an origin: {error}"))?;
                let serialized = parsed.origin();
                if !serialized.is_tuple() {
                    return Err(format!("{origin:?} is not a web origin like https://app.example.com"));
                }
                let serialized = serialized.ascii_serialization();
                if serialized != origin {
                    return Err(format!("{origin:?} is not how browsers send that origin: write {serialized:?}"));
                }
                Ok(serialized)
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to listen on. Without API_TOKENS only loopback addresses are allowed.
    #[arg(long, env = "BIND", default_value = "127.0.0.1:8080", global = true)]
    pub bind: SocketAddr,

    /// Where audio files and (without DATABASE_URL) the embedded PostgreSQL cluster live.
    #[arg(long, env = "DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,

    /// PostgreSQL to use. Unset: upsertd runs its own cluster in <data-dir>/postgres.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// How long a completed Idempotency-Key is remembered.
    #[arg(long, env = "IDEMPOTENCY_TTL", default_value = "24h", global = true)]
    pub idempotency_ttl: HumanDuration,

    /// How long a running upload holds its Idempotency-Key before a retry may take it over
    /// (the other routes record their keys with their effects and hold none).
    #[arg(long, env = "IDEMPOTENCY_LEASE", default_value = "60s", global = true)]
    pub idempotency_lease: HumanDuration,

    /// Largest accepted audio upload, in bytes (413 above it).
    #[arg(long, env = "MAX_UPLOAD_BYTES", default_value_t = 25 * 1024 * 1024, global = true)]
    pub max_upload_bytes: u64,

    /// Largest accepted JSON body, in bytes (413 above it).
    #[arg(long, env = "MAX_JSON_BYTES", default_value_t = 64 * 1024, global = true)]
    pub max_json_bytes: usize,

    /// Public origin used in tracking URLs, e.g. https://ads.example.com. Default: http://<bind>.
    #[arg(long, env = "PUBLIC_BASE_URL", global = true)]
    pub public_base_url: Option<String>,

    /// OpenAI-compatible transcription endpoint (…/v1/audio/transcriptions). Unset: no STT.
    #[arg(long, env = "STT_URL", global = true)]
    pub stt_url: Option<String>,

    /// Bearer token sent to STT_URL.
    #[arg(long, env = "STT_API_KEY", global = true, hide_env_values = true)]
    pub stt_api_key: Option<String>,

    /// Model name sent to STT_URL.
    #[arg(long, env = "STT_MODEL", default_value = "whisper-1", global = true)]
    pub stt_model: String,

    /// Most database connections the pool opens.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16, global = true)]
    pub db_max_connections: u32,

    /// How long a request waits for a connection while every one of the pool is in use, before
    /// answering 503. (A connection the pool has room to open is waited for at most 1 s.)
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT", default_value = "5s", global = true)]
    pub db_acquire_timeout: HumanDuration,

    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "WORKERS", global = true)]
    pub workers: Option<usize>,

    /// Comma-separated bearer tokens; when set, every /api route but the overlay needs one.
    #[arg(long, env = "API_TOKENS", global = true, hide_env_values = true)]
    pub api_tokens: Option<String>,

    /// Comma-separated origins, exactly as browsers send them in Origin (https://app.example.com,
    /// http://localhost:5173), whose web pages may call /api: their preflights are answered (no
    /// token needed) and the answers, errors included, carry CORS headers. Unset: no CORS
    /// headers at all. Without API_TOKENS, writes that carry any other foreign Origin are
    /// refused (403).
    #[arg(long, env = "CORS_ORIGINS", global = true)]
    pub cors_origins: Option<Origins>,

    /// Allow a non-loopback --bind without API_TOKENS (anyone who can reach it can write).
    #[arg(long, env = "ALLOW_UNAUTHENTICATED", global = true)]
    pub allow_unauthenticated: bool,

    /// Do not apply migrations when serving.
    #[arg(long, env = "NO_MIGRATE", global = true)]
    pub no_migrate: bool,
}

impl Settings {
    /// Settings from defaults, the environment and these flags, as if given on the command line.
    pub fn from_args<I: IntoIterator<Item = S>, S: Into<std::ffi::OsString> + Clone>(args: I) -> Self {
        let argv = std::iter::once("upsertd".into()).chain(args.into_iter().map(Into::into));
        Flags::parse_from(argv).settings
    }
}

/// The settings alone, as `Settings::from_args` parses them (tests, tools).
#[derive(Parser)]
#[command(name = "upsertd")]
struct Flags {
    #[command(flatten)]
    settings: Settings,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!("24h".parse::<HumanDuration>().unwrap().0, Duration::from_secs(86_400));
        assert_eq!("90".parse::<HumanDuration>().unwrap().0, Duration::from_secs(90));
        assert_eq!("250ms".parse::<HumanDuration>().unwrap().0, Duration::from_millis(250));
        assert_eq!("500ms".parse::<HumanDuration>().unwrap().0, Duration::from_millis(500));
        assert_eq!("15m".parse::<HumanDuration>().unwrap().0, Duration::from_secs(900));
        assert_eq!("7d".parse::<HumanDuration>().unwrap().0, Duration::from_secs(7 * 86_400));
        assert_eq!(" 60s ".parse::<HumanDuration>().unwrap().0, Duration::from_secs(60));
        assert_eq!("1h 30m".parse::<HumanDuration>().unwrap().0, Duration::from_secs(5400));
        for bad in ["soon", "", "-5s", "5 parsecs"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn origins_are_taken_only_as_browsers_spell_them() {
        let origins: Origins = " https://app.example.com/ ,http://localhost:5173,, http://[::1]:8081".parse().unwrap();
        assert_eq!(origins.0, ["https://app.example.com", "http://localhost:5173", "http://[::1]:8081"]);
        assert_eq!("".parse::<Origins>().unwrap(), Origins::default());
        for (bad, hint) in [
            ("https://App.example.com", "write \"https://app.example.com\""),
            ("https://app.example.com:443", "write \"https://app.example.com\""),
            ("https://app.example.com/page", "write \"https://app.example.com\""),
            ("*", "is not an origin"),
            ("null", "is not an origin"),
            ("app.example.com", "is not an origin"),
            ("file:///tmp/page.html", "is not a web origin"),
        ] {
            let refused = bad.parse::<Origins>().expect_err(bad);
            assert!(refused.contains(hint), "{bad}: {refused}");
        }
    }
}
