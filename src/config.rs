//! Settings: one model, loaded from a TOML file, then `CACHESYNC_*`
//! environment variables (`CACHESYNC_CLIENT__MIRROR`, `__` between section
//! and field), then command-line flags. Every field has a default that works
//! on one machine with no file at all. Loading ([`load`]) is the only I/O;
//! [`Settings::validate`] is pure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::schedule::Schedule;
mod agent;
pub use agent::{AgentConfig, AgentSettings, Direction, RootConfig, RootSettings};

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, environment or flags hold something unusable.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Everything configurable.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where local state (hash caches) is kept.
    pub state_dir: PathBuf,
    /// Logging.
    pub log: LogSettings,
    /// The mirror process.
    pub mirror: MirrorSettings,
    /// Commands that talk to a mirror.
    pub client: ClientSettings,
    /// How bytes move.
    pub transfer: TransferSettings,
    /// The mirror's replication from another mirror.
    pub replicate: ReplicateSettings,
    /// The agent process.
    pub agent: AgentSettings,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A tracing filter: `info`, `debug`, `cachesync=debug,tonic=info`;
    /// empty means `info` for the mirror and `warn` for one-shot commands.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

/// The mirror process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorSettings {
    /// Address of the gRPC service.
    pub listen: String,
    /// The store: a directory (or `file://` URL), or `s3://bucket/prefix`
    /// (credentials, region and endpoint from the `AWS_*` environment).
    pub store: String,
    /// Largest blob accepted, in bytes.
    pub max_blob_bytes: u64,
    /// The tokens file (empty: no tokens, anyone may read and write).
    pub tokens_file: String,
    /// TLS certificate chain (PEM); with `tls_key`, the mirror serves TLS only.
    pub tls_cert: String,
    /// TLS private key (PEM).
    pub tls_key: String,
    /// CA (PEM) that client certificates must chain to: mutual TLS, required.
    pub tls_client_ca: String,
    /// Address of the Prometheus `GET /metrics` endpoint; empty: none.
    pub metrics_listen: String,
    /// Address of the Go module proxy endpoint (HTTP); empty: none.
    pub goproxy_listen: String,
    /// The path the Go module proxy is mounted under (`/go`); empty: the root.
    pub goproxy_prefix: String,
    /// The Go module proxy serves only keys starting with this; empty: all.
    pub goproxy_keys: String,
}

/// Commands that talk to a mirror.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientSettings {
    /// The mirror's URL.
    pub mirror: String,
    /// How long to wait for a connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// The token to present (prefer `token_file` or the environment: flags show in `ps`).
    pub token: String,
    /// A file holding the token.
    pub token_file: String,
    /// CA (PEM) for `https://` mirrors; empty: the system's roots.
    pub ca_file: String,
    /// Client certificate (PEM), for mirrors that require mutual TLS.
    pub cert_file: String,
    /// Client private key (PEM).
    pub key_file: String,
}

/// How bytes move.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransferSettings {
    /// Files smaller than this are sent whole, never as deltas.
    pub delta_min_size: u64,
    /// zstd level for content on the wire, 0 (off) to 19.
    pub compression_level: i32,
    /// fsync every pulled file (otherwise one syncfs at the end of a pull).
    pub fsync: bool,
    /// Concurrent blob streams per push or pull, 1 to 16.
    pub streams: usize,
    /// New files as deltas against other versions of them: remote, always, never.
    pub fuzzy: crate::sync::When,
    /// `go-mod-trees` tree files are unpacked from their zips on the
    /// receiving side (the client on a pull, the mirror on a push) rather
    /// than sent: remote, always, never.
    pub unpack: crate::sync::When,
}

/// The mirror's replication from another mirror (connecting with the
/// `[client]` token and TLS files).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicateSettings {
    /// The source mirror's URL; empty: no replication.
    pub from: String,
    /// When to replicate: a cron expression in UTC, e.g. `0 2 * * *`.
    pub cron: String,
    /// Or an interval, e.g. `1h` (a first run at start).
    pub interval: String,
    /// Only keys starting with this.
    pub keys: String,
}

impl ReplicateSettings {
    /// The schedule, when replication is configured.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for a bad URL, prefix or schedule, or a
    /// schedule without a source.
    pub fn schedule(&self) -> Result<Option<Schedule>, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let given = |s: &str| (!s.is_empty()).then(|| s.to_string());
        if let Err(e) = crate::store::check_prefix(&self.keys) {
            return bad(format!("replicate.keys: {e}"));
        }
        if self.from.is_empty() {
            if self.cron.is_empty() && self.interval.is_empty() {
                return Ok(None);
            }
            return bad("replicate.cron and replicate.interval need replicate.from".into());
        }
        if !self.from.starts_with("http://") && !self.from.starts_with("https://") {
            return bad(format!("replicate.from = {:?}: expected a URL like https://mirror:7415", self.from));
        }
        match Schedule::from_parts(given(&self.interval).as_deref(), given(&self.cron).as_deref()) {
            Ok(schedule) => Ok(Some(schedule)),
            Err(e) => bad(format!("replicate.interval or replicate.cron: {e}")),
        }
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

fn xdg(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => home().join(fallback),
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { level: String::new(), format: "text".into() }
    }
}

impl Default for MirrorSettings {
    fn default() -> Self {
        let store = xdg("XDG_DATA_HOME", ".local/share").join("cachesync/store");
        MirrorSettings {
            listen: "127.0.0.1:7415".into(),
            store: store.to_string_lossy().into_owned(),
            max_blob_bytes: 64 << 30,
            tokens_file: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_client_ca: String::new(),
            metrics_listen: String::new(),
            goproxy_listen: String::new(),
            goproxy_prefix: String::new(),
            goproxy_keys: String::new(),
        }
    }
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            mirror: "http://127.0.0.1:7415".into(),
            connect_timeout_ms: 10_000,
            token: String::new(),
            token_file: String::new(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
        }
    }
}

impl Default for TransferSettings {
    fn default() -> Self {
        TransferSettings {
            delta_min_size: 128 << 10,
            compression_level: 3,
            fsync: false,
            streams: 4,
            fuzzy: crate::sync::When::Remote,
            unpack: crate::sync::When::Remote,
        }
    }
}

impl Settings {
    fn with_defaults() -> Settings {
        Settings { state_dir: xdg("XDG_STATE_HOME", ".local/state").join("cachesync"), ..Settings::default() }
    }

    /// Checks values that parse but cannot work.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.mirror.listen.parse::<SocketAddr>().is_err() {
            return bad(format!("mirror.listen = {:?}: expected an address like 127.0.0.1:7415", self.mirror.listen));
        }
        if !self.client.mirror.starts_with("http://") && !self.client.mirror.starts_with("https://") {
            return bad(format!("client.mirror = {:?}: expected a URL like http://127.0.0.1:7415", self.client.mirror));
        }
        if !self.mirror.metrics_listen.is_empty() && self.mirror.metrics_listen.parse::<SocketAddr>().is_err() {
            let addr = &self.mirror.metrics_listen;
            return bad(format!("mirror.metrics_listen = {addr:?}: expected an address like 127.0.0.1:9415"));
        }
        if self.mirror.tls_cert.is_empty() != self.mirror.tls_key.is_empty() {
            return bad("mirror.tls_cert and mirror.tls_key go together".into());
        }
        if !self.mirror.tls_client_ca.is_empty() && self.mirror.tls_cert.is_empty() {
            return bad("mirror.tls_client_ca needs mirror.tls_cert and mirror.tls_key".into());
        }
        if self.client.cert_file.is_empty() != self.client.key_file.is_empty() {
            return bad("client.cert_file and client.key_file go together".into());
        }
        if !(0..=19).contains(&self.transfer.compression_level) {
            return bad(format!("transfer.compression_level = {}: expected 0 to 19", self.transfer.compression_level));
        }
        self.validate_goproxy()?;
        if self.transfer.delta_min_size < 4096 {
            return bad(format!("transfer.delta_min_size = {}: expected at least 4096", self.transfer.delta_min_size));
        }
        if !(1..=16).contains(&self.transfer.streams) {
            return bad(format!("transfer.streams = {}: expected 1 to 16", self.transfer.streams));
        }
        if self.client.connect_timeout_ms == 0 {
            return bad("client.connect_timeout_ms = 0: expected a positive number".into());
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad(format!("log.format = {:?}: expected text or json", self.log.format));
        }
        if self.state_dir.as_os_str().is_empty() {
            return bad("state_dir is empty".into());
        }
        self.replicate.schedule()?;
        self.agent.resolve().map(|_| ())
    }

    fn validate_goproxy(&self) -> Result<(), ConfigError> {
        let m = &self.mirror;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !m.goproxy_listen.is_empty() && m.goproxy_listen.parse::<SocketAddr>().is_err() {
            return bad(format!(
                "mirror.goproxy_listen = {:?}: expected an address like 127.0.0.1:7416",
                m.goproxy_listen
            ));
        }
        let prefix = &m.goproxy_prefix;
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        };
        if !prefix.is_empty() && !prefix.strip_prefix('/').is_some_and(|p| p.split('/').all(segment_ok)) {
            return bad(format!(
                "mirror.goproxy_prefix = {prefix:?}: expected empty or a path like /go (no trailing /)"
            ));
        }
        if let Err(e) = crate::store::check_prefix(&m.goproxy_keys) {
            return bad(format!("mirror.goproxy_keys: {e}"));
        }
        Ok(())
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.client.connect_timeout_ms)
    }
}

/// Loads settings: defaults, then `file` (if given), then `CACHESYNC_*`
/// variables from `env`, then `flags` (dotted keys like `client.mirror`).
///
/// # Errors
///
/// [`ConfigError::Invalid`] naming the source and the setting.
pub fn load<I>(file: Option<&Path>, env: I, flags: &[(&str, String)]) -> Result<Settings, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let invalid = |e: config::ConfigError| ConfigError::Invalid(e.to_string());
    let defaults = config::Config::try_from(&Settings::with_defaults()).map_err(invalid)?;
    let mut builder = config::Config::builder().add_source(defaults);
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::Invalid(format!("{}: no such configuration file", path.display())));
        }
        builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
    }
    let vars: config::Map<String, String> = env.into_iter().filter(|(k, _)| k.starts_with("CACHESYNC_")).collect();
    let environment = config::Environment::with_prefix("CACHESYNC")
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .source(Some(vars));
    builder = builder.add_source(environment);
    for (key, value) in flags {
        builder = builder.set_override(*key, value.as_str()).map_err(invalid)?;
    }
    let settings: Settings = builder.build().map_err(invalid)?.try_deserialize().map_err(invalid)?;
    settings.validate()?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_work_without_anything() {
        let s = load(None, env(&[]), &[]).unwrap();
        assert_eq!(s.mirror.listen, "127.0.0.1:7415");
        assert_eq!(s.transfer.compression_level, 3);
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[client]\nmirror = \"http://file:1\"\n[transfer]\ndelta_min_size = 65536\n").unwrap();
        let s = load(Some(&file), env(&[("CACHESYNC_CLIENT__MIRROR", "http://env:2")]), &[]).unwrap();
        assert_eq!(s.client.mirror, "http://env:2");
        assert_eq!(s.transfer.delta_min_size, 65536);
        let s = load(
            Some(&file),
            env(&[("CACHESYNC_CLIENT__MIRROR", "http://env:2")]),
            &[("client.mirror", "http://flag:3".into())],
        )
        .unwrap();
        assert_eq!(s.client.mirror, "http://flag:3");
    }

    #[test]
    fn typos_and_bad_values_are_errors_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[transfer]\ndelta_min_sise = 1\n").unwrap();
        let e = load(Some(&file), env(&[]), &[]).unwrap_err().to_string();
        assert!(e.contains("delta_min_sise"), "{e}");
        let e = load(None, env(&[("CACHESYNC_TRANSFER__COMPRESSION_LEVEL", "99")]), &[]).unwrap_err().to_string();
        assert!(e.contains("compression_level"), "{e}");
        let e = load(None, env(&[("CACHESYNC_TRANSFER__DELTA_MIN_SIZE", "lots")]), &[]).unwrap_err().to_string();
        assert!(e.contains("delta_min_size"), "{e}");
        let e = load(None, env(&[]), &[("mirror.listen", "nowhere".into())]).unwrap_err().to_string();
        assert!(e.contains("mirror.listen"), "{e}");
        assert!(load(Some(Path::new("/nonexistent.toml")), env(&[]), &[]).is_err());
    }

    #[test]
    fn replication_needs_a_source_and_exactly_one_schedule() {
        let flags = |pairs: &[(&'static str, &str)]| pairs.iter().map(|(k, v)| (*k, v.to_string())).collect::<Vec<_>>();
        let s = load(None, env(&[]), &flags(&[("replicate.from", "http://a:1"), ("replicate.cron", "0 2 * * *")]));
        assert!(matches!(s.unwrap().replicate.schedule(), Ok(Some(Schedule::Cron(_)))));
        for (pairs, what) in [
            (&[("replicate.from", "http://a:1")][..], "exactly one"),
            (
                &[("replicate.from", "http://a:1"), ("replicate.cron", "0 2 * *"), ("replicate.interval", "1h")],
                "exactly one",
            ),
            (&[("replicate.from", "http://a:1"), ("replicate.cron", "61 * * * *")], "cron"),
            (&[("replicate.from", "http://a:1"), ("replicate.interval", "soon")], "soon"),
            (&[("replicate.interval", "1h")], "need replicate.from"),
            (&[("replicate.from", "a:1"), ("replicate.interval", "1h")], "replicate.from"),
            (&[("replicate.keys", "../x")], "replicate.keys"),
        ] {
            let e = load(None, env(&[]), &flags(pairs)).unwrap_err().to_string();
            assert!(e.contains(what), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn goproxy_settings_are_checked() {
        let ok = [
            ("mirror.goproxy_listen", "127.0.0.1:0"),
            ("mirror.goproxy_prefix", "/go/proxy"),
            ("mirror.goproxy_keys", "gomod/"),
        ];
        let flags: Vec<_> = ok.iter().map(|(k, v)| (*k, v.to_string())).collect();
        assert_eq!(load(None, env(&[]), &flags).unwrap().mirror.goproxy_prefix, "/go/proxy");
        for (key, value) in [
            ("mirror.goproxy_listen", "nowhere"),
            ("mirror.goproxy_prefix", "go"),
            ("mirror.goproxy_prefix", "/go/"),
            ("mirror.goproxy_prefix", "/a/../b"),
            ("mirror.goproxy_prefix", "/a b"),
            ("mirror.goproxy_keys", "../x"),
        ] {
            let e = load(None, env(&[]), &[(key, value.into())]).unwrap_err().to_string();
            assert!(e.contains(key), "{key} = {value}: {e}");
        }
    }
}
