//! `gateway.toml`: read in two steps. [`RawConfig`] deserializes and validates without
//! touching anything but the file itself; [`GatewayConfig`] holds the resolved values (paths
//! made absolute against the config file's directory, durations parsed, store located).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ConfigProblem};

/// Default listen address: every interface, the one port.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:5723";
/// Default SQLite store file name, next to the config file.
pub const DEFAULT_STORE: &str = "outpost.db";
/// Default lifetime of appliance certificates.
pub const DEFAULT_CERT_LIFETIME: &str = "90d";
/// Default cap on the decompressed size of one ingest batch (64 MiB).
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: u64 = 64 * 1024 * 1024;
/// Default cap on ingest requests handled at once; past it the gateway answers 503.
pub const DEFAULT_MAX_INGEST_IN_FLIGHT: u32 = 256;
/// Default cap on TLS handshakes in progress at once; later connections wait their turn.
pub const DEFAULT_MAX_HANDSHAKES_IN_FLIGHT: u32 = 64;
/// Default `Retry-After` of an overload 503, seconds.
pub const DEFAULT_OVERLOAD_RETRY_AFTER_SECS: u32 = 2;

/// `gateway.toml` as written by an operator. Unknown keys are refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Listen address, `ip:port`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// SQLite file (relative to the config file) or a `postgres://` URL.
    #[serde(default = "default_store")]
    pub store: String,
    /// CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// CA private key (PEM, mode 0600).
    pub ca_key: PathBuf,
    /// The gateway's server certificate (PEM).
    pub server_cert: PathBuf,
    /// The gateway's server key (PEM, mode 0600).
    pub server_key: PathBuf,
    /// Lifetime of issued appliance certificates, e.g. `"90d"`.
    #[serde(default = "default_cert_lifetime")]
    pub cert_lifetime: String,
    /// Cap on a request body as received (compressed), bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Cap on an ingest batch once decompressed, bytes.
    #[serde(default = "default_max_decompressed")]
    pub max_decompressed_bytes: u64,
    /// Ingest requests handled at once (body read, decoded, stored); one more is answered
    /// 503 `overloaded` with `Retry-After` instead of queueing until it times out.
    #[serde(default = "default_max_ingest_in_flight")]
    pub max_ingest_in_flight: u32,
    /// TLS handshakes in progress at once; further connections wait (within the handshake
    /// timeout) so a reconnect storm cannot take every core and all memory at once.
    #[serde(default = "default_max_handshakes_in_flight")]
    pub max_handshakes_in_flight: u32,
    /// `Retry-After` of an overload 503, seconds.
    #[serde(default = "default_overload_retry_after_secs")]
    pub overload_retry_after_secs: u32,
    /// `[feed]`: the vendor's update feed served under `/v1/feed/` (absent: not served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed: Option<FeedSection>,
}

/// `[feed]` of `gateway.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedSection {
    /// The published repository (the directory holding `metadata/` and `targets/`),
    /// relative to the config file. Served read-only.
    pub dir: PathBuf,
}

fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}
fn default_store() -> String {
    DEFAULT_STORE.to_string()
}
fn default_cert_lifetime() -> String {
    DEFAULT_CERT_LIFETIME.to_string()
}
fn default_max_body() -> u64 {
    outpost_proto::DEFAULT_MAX_BODY_BYTES
}
fn default_max_decompressed() -> u64 {
    DEFAULT_MAX_DECOMPRESSED_BYTES
}
fn default_max_ingest_in_flight() -> u32 {
    DEFAULT_MAX_INGEST_IN_FLIGHT
}
fn default_max_handshakes_in_flight() -> u32 {
    DEFAULT_MAX_HANDSHAKES_IN_FLIGHT
}
fn default_overload_retry_after_secs() -> u32 {
    DEFAULT_OVERLOAD_RETRY_AFTER_SECS
}

impl RawConfig {
    /// The config `init` writes: files named relative to the config's directory.
    #[must_use]
    pub fn for_init() -> Self {
        Self {
            listen: default_listen(),
            store: default_store(),
            ca_cert: "ca.pem".into(),
            ca_key: "ca-key.pem".into(),
            server_cert: "server.pem".into(),
            server_key: "server-key.pem".into(),
            cert_lifetime: default_cert_lifetime(),
            max_body_bytes: default_max_body(),
            max_decompressed_bytes: default_max_decompressed(),
            max_ingest_in_flight: default_max_ingest_in_flight(),
            max_handshakes_in_flight: default_max_handshakes_in_flight(),
            overload_retry_after_secs: default_overload_retry_after_secs(),
            feed: None,
        }
    }

    /// Parses TOML text; `file` is only used to name the source in errors.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the key and the problem.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: Self = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            problem: ConfigProblem::Syntax(e.to_string().trim_end().to_string()),
        })?;
        raw.validate(file)?;
        Ok(raw)
    }

    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| ConfigError {
            file: file.to_path_buf(),
            problem: ConfigProblem::Key {
                key: key.to_string(),
                message: msg,
            },
        };
        self.listen
            .parse::<SocketAddr>()
            .map_err(|e| bad("listen", format!("{:?} is not ip:port: {e}", self.listen)))?;
        outpost_proto::parse_duration(&self.cert_lifetime)
            .map_err(|e| bad("cert_lifetime", e.to_string()))?;
        if self.max_body_bytes < 1024 {
            return Err(bad(
                "max_body_bytes",
                format!("{} is below the minimum of 1024", self.max_body_bytes),
            ));
        }
        if self.max_decompressed_bytes < self.max_body_bytes {
            return Err(bad(
                "max_decompressed_bytes",
                format!(
                    "{} is smaller than max_body_bytes ({})",
                    self.max_decompressed_bytes, self.max_body_bytes
                ),
            ));
        }
        for (key, v) in [
            ("max_ingest_in_flight", self.max_ingest_in_flight),
            ("max_handshakes_in_flight", self.max_handshakes_in_flight),
            ("overload_retry_after_secs", self.overload_retry_after_secs),
        ] {
            if v == 0 {
                return Err(bad(key, "must be at least 1".into()));
            }
        }
        if self.store.trim().is_empty() {
            return Err(bad("store", "must not be empty".into()));
        }
        if self
            .feed
            .as_ref()
            .is_some_and(|f| f.dir.as_os_str().is_empty())
        {
            return Err(bad("feed.dir", "must not be empty".into()));
        }
        Ok(())
    }

    /// Serializes to TOML for `init`.
    #[must_use]
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// Embedded SQLite file.
    Sqlite(PathBuf),
    /// Shared PostgreSQL database (URL; may hold a password, never logged).
    Postgres(String),
}

impl StoreLocation {
    /// A description safe to log: the path, or the URL without its credentials.
    #[must_use]
    pub fn redacted(&self) -> String {
        match self {
            Self::Sqlite(p) => format!("sqlite {}", p.display()),
            Self::Postgres(url) => {
                let tail = url.rsplit_once('@').map_or(url.as_str(), |(_, t)| t);
                format!("postgres {tail}")
            }
        }
    }
}

/// Resolved gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The file it came from.
    pub file: PathBuf,
    /// Listen address.
    pub listen: SocketAddr,
    /// Store.
    pub store: StoreLocation,
    /// CA certificate path.
    pub ca_cert: PathBuf,
    /// CA key path.
    pub ca_key: PathBuf,
    /// Server certificate path.
    pub server_cert: PathBuf,
    /// Server key path.
    pub server_key: PathBuf,
    /// Appliance certificate lifetime.
    pub cert_lifetime: Duration,
    /// Body cap, bytes.
    pub max_body_bytes: u64,
    /// Decompressed batch cap, bytes.
    pub max_decompressed_bytes: u64,
    /// Ingest requests handled at once.
    pub max_ingest_in_flight: u32,
    /// TLS handshakes in progress at once.
    pub max_handshakes_in_flight: u32,
    /// `Retry-After` of an overload 503, seconds.
    pub overload_retry_after_secs: u32,
    /// The update feed's directory, when `[feed]` is set.
    pub feed_dir: Option<PathBuf>,
}

impl GatewayConfig {
    /// Reads, validates and resolves a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file (and key) when it cannot be read or is invalid.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            problem: ConfigProblem::Read(e),
        })?;
        let raw = RawConfig::parse(file, &text)?;
        Ok(Self::resolve(file, raw))
    }

    /// Turns a validated [`RawConfig`] into paths and values.
    #[must_use]
    pub fn resolve(file: &Path, raw: RawConfig) -> Self {
        let base = file
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let at = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let store =
            if raw.store.starts_with("postgres://") || raw.store.starts_with("postgresql://") {
                StoreLocation::Postgres(raw.store.clone())
            } else {
                let p = raw
                    .store
                    .strip_prefix("sqlite://")
                    .or_else(|| raw.store.strip_prefix("sqlite:"))
                    .unwrap_or(&raw.store);
                StoreLocation::Sqlite(at(Path::new(p)))
            };
        Self {
            file: file.to_path_buf(),
            // Validated in `RawConfig::parse`.
            listen: raw
                .listen
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], outpost_proto::DEFAULT_PORT))),
            store,
            ca_cert: at(&raw.ca_cert),
            ca_key: at(&raw.ca_key),
            server_cert: at(&raw.server_cert),
            server_key: at(&raw.server_key),
            cert_lifetime: outpost_proto::parse_duration(&raw.cert_lifetime)
                .unwrap_or(Duration::from_secs(90 * 86_400)),
            max_body_bytes: raw.max_body_bytes,
            max_decompressed_bytes: raw.max_decompressed_bytes,
            max_ingest_in_flight: raw.max_ingest_in_flight,
            max_handshakes_in_flight: raw.max_handshakes_in_flight,
            overload_retry_after_secs: raw.overload_retry_after_secs,
            feed_dir: raw.feed.as_ref().map(|f| at(&f.dir)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RawConfig, ConfigError> {
        RawConfig::parse(Path::new("gw/gateway.toml"), text)
    }

    const MINIMAL: &str = r#"
ca_cert = "ca.pem"
ca_key = "ca-key.pem"
server_cert = "server.pem"
server_key = "server-key.pem"
"#;

    #[test]
    fn defaults_fill_in() {
        let raw = parse(MINIMAL).unwrap();
        assert_eq!(raw.listen, DEFAULT_LISTEN);
        let cfg = GatewayConfig::resolve(Path::new("gw/gateway.toml"), raw);
        assert_eq!(
            cfg.store,
            StoreLocation::Sqlite(PathBuf::from("gw/outpost.db"))
        );
        assert_eq!(cfg.ca_key, PathBuf::from("gw/ca-key.pem"));
        assert_eq!(cfg.cert_lifetime, Duration::from_secs(90 * 86_400));
        assert_eq!(cfg.max_ingest_in_flight, DEFAULT_MAX_INGEST_IN_FLIGHT);
        assert_eq!(
            cfg.max_handshakes_in_flight,
            DEFAULT_MAX_HANDSHAKES_IN_FLIGHT
        );
        assert_eq!(
            cfg.overload_retry_after_secs,
            DEFAULT_OVERLOAD_RETRY_AFTER_SECS
        );
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = parse(&format!("{MINIMAL}\nlisten_port = 5\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gw/gateway.toml"), "{err}");
        assert!(err.contains("listen_port"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = parse(&format!("{MINIMAL}\ncert_lifetime = \"ninety days\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cert_lifetime") && err.contains("ninety days"),
            "{err}"
        );
        let err = parse(&format!("{MINIMAL}\nlisten = \"localhost\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"listen\""), "{err}");
        let err = parse(&format!("{MINIMAL}\nmax_body_bytes = 10\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_body_bytes"), "{err}");
        let err = parse(&format!("{MINIMAL}\nmax_ingest_in_flight = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_ingest_in_flight"), "{err}");
    }

    #[test]
    fn postgres_urls_are_redacted() {
        let raw = parse(&format!(
            "{MINIMAL}\nstore = \"postgres://u:secret@db:5432/o\"\n"
        ))
        .unwrap();
        let cfg = GatewayConfig::resolve(Path::new("gateway.toml"), raw);
        let shown = cfg.store.redacted();
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("db:5432/o"), "{shown}");
    }

    #[test]
    fn feed_dir_is_optional_and_relative_to_the_file() {
        let raw = parse(MINIMAL).unwrap();
        let cfg = GatewayConfig::resolve(Path::new("gw/gateway.toml"), raw);
        assert_eq!(cfg.feed_dir, None);
        let raw = parse(&format!("{MINIMAL}\n[feed]\ndir = \"feed/repo\"\n")).unwrap();
        let cfg = GatewayConfig::resolve(Path::new("gw/gateway.toml"), raw);
        assert_eq!(cfg.feed_dir, Some(PathBuf::from("gw/feed/repo")));
        let err = parse(&format!("{MINIMAL}\n[feed]\npath = \"x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("path"), "{err}");
    }

    #[test]
    fn init_config_round_trips() {
        let text = RawConfig::for_init().to_toml();
        let raw = parse(&text).unwrap();
        assert_eq!(raw.ca_cert, PathBuf::from("ca.pem"));
    }
}
