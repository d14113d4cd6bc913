//! `collector.toml`: what the operator (or the image) tells the collector.
//!
//! Two steps, as in the rest of Outpost: [`RawConfig::parse`] deserializes and validates
//! without touching the world; [`Config::resolve`] reads the CA certificate and turns relative
//! paths into paths against the config file's directory. Every error names the file, the key
//! and what is wrong with it.
//!
//! ```toml
//! gateways = ["gw1.example.net:5723", "gw2.example.net:5723"]
//! ca_cert = "ca.pem"
//! state_dir = "/var/lib/outpost-collector"
//! bootstrap_token = "…"          # or bootstrap_token_file = "token"
//! interval = "10s"
//! long_poll = "30s"
//! spool_max_bytes = 268435456     # 256 MiB
//! spool_fsync = "batch"           # "batch" | "always" | "never"
//! backoff_max = "30s"
//! failback_probe = "5m"
//! config_poll = "60s"           # how often GET /v1/config is asked
//! ```

use std::fmt;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use serde::Deserialize;

use crate::spool::{FsyncPolicy, SpoolConfig};

/// Default location of the config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/outpost/collector.toml";
/// Default CA certificate file, relative to the config file's directory.
pub const DEFAULT_CA_CERT: &str = "ca.pem";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/outpost-collector";
/// Default collection interval.
pub const DEFAULT_INTERVAL: &str = "10s";
/// Default long-poll wait for commands.
pub const DEFAULT_LONG_POLL: &str = "30s";
/// Default cap on the spool's disk use (256 MiB).
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = crate::spool::DEFAULT_MAX_BYTES;
/// Default fsync policy of the spool.
pub const DEFAULT_SPOOL_FSYNC: &str = "batch";
/// Default longest delay between two attempts to reach a gateway.
pub const DEFAULT_BACKOFF_MAX: &str = "30s";
/// Default time on a secondary gateway before the primary is probed again.
pub const DEFAULT_FAILBACK_PROBE: &str = "5m";
/// Default period of `GET /v1/config` (new packs, interval).
pub const DEFAULT_CONFIG_POLL: &str = "60s";

/// A config problem. Displays as `FILE: key "KEY": PROBLEM` (or the TOML parser's own
/// message, which names the key and the line).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("failed to read config file {}: {source}", path.display())]
    ReadFile {
        /// The config file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (unknown or missing key,
    /// wrong type). The TOML error names the key and line.
    #[error("{}: {source}", file.display())]
    Parse {
        /// The config file.
        file: PathBuf,
        /// The parser's error.
        source: Box<toml::de::Error>,
    },
    /// A key holds a value that parses but is not acceptable.
    #[error("{}: key {key:?}: {problem}", file.display())]
    InvalidKey {
        /// The config file.
        file: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A file named by a key cannot be used.
    #[error("{}: key {key:?}: cannot use {}: {problem}", file.display(), path.display())]
    KeyFile {
        /// The config file.
        file: PathBuf,
        /// The key naming the file.
        key: &'static str,
        /// The file it names (resolved).
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// `collector.toml` as written, before any file is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Ordered `host:port` list; the first is the primary.
    pub gateways: Vec<String>,
    /// The Outpost CA certificate, relative to the config file's directory.
    #[serde(default = "default_ca_cert")]
    pub ca_cert: PathBuf,
    /// Where the key, certificate, state and outbox live.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Bootstrap token for enrolment.
    #[serde(default)]
    pub bootstrap_token: Option<String>,
    /// File holding the bootstrap token (relative to the config file's directory).
    #[serde(default)]
    pub bootstrap_token_file: Option<PathBuf>,
    /// Collection interval.
    #[serde(default = "default_interval")]
    pub interval: String,
    /// Long-poll wait for commands.
    #[serde(default = "default_long_poll")]
    pub long_poll: String,
    /// Cap on the spool's disk use, bytes; beyond, the oldest metric samples are dropped
    /// (and counted), inventory last.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// When spooled records are forced to disk: `batch`, `always` or `never`.
    #[serde(default = "default_spool_fsync")]
    pub spool_fsync: String,
    /// Longest delay between two attempts to reach a gateway (full-jitter backoff).
    #[serde(default = "default_backoff_max")]
    pub backoff_max: String,
    /// Time on a secondary gateway before the primary is probed (and between probes).
    #[serde(default = "default_failback_probe")]
    pub failback_probe: String,
    /// How often the config (interval, health packs) is fetched from the gateway.
    #[serde(default = "default_config_poll")]
    pub config_poll: String,
}

fn default_ca_cert() -> PathBuf {
    PathBuf::from(DEFAULT_CA_CERT)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_interval() -> String {
    DEFAULT_INTERVAL.to_string()
}
fn default_long_poll() -> String {
    DEFAULT_LONG_POLL.to_string()
}
fn default_spool_max_bytes() -> u64 {
    DEFAULT_SPOOL_MAX_BYTES
}
fn default_spool_fsync() -> String {
    DEFAULT_SPOOL_FSYNC.to_string()
}
fn default_backoff_max() -> String {
    DEFAULT_BACKOFF_MAX.to_string()
}
fn default_failback_probe() -> String {
    DEFAULT_FAILBACK_PROBE.to_string()
}
fn default_config_poll() -> String {
    DEFAULT_CONFIG_POLL.to_string()
}

/// Where the bootstrap token comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Given inline in the config.
    Inline(String),
    /// Read from this file (resolved path) when needed.
    File(PathBuf),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token itself.
        match self {
            Self::Inline(_) => f.write_str("Inline(<redacted>)"),
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// Settings that passed validation; paths still as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidConfig {
    /// Gateways, `host:port`, in order.
    pub gateways: Vec<String>,
    /// As written.
    pub ca_cert: PathBuf,
    /// As written.
    pub state_dir: PathBuf,
    /// Where the token comes from, if anywhere.
    pub bootstrap: Option<TokenSource>,
    /// Collection interval.
    pub interval: Duration,
    /// Long-poll wait.
    pub long_poll: Duration,
    /// Spool cap and fsync policy.
    pub spool: SpoolConfig,
    /// Longest backoff delay.
    pub backoff_max: Duration,
    /// Fail-back probe period.
    pub failback_probe: Duration,
    /// Config fetch period.
    pub config_poll: Duration,
}

impl RawConfig {
    /// Parses TOML text; `file` is only used in messages.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] naming the file (the TOML error names key and line).
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Checks every value; no I/O.
    ///
    /// # Errors
    /// [`ConfigError::InvalidKey`] naming the file and the first bad key.
    pub fn validate(&self, file: &Path) -> Result<ValidConfig, ConfigError> {
        let bad = |key: &'static str, problem: String| ConfigError::InvalidKey {
            file: file.to_path_buf(),
            key,
            problem,
        };
        if self.gateways.is_empty() {
            return Err(bad(
                "gateways",
                "must list at least one gateway as \"host:port\"".into(),
            ));
        }
        for g in &self.gateways {
            check_host_port(g).map_err(|p| bad("gateways", format!("entry {g:?} {p}")))?;
        }
        let interval = outpost_proto::parse_duration(&self.interval)
            .map_err(|e| bad("interval", e.to_string()))?;
        let long_poll = outpost_proto::parse_duration(&self.long_poll)
            .map_err(|e| bad("long_poll", e.to_string()))?;
        if long_poll > Duration::from_secs(outpost_proto::MAX_LONG_POLL_SECS) {
            return Err(bad(
                "long_poll",
                format!(
                    "{:?} is longer than the gateway's limit of {}s",
                    self.long_poll,
                    outpost_proto::MAX_LONG_POLL_SECS
                ),
            ));
        }
        if self.spool_max_bytes < crate::spool::MIN_MAX_BYTES {
            return Err(bad(
                "spool_max_bytes",
                format!(
                    "{} is below the minimum of {} bytes",
                    self.spool_max_bytes,
                    crate::spool::MIN_MAX_BYTES
                ),
            ));
        }
        let fsync = FsyncPolicy::parse(&self.spool_fsync).ok_or_else(|| {
            bad(
                "spool_fsync",
                format!(
                    "{:?} is not one of \"batch\", \"always\", \"never\"",
                    self.spool_fsync
                ),
            )
        })?;
        let backoff_max = outpost_proto::parse_duration(&self.backoff_max)
            .map_err(|e| bad("backoff_max", e.to_string()))?;
        if backoff_max < crate::backoff::BACKOFF_FLOOR {
            return Err(bad(
                "backoff_max",
                format!(
                    "{:?} is shorter than the shortest retry delay of {}ms",
                    self.backoff_max,
                    crate::backoff::BACKOFF_FLOOR.as_millis()
                ),
            ));
        }
        let failback_probe = outpost_proto::parse_duration(&self.failback_probe)
            .map_err(|e| bad("failback_probe", e.to_string()))?;
        if failback_probe < Duration::from_secs(1) {
            return Err(bad(
                "failback_probe",
                format!(
                    "{:?} is shorter than the minimum of 1s",
                    self.failback_probe
                ),
            ));
        }
        let config_poll = outpost_proto::parse_duration(&self.config_poll)
            .map_err(|e| bad("config_poll", e.to_string()))?;
        if config_poll < Duration::from_secs(1) {
            return Err(bad(
                "config_poll",
                format!("{:?} is shorter than the minimum of 1s", self.config_poll),
            ));
        }
        if self.ca_cert.as_os_str().is_empty() {
            return Err(bad("ca_cert", "must name a file".into()));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(bad("state_dir", "must name a directory".into()));
        }
        let bootstrap = match (&self.bootstrap_token, &self.bootstrap_token_file) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "bootstrap_token",
                    "set either bootstrap_token or bootstrap_token_file, not both".into(),
                ))
            }
            (Some(t), None) if t.trim().is_empty() => {
                return Err(bad("bootstrap_token", "must not be empty".into()))
            }
            (Some(t), None) => Some(TokenSource::Inline(t.trim().to_string())),
            (None, Some(p)) if p.as_os_str().is_empty() => {
                return Err(bad("bootstrap_token_file", "must name a file".into()))
            }
            (None, Some(p)) => Some(TokenSource::File(p.clone())),
            (None, None) => None,
        };
        Ok(ValidConfig {
            gateways: self.gateways.clone(),
            ca_cert: self.ca_cert.clone(),
            state_dir: self.state_dir.clone(),
            bootstrap,
            interval,
            long_poll,
            spool: SpoolConfig {
                max_bytes: self.spool_max_bytes,
                fsync,
            },
            backoff_max,
            failback_probe,
            config_poll,
        })
    }
}

/// Checks that `s` is `host:port` (or `[v6]:port`) with a non-zero port.
///
/// # Errors
/// A short description of the problem, to follow the entry in a message.
pub fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| "is not \"[ipv6]:port\"".to_string())?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("has an invalid IPv6 address {h:?}"));
        }
        (h, p)
    } else {
        let (h, p) = s
            .rsplit_once(':')
            .ok_or_else(|| "is not \"host:port\" (no port)".to_string())?;
        if h.contains(':') {
            return Err("is not \"host:port\" (write IPv6 addresses as \"[addr]:port\")".into());
        }
        (h, p)
    };
    if host.is_empty() {
        return Err("is not \"host:port\" (empty host)".into());
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '/' | '@' | '?' | '#'))
    {
        return Err(format!("has an invalid host {host:?}"));
    }
    match port.parse::<u16>() {
        Ok(0) => Err("has port 0".into()),
        Ok(_) => Ok(()),
        Err(_) => Err(format!("has an invalid port {port:?}")),
    }
}

/// The collector's configuration, resolved against the world: paths absolute (relative to
/// the config file's directory), the CA certificate read.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file, as given.
    pub file: PathBuf,
    /// Gateways, `host:port`, in order; the first is the primary.
    pub gateways: Vec<String>,
    /// The CA certificate file.
    pub ca_cert_path: PathBuf,
    /// The CA certificates (DER) from that file: the only roots the collector trusts.
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// The state directory.
    pub state_dir: PathBuf,
    /// Where the bootstrap token comes from (paths resolved).
    pub bootstrap: Option<TokenSource>,
    /// Collection interval (the gateway may override it at run time).
    pub interval: Duration,
    /// Long-poll wait for commands.
    pub long_poll: Duration,
    /// Spool cap and fsync policy.
    pub spool: SpoolConfig,
    /// Longest delay between two attempts to reach a gateway.
    pub backoff_max: Duration,
    /// Time on a secondary gateway before the primary is probed again.
    pub failback_probe: Duration,
    /// How often the config (interval, health packs) is fetched from the gateway.
    pub config_poll: Duration,
}

/// Reads and validates a config file without reading anything else: the step `status`
/// needs. Returns the validated settings and the config file's directory.
///
/// # Errors
/// [`ConfigError`] naming the file and key.
pub fn load_valid(path: &Path) -> Result<(ValidConfig, PathBuf), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let valid = RawConfig::parse(&text, path)?.validate(path)?;
    Ok((valid, config_dir(path)))
}

/// The directory relative paths in `path` are resolved against.
#[must_use]
pub fn config_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `p` if absolute, else `base/p`.
#[must_use]
pub fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl Config {
    /// Reads, validates and resolves the config file at `path`, reading the CA certificate.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the key and the problem.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (valid, dir) = load_valid(path)?;
        Self::resolve(valid, path, &dir)
    }

    /// Resolves validated settings: paths against `dir`, CA certificate read and parsed.
    ///
    /// # Errors
    /// [`ConfigError::KeyFile`] when the CA file cannot be read or holds no certificate.
    pub fn resolve(valid: ValidConfig, file: &Path, dir: &Path) -> Result<Self, ConfigError> {
        let ca_cert_path = resolve_path(dir, &valid.ca_cert);
        let ca_err = |problem: String| ConfigError::KeyFile {
            file: file.to_path_buf(),
            key: "ca_cert",
            path: ca_cert_path.clone(),
            problem,
        };
        let pem = std::fs::read(&ca_cert_path).map_err(|e| ca_err(e.to_string()))?;
        let ca_certs = rustls_pemfile::certs(&mut BufReader::new(pem.as_slice()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_err(format!("bad PEM: {e}")))?;
        if ca_certs.is_empty() {
            return Err(ca_err("holds no PEM certificate".into()));
        }
        let bootstrap = valid.bootstrap.map(|b| match b {
            TokenSource::File(p) => TokenSource::File(resolve_path(dir, &p)),
            inline @ TokenSource::Inline(_) => inline,
        });
        Ok(Self {
            file: file.to_path_buf(),
            gateways: valid.gateways,
            ca_cert_path,
            ca_certs,
            state_dir: resolve_path(dir, &valid.state_dir),
            bootstrap,
            interval: valid.interval,
            long_poll: valid.long_poll,
            spool: valid.spool,
            backoff_max: valid.backoff_max,
            failback_probe: valid.failback_probe,
            config_poll: valid.config_poll,
        })
    }

    /// The bootstrap token, needed only while not yet enrolled.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key when neither key is set, the file cannot be read, or
    /// the token is empty.
    pub fn bootstrap_token(&self) -> Result<String, ConfigError> {
        match &self.bootstrap {
            None => Err(ConfigError::InvalidKey {
                file: self.file.clone(),
                key: "bootstrap_token",
                problem: "the appliance is not enrolled yet; set bootstrap_token or \
                          bootstrap_token_file"
                    .into(),
            }),
            Some(TokenSource::Inline(t)) => Ok(t.clone()),
            Some(TokenSource::File(p)) => {
                let err = |problem: String| ConfigError::KeyFile {
                    file: self.file.clone(),
                    key: "bootstrap_token_file",
                    path: p.clone(),
                    problem,
                };
                let text = std::fs::read_to_string(p).map_err(|e| err(e.to_string()))?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(err("the file is empty".into()));
                }
                Ok(token.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> PathBuf {
        PathBuf::from("collector.toml")
    }

    fn parse(text: &str) -> Result<ValidConfig, ConfigError> {
        RawConfig::parse(text, &file())?.validate(&file())
    }

    #[test]
    fn defaults_apply() {
        let c = parse(r#"gateways = ["gw:5723"]"#).unwrap();
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.long_poll, Duration::from_secs(30));
        assert_eq!(c.spool.max_bytes, 268_435_456);
        assert_eq!(c.spool.fsync, FsyncPolicy::Batch);
        assert_eq!(c.backoff_max, Duration::from_secs(30));
        assert_eq!(c.failback_probe, Duration::from_secs(300));
        assert_eq!(c.config_poll, Duration::from_secs(60));
        assert_eq!(c.ca_cert, PathBuf::from(DEFAULT_CA_CERT));
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert!(c.bootstrap.is_none());
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let e = parse("gateways = [\"gw:5723\"]\nintervall = \"5s\"\n").unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with("collector.toml: "), "{m}");
        assert!(m.contains("intervall"), "{m}");
        assert!(m.contains("line 2"), "{m}");
    }

    #[test]
    fn bad_interval_names_file_key_and_value() {
        let e = parse("gateways = [\"gw:5723\"]\ninterval = \"10 parsecs\"\n").unwrap_err();
        let m = e.to_string();
        assert!(
            m.starts_with("collector.toml: key \"interval\": invalid duration \"10 parsecs\""),
            "{m}"
        );
    }

    #[test]
    fn empty_gateways_is_refused() {
        let m = parse("gateways = []").unwrap_err().to_string();
        assert!(m.starts_with("collector.toml: key \"gateways\": "), "{m}");
        assert!(m.contains("at least one"), "{m}");
    }

    #[test]
    fn bad_host_port_names_the_entry() {
        for bad in [
            "gw", "gw:", "gw:0", "gw:99999", ":5723", "::1:5723", "[zz]:1",
        ] {
            let text = format!("gateways = [\"ok:1\", \"{bad}\"]");
            let m = parse(&text).unwrap_err().to_string();
            assert!(m.contains("key \"gateways\""), "{bad}: {m}");
            assert!(m.contains(&format!("{bad:?}")), "{bad}: {m}");
        }
        for good in ["gw.example.net:5723", "127.0.0.1:1", "[::1]:5723"] {
            assert!(check_host_port(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn missing_gateways_names_the_key() {
        let m = parse("interval = \"5s\"").unwrap_err().to_string();
        assert!(m.contains("gateways"), "{m}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let m = parse("gateways = [\"gw:1\"]\nspool_max_bytes = \"many\"")
            .unwrap_err()
            .to_string();
        assert!(m.contains("spool_max_bytes"), "{m}");
    }

    #[test]
    fn spool_and_failover_keys_are_read() {
        let c = parse(
            "gateways = [\"gw:1\", \"gw:2\"]\nspool_max_bytes = 65536\nspool_fsync = \"never\"\n\
             backoff_max = \"2s\"\nfailback_probe = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(c.spool.max_bytes, 65536);
        assert_eq!(c.spool.fsync, FsyncPolicy::Never);
        assert_eq!(c.backoff_max, Duration::from_secs(2));
        assert_eq!(c.failback_probe, Duration::from_secs(2));
        let c = parse("gateways = [\"gw:1\"]\nspool_fsync = \"always\"\n").unwrap();
        assert_eq!(c.spool.fsync, FsyncPolicy::Always);
    }

    #[test]
    fn bad_spool_and_failover_values_name_key_and_value() {
        for (line, key, value) in [
            ("spool_max_bytes = 100", "spool_max_bytes", "100"),
            (
                "spool_fsync = \"sometimes\"",
                "spool_fsync",
                "\"sometimes\"",
            ),
            ("backoff_max = \"1ms\"", "backoff_max", "\"1ms\""),
            ("backoff_max = \"soon\"", "backoff_max", "\"soon\""),
            ("failback_probe = \"10ms\"", "failback_probe", "\"10ms\""),
            ("config_poll = \"10ms\"", "config_poll", "\"10ms\""),
        ] {
            let m = parse(&format!("gateways = [\"gw:1\"]\n{line}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                m.starts_with(&format!("collector.toml: key \"{key}\": ")),
                "{line}: {m}"
            );
            assert!(m.contains(value), "{line}: {m}");
        }
    }

    #[test]
    fn the_foundation_outbox_cap_is_refused_by_name() {
        let m = parse("gateways = [\"gw:1\"]\nmax_outbox_batches = 10\n")
            .unwrap_err()
            .to_string();
        assert!(m.contains("max_outbox_batches"), "{m}");
    }

    #[test]
    fn both_token_keys_are_refused() {
        let m =
            parse("gateways = [\"gw:1\"]\nbootstrap_token = \"a\"\nbootstrap_token_file = \"t\"")
                .unwrap_err()
                .to_string();
        assert!(m.contains("bootstrap_token"), "{m}");
    }

    #[test]
    fn long_poll_over_the_gateway_limit_is_refused() {
        let m = parse("gateways = [\"gw:1\"]\nlong_poll = \"5m\"")
            .unwrap_err()
            .to_string();
        assert!(m.contains("key \"long_poll\""), "{m}");
    }

    #[test]
    fn example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/collector.toml");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return; // the example lives outside this crate; nothing to check without it
        };
        let c = RawConfig::parse(&text, &path)
            .and_then(|r| r.validate(&path))
            .unwrap();
        assert!(!c.gateways.is_empty());
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = TokenSource::Inline("s3cret".into());
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn resolve_reads_ca_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("token"), "  tok-123\n").unwrap();
        let path = dir.path().join("collector.toml");
        std::fs::write(
            &path,
            "gateways = [\"gw:1\"]\nstate_dir = \"state\"\nbootstrap_token_file = \"token\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.state_dir, dir.path().join("state"));
        assert_eq!(c.ca_certs.len(), 1);
        assert_eq!(c.bootstrap_token().unwrap(), "tok-123");
    }

    #[test]
    fn missing_ca_names_the_key_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.toml");
        std::fs::write(&path, "gateways = [\"gw:1\"]\nca_cert = \"nope.pem\"\n").unwrap();
        let m = Config::load(&path).unwrap_err().to_string();
        assert!(m.contains("key \"ca_cert\""), "{m}");
        assert!(m.contains("nope.pem"), "{m}");
    }

    #[test]
    fn missing_token_is_reported_at_enrol_time() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let path = dir.path().join("collector.toml");
        std::fs::write(&path, "gateways = [\"gw:1\"]\n").unwrap();
        let c = Config::load(&path).unwrap();
        let m = c.bootstrap_token().unwrap_err().to_string();
        assert!(m.contains("collector.toml"), "{m}");
        assert!(m.contains("bootstrap_token"), "{m}");
    }
}
