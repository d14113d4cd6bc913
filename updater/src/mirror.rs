//! The on-box mirror: fetches the vendor's TUF feed from a gateway over mTLS (5723),
//! verifies it with `tough`, and keeps the channel's newest bundles in a content-addressed
//! store.
//!
//! # Store layout (`store_dir`)
//! * `tuf/` — tough's datastore: the last trusted root, timestamp, snapshot and targets,
//!   which is what protects against rollback between syncs.
//! * `blobs/sha256/<hex>` — verified bundles; `<hex>.part` while downloading (resumed
//!   with a Range request; verified for length and sha256 before it gets its final name).
//! * `meta/<timestamp version>/` — the exact metadata bytes that were verified, served by
//!   [`crate::serve`] to the VMs.
//! * `state.json` — [`MirrorState`]: the verified versions kept and the metadata dir.
//!
//! # Design
//! The metadata is fetched once through a transport that records every byte it hands to
//! tough; after tough accepts the set, those recorded bytes are what gets written for the
//! local mirror, so nothing unverified is ever served. Blobs are checked against the
//! sha256 and length of the verified targets before they are renamed into place. A sync
//! that fails changes nothing that was already mirrored.
//!
//! # Limits
//! Only the top-level targets role is used (no delegations). Free space is checked with
//! statvfs before a download; ENOSPC during a download removes the partial file.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tough::{
    ExpirationEnforcement, RepositoryLoader, Transport, TransportError, TransportErrorKind,
};
use tracing::{info, warn};
use url::Url;

use crate::feed;

/// Largest metadata file accepted from a gateway.
pub const MAX_METADATA_BYTES: usize = 16 * 1024 * 1024;
/// Largest trusted root file read from disk.
pub const MAX_ROOT_BYTES: u64 = 1024 * 1024;
/// Space kept free on the store's file system beyond what a download needs.
pub const FREE_SPACE_MARGIN: u64 = 16 * 1024 * 1024;
/// Time allowed to open a TCP connection and finish the TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence allowed while reading a response.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What [`sync`] needs.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// Gateways as `host:port`, tried in order.
    pub gateways: Vec<String>,
    /// CA certificate (PEM) the gateways' certificates chain to.
    pub ca_cert: PathBuf,
    /// The appliance's client certificate (PEM).
    pub client_cert: PathBuf,
    /// The appliance's private key (PEM).
    pub client_key: PathBuf,
    /// The TUF root shipped in the image (`root.json`).
    pub trusted_root: PathBuf,
    /// Channel followed (`stable`, `testing`).
    pub channel: String,
    /// Where the mirror lives.
    pub store_dir: PathBuf,
    /// How many versions of the channel to keep (at least 1).
    pub keep: usize,
    /// Download rate cap, bytes per second.
    pub bandwidth_bytes_per_sec: Option<u64>,
}

/// One verified version in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirroredVersion {
    /// Semantic version.
    pub version: String,
    /// The verified bundle (`store_dir/blobs/sha256/<hex>`).
    pub bundle_path: PathBuf,
    /// Lowercase hex sha256.
    pub sha256: String,
    /// Size in bytes.
    pub length: u64,
}

/// What a successful [`sync`] did.
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    /// Newest version of the channel, verified and in the store.
    pub latest: Option<MirroredVersion>,
    /// Every version kept, newest first.
    pub versions: Vec<MirroredVersion>,
    /// Bytes downloaded by this sync (blobs only).
    pub downloaded_bytes: u64,
    /// The gateway that served the sync.
    pub gateway: String,
    /// Version of the verified timestamp metadata.
    pub timestamp_version: u64,
}

/// `store_dir/state.json`: what the mirror holds, written after each successful sync.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorState {
    /// Channel mirrored.
    pub channel: String,
    /// Directory under `store_dir` with the verified metadata (`meta/<n>`).
    pub meta_dir: String,
    /// Verified targets kept, newest first.
    pub targets: Vec<MirroredTarget>,
}

/// One verified target in [`MirrorState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirroredTarget {
    /// TUF target name.
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// Lowercase hex sha256 (the blob's name).
    pub sha256: String,
    /// Size in bytes.
    pub length: u64,
}

/// A sync failed; nothing already mirrored was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MirrorError {
    /// A local file or directory could not be read or written.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration is unusable (no gateways, bad PEM, keep 0, ...).
    #[error("mirror configuration: {0}")]
    Config(String),
    /// The TLS client could not be built.
    #[error("TLS client: {0}")]
    Tls(String),
    /// A gateway could not be reached or answered with an error status.
    #[error("gateway {gateway}: {reason}")]
    Gateway {
        /// `host:port`.
        gateway: String,
        /// What failed.
        reason: String,
    },
    /// Metadata signatures do not verify or the metadata cannot be parsed.
    #[error("tampered metadata from {gateway}: {reason}")]
    TamperedMetadata {
        /// `host:port`.
        gateway: String,
        /// tough's reason.
        reason: String,
    },
    /// A metadata role has expired.
    #[error("expired metadata from {gateway}: the {role} role has expired")]
    ExpiredMetadata {
        /// `host:port`.
        gateway: String,
        /// `timestamp`, `snapshot`, `targets` or `root`.
        role: String,
    },
    /// A metadata version is older than the one trusted from the previous sync.
    #[error("metadata rollback from {gateway}: {reason}")]
    MetadataRollback {
        /// `host:port`.
        gateway: String,
        /// tough's reason.
        reason: String,
    },
    /// Roles disagree: the snapshot does not match the timestamp, or targets the snapshot.
    #[error("mixed metadata versions from {gateway}: {reason}")]
    MixedMetadata {
        /// `host:port`.
        gateway: String,
        /// tough's reason.
        reason: String,
    },
    /// The channel's newest version is older than the one mirrored before.
    #[error("rollback refused: channel {channel} now offers {offered}, older than the mirrored {mirrored}")]
    VersionRollback {
        /// Channel.
        channel: String,
        /// Newest version offered now.
        offered: String,
        /// Newest version mirrored before.
        mirrored: String,
    },
    /// A downloaded blob differs from the verified targets metadata.
    #[error("tampered blob {name}: expected sha256 {expected} ({length} bytes), got {actual}")]
    TamperedBlob {
        /// Target name.
        name: String,
        /// Expected sha256.
        expected: String,
        /// sha256 (or size) found.
        actual: String,
        /// Expected length.
        length: u64,
    },
    /// The download stopped before the expected length; the `.part` is kept for resuming.
    #[error("truncated download of {name}: got {got} of {expected} bytes ({reason})")]
    TruncatedDownload {
        /// Target name.
        name: String,
        /// Bytes on disk.
        got: u64,
        /// Expected length.
        expected: u64,
        /// What ended it.
        reason: String,
    },
    /// Not enough free space for the download (statvfs), or ENOSPC while writing.
    #[error("disk full at {}: need {needed} bytes, {available} available", path.display())]
    DiskFull {
        /// The store directory or file.
        path: PathBuf,
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// A file's length or sha256 differs from what was expected ([`verify_file`]).
    #[error("{} does not match: {reason}", path.display())]
    VerifyFile {
        /// The file.
        path: PathBuf,
        /// Length or hash difference.
        reason: String,
    },
    /// Other TUF failure.
    #[error("TUF from {gateway}: {reason}")]
    Tuf {
        /// `host:port`.
        gateway: String,
        /// tough's reason.
        reason: String,
    },
}

impl MirrorError {
    /// True for failures of reaching a gateway (the next gateway is worth a try and the
    /// error says nothing about the feed's integrity).
    #[must_use]
    pub fn is_transport(&self) -> bool {
        matches!(self, Self::Gateway { .. })
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MirrorError + 'a {
    move |source| MirrorError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The PEM certificates in `path` (at least one).
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, MirrorError> {
    let pem = std::fs::read(path).map_err(io_err("read", path))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| MirrorError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(MirrorError::Tls(format!(
            "{}: no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// Builds the mTLS client towards the gateways: rustls with the ring provider, TLS 1.3
/// only, `ca` as the only trust anchor, `cert` + `key` as the client certificate, ALPN h2
/// and http/1.1, no proxies from the environment.
///
/// # Errors
/// [`MirrorError::Io`] for unreadable files, [`MirrorError::Tls`] for unusable PEM.
pub fn mtls_client(ca: &Path, cert: &Path, key: &Path) -> Result<reqwest::Client, MirrorError> {
    build_client(ca, cert, key, false)
}

/// [`mtls_client`] for bulk downloads (the mirror's metadata and blobs): HTTP/1.1 only.
/// One large body over HTTP/2 moves in 16 KiB DATA frames under per-stream flow control
/// (see bench/UPDATES.md for what that costs); the mirror fetches one file at a time, so
/// HTTP/2's multiplexing buys it nothing.
///
/// # Errors
/// As [`mtls_client`].
pub fn mtls_bulk_client(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<reqwest::Client, MirrorError> {
    build_client(ca, cert, key, true)
}

fn build_client(
    ca: &Path,
    cert: &Path,
    key: &Path,
    http1_only: bool,
) -> Result<reqwest::Client, MirrorError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| MirrorError::Tls(format!("{}: {e}", ca.display())))?;
    }
    let chain = read_certs(cert)?;
    let key_pem = std::fs::read(key).map_err(io_err("read", key))?;
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| MirrorError::Tls(format!("{}: {e}", key.display())))?
        .ok_or_else(|| MirrorError::Tls(format!("{}: no private key", key.display())))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| MirrorError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key_der)
    .map_err(|e| MirrorError::Tls(format!("{}: {e}", cert.display())))?;
    let builder = reqwest::Client::builder();
    let builder = if http1_only {
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        builder.http1_only()
    } else {
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        builder
    };
    builder
        .use_preconfigured_tls(cfg)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .no_proxy()
        .build()
        .map_err(|e| MirrorError::Tls(e.to_string()))
}

/// Checks that `path` is `len` bytes long and hashes to `sha256_hex`.
///
/// # Errors
/// [`MirrorError::VerifyFile`] naming the difference, [`MirrorError::Io`].
pub fn verify_file(path: &Path, sha256_hex: &str, len: u64) -> Result<(), MirrorError> {
    let meta = std::fs::metadata(path).map_err(io_err("stat", path))?;
    if meta.len() != len {
        return Err(MirrorError::VerifyFile {
            path: path.to_path_buf(),
            reason: format!("{} bytes, expected {len}", meta.len()),
        });
    }
    let got = sha256_file(path)?;
    if !got.eq_ignore_ascii_case(sha256_hex) {
        return Err(MirrorError::VerifyFile {
            path: path.to_path_buf(),
            reason: format!("sha256 {got}, expected {sha256_hex}"),
        });
    }
    Ok(())
}

/// SHA-256 of blobs: aws-lc-rs's assembly implementation (already linked for TUF), which
/// keeps verification at the speed of `openssl dgst` on multi-GiB bundles.
fn new_hasher() -> Sha256 {
    Sha256::new(&aws_lc_rs::digest::SHA256)
}

/// Read size when hashing a file: small enough to stay in the CPU cache between the read
/// and the hash (a 1 MiB buffer measured about 30 % slower).
const HASH_BUF: usize = 64 * 1024;

/// The running hash of a blob.
type Sha256 = aws_lc_rs::digest::Context;

fn sha256_file(path: &Path) -> Result<String, MirrorError> {
    let mut h = new_hasher();
    hash_into(path, &mut h)?;
    Ok(hex::encode(h.finish()))
}

fn hash_into(path: &Path, h: &mut Sha256) -> Result<u64, MirrorError> {
    let mut f = std::fs::File::open(path).map_err(io_err("open", path))?;
    let mut buf = vec![0u8; HASH_BUF];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf).map_err(io_err("read", path))?;
        if r == 0 {
            return Ok(n);
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
}

/// Free bytes for unprivileged users on the file system holding `path` (statvfs).
///
/// # Errors
/// [`MirrorError::Io`].
pub fn free_space(path: &Path) -> Result<u64, MirrorError> {
    let st = rustix::fs::statvfs(path).map_err(|e| MirrorError::Io {
        op: "statvfs",
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Transport for tough over the mTLS client; keeps a copy of every file it hands over, so
/// the verified bytes can be written for the local mirror afterwards.
#[derive(Debug, Clone)]
struct RecordingTransport {
    client: reqwest::Client,
    fetched: Arc<Mutex<HashMap<String, bytes::Bytes>>>,
    /// The sync's bandwidth cap, shared with the blob downloads.
    throttle: SharedThrottle,
}

#[async_trait::async_trait]
impl Transport for RecordingTransport {
    async fn fetch(&self, url: Url) -> Result<tough::TransportStream, TransportError> {
        let other = |e: String| TransportError::new_with_cause(TransportErrorKind::Other, &url, e);
        let mut resp = self
            .client
            .get(url.as_str())
            .send()
            .await
            .map_err(|e| other(error_chain(&e)))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(TransportError::new(TransportErrorKind::FileNotFound, &url));
        }
        if !status.is_success() {
            return Err(other(format!("HTTP {status}")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| other(error_chain(&e)))? {
            if body.len() + chunk.len() > MAX_METADATA_BYTES {
                return Err(other(format!("larger than {MAX_METADATA_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
            if let Some(d) = self.throttle.delay_after(chunk.len() as u64) {
                tokio::time::sleep(d).await;
            }
        }
        let body = bytes::Bytes::from(body);
        if let Some(name) = url.path_segments().and_then(|mut s| s.next_back()) {
            if let Ok(mut m) = self.fetched.lock() {
                m.insert(name.to_owned(), body.clone());
            }
        }
        let s = futures::stream::once(async move { Ok(body) });
        Ok(Box::pin(s))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Sorts tough's error into the reasons the brief names.
fn classify(gateway: &str, e: &tough::error::Error) -> MirrorError {
    use tough::error::Error as T;
    let gateway = gateway.to_owned();
    let reason = error_chain(e);
    match e {
        T::ExpiredMetadata { role, .. } => MirrorError::ExpiredMetadata {
            gateway,
            role: role.to_string(),
        },
        T::OlderMetadata { .. }
        | T::OlderSnapshotInTimestamp { .. }
        | T::SnapshotRoleRollback { .. } => MirrorError::MetadataRollback { gateway, reason },
        T::HashMismatch { .. }
        | T::VersionMismatch { .. }
        | T::MetaMissing { .. }
        | T::MissingSnapshotMeta { .. }
        | T::SnapshotTargetsMetaMissing { .. }
        | T::SnapshotRoleMissing { .. }
        | T::TimestampMetaLength { .. } => MirrorError::MixedMetadata { gateway, reason },
        T::VerifyMetadata { .. }
        | T::VerifyRoleMetadata { .. }
        | T::VerifyTrustedMetadata { .. }
        | T::ParseMetadata { .. }
        | T::MaxSizeExceeded { .. } => MirrorError::TamperedMetadata { gateway, reason },
        T::Transport { source, .. } => {
            // tough reports a hash or size mismatch found while reading as a transport
            // error wrapping its own error: sort by that inner error.
            let inner = std::error::Error::source(source)
                .and_then(|s| s.downcast_ref::<tough::error::Error>());
            match inner {
                Some(inner) => classify(&gateway, inner),
                None if source.kind() == TransportErrorKind::FileNotFound => {
                    MirrorError::Tuf { gateway, reason }
                }
                None => MirrorError::Gateway { gateway, reason },
            }
        }
        _ => MirrorError::Tuf { gateway, reason },
    }
}

fn read_state(store: &Path) -> Result<Option<MirrorState>, MirrorError> {
    let p = store.join("state.json");
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| MirrorError::Config(format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &p)(e)),
    }
}

/// The state of the mirror in `store_dir` (None before the first successful sync).
///
/// # Errors
/// [`MirrorError`] when `state.json` is unreadable.
pub fn load_state(store_dir: &Path) -> Result<Option<MirrorState>, MirrorError> {
    read_state(store_dir)
}

/// Path of a blob in the store.
#[must_use]
pub fn blob_path(store_dir: &Path, sha256_hex: &str) -> PathBuf {
    store_dir.join("blobs").join("sha256").join(sha256_hex)
}

/// Mirrors the configured channel: verifies the metadata with TUF, downloads the newest
/// `keep` versions into the store, writes the verified metadata for [`crate::serve`] and
/// prunes what is no longer kept. Tries each gateway in turn; a failure leaves the
/// previous mirror untouched.
///
/// # Errors
/// The error of the last gateway tried, preferring one about the feed's integrity over a
/// connection failure.
pub async fn sync(cfg: &MirrorConfig) -> Result<SyncOutcome, MirrorError> {
    if cfg.gateways.is_empty() {
        return Err(MirrorError::Config("no gateways configured".into()));
    }
    if cfg.keep == 0 {
        return Err(MirrorError::Config("keep must be at least 1".into()));
    }
    feed::check_channel(&cfg.channel).map_err(|e| MirrorError::Config(e.to_string()))?;
    let root = read_capped(&cfg.trusted_root, MAX_ROOT_BYTES)?;
    for d in ["tuf", "blobs/sha256", "meta"] {
        let p = cfg.store_dir.join(d);
        std::fs::create_dir_all(&p).map_err(io_err("create", &p))?;
    }
    let client = mtls_bulk_client(&cfg.ca_cert, &cfg.client_cert, &cfg.client_key)?;
    let mut worst: Option<MirrorError> = None;
    for gw in &cfg.gateways {
        match sync_from(cfg, &client, &root, gw).await {
            Ok(o) => return Ok(o),
            Err(e) => {
                warn!(gateway = %gw, "mirror sync failed: {e}");
                if worst.as_ref().is_none_or(MirrorError::is_transport) {
                    worst = Some(e);
                }
            }
        }
    }
    Err(worst.unwrap_or_else(|| MirrorError::Config("no gateways configured".into())))
}

fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, MirrorError> {
    let f = std::fs::File::open(path).map_err(io_err("open", path))?;
    let mut buf = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(io_err("read", path))?;
    if buf.len() as u64 > cap {
        return Err(MirrorError::Config(format!(
            "{} is larger than {cap} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

/// A target of the channel, from verified metadata.
#[derive(Debug, Clone)]
struct Candidate {
    name: String,
    version: semver::Version,
    sha256: String,
    length: u64,
}

async fn sync_from(
    cfg: &MirrorConfig,
    client: &reqwest::Client,
    root: &[u8],
    gw: &str,
) -> Result<SyncOutcome, MirrorError> {
    let base = Url::parse(&format!("https://{gw}/v1/feed/"))
        .map_err(|e| MirrorError::Config(format!("gateway {gw:?} is not host:port: {e}")))?;
    let join = |p: &str| {
        base.join(p)
            .map_err(|e| MirrorError::Config(format!("gateway {gw:?}: {e}")))
    };
    // One cap for the whole sync: metadata and blobs draw from the same budget.
    let throttle = SharedThrottle::new(cfg.bandwidth_bytes_per_sec);
    let transport = RecordingTransport {
        client: client.clone(),
        fetched: Arc::default(),
        throttle: throttle.clone(),
    };
    let repo = RepositoryLoader::new(&root, join("metadata/")?, join("targets/")?)
        .transport(transport.clone())
        .datastore(cfg.store_dir.join("tuf"))
        .expiration_enforcement(ExpirationEnforcement::Safe)
        .load()
        .await
        .map_err(|e| classify(gw, &e))?;

    let mut candidates: Vec<Candidate> = feed::entries_of(&repo.targets().signed)
        .into_iter()
        .filter(|e| e.channels.iter().any(|c| c == &cfg.channel))
        .filter_map(|e| {
            Some(Candidate {
                version: semver::Version::parse(&e.version).ok()?,
                name: e.name,
                sha256: e.sha256,
                length: e.length,
            })
        })
        .collect();
    candidates.sort_by(|a, b| b.version.cmp(&a.version));
    candidates.truncate(cfg.keep);

    let prev = read_state(&cfg.store_dir)?;
    if let Some(prev_latest) = prev
        .as_ref()
        .filter(|p| p.channel == cfg.channel)
        .and_then(|p| p.targets.first())
    {
        let prev_v = semver::Version::parse(&prev_latest.version).ok();
        let offered = candidates.first().map(|c| c.version.clone());
        if prev_v.is_some() && offered < prev_v {
            return Err(MirrorError::VersionRollback {
                channel: cfg.channel.clone(),
                offered: offered.map_or_else(|| "nothing".into(), |v| v.to_string()),
                mirrored: prev_latest.version.clone(),
            });
        }
    }

    // Free space for what is still missing.
    let blobs = cfg.store_dir.join("blobs").join("sha256");
    let mut needed = 0u64;
    for c in &candidates {
        if !blob_path(&cfg.store_dir, &c.sha256).exists() {
            let part =
                std::fs::metadata(blobs.join(format!("{}.part", c.sha256))).map_or(0, |m| m.len());
            needed += c.length.saturating_sub(part);
        }
    }
    if needed > 0 {
        let available = free_space(&blobs)?;
        if available < needed.saturating_add(FREE_SPACE_MARGIN) {
            return Err(MirrorError::DiskFull {
                path: blobs,
                needed: needed.saturating_add(FREE_SPACE_MARGIN),
                available,
            });
        }
    }

    let mut downloaded = 0u64;
    for c in &candidates {
        let url = join(&format!("targets/{}.{}", c.sha256, c.name))?;
        downloaded += download_blob(client, gw, &url, &blobs, c, &throttle).await?;
    }

    let ts_version = repo.timestamp().signed.version.get();
    let meta_name = format!("meta/{ts_version}");
    write_verified_metadata(&cfg.store_dir, &meta_name, &repo, &transport, root)?;
    let state = MirrorState {
        channel: cfg.channel.clone(),
        meta_dir: meta_name.clone(),
        targets: candidates
            .iter()
            .map(|c| MirroredTarget {
                name: c.name.clone(),
                version: c.version.to_string(),
                sha256: c.sha256.clone(),
                length: c.length,
            })
            .collect(),
    };
    let state_json =
        serde_json::to_vec_pretty(&state).map_err(|e| MirrorError::Config(e.to_string()))?;
    feed::write_atomic(&cfg.store_dir.join("state.json"), &state_json).map_err(|e| {
        MirrorError::Io {
            op: "write",
            path: cfg.store_dir.join("state.json"),
            source: std::io::Error::other(e.to_string()),
        }
    })?;
    prune(&cfg.store_dir, &state);

    let versions: Vec<MirroredVersion> = state
        .targets
        .iter()
        .map(|t| MirroredVersion {
            version: t.version.clone(),
            bundle_path: blob_path(&cfg.store_dir, &t.sha256),
            sha256: t.sha256.clone(),
            length: t.length,
        })
        .collect();
    info!(gateway = gw, channel = %cfg.channel, latest = ?versions.first().map(|v| &v.version), downloaded, "mirror synced");
    Ok(SyncOutcome {
        latest: versions.first().cloned(),
        versions,
        downloaded_bytes: downloaded,
        gateway: gw.to_owned(),
        timestamp_version: ts_version,
    })
}

/// Writes the metadata tough verified (as recorded by the transport) into
/// `store/<meta_name>/`, through a temporary directory renamed into place.
fn write_verified_metadata(
    store: &Path,
    meta_name: &str,
    repo: &tough::Repository,
    transport: &RecordingTransport,
    trusted_root: &[u8],
) -> Result<(), MirrorError> {
    let dest = store.join(meta_name);
    if dest.is_dir() {
        return Ok(());
    }
    let fetched = transport
        .fetched
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    let sv = repo.snapshot().signed.version.get();
    let tv = repo.targets().signed.version.get();
    let mut files: BTreeMap<String, bytes::Bytes> = BTreeMap::new();
    for name in [
        "timestamp.json".to_owned(),
        format!("{sv}.snapshot.json"),
        format!("{tv}.targets.json"),
    ] {
        let b = fetched
            .get(&name)
            .cloned()
            .ok_or_else(|| MirrorError::Tuf {
                gateway: String::new(),
                reason: format!("verified {name} was not recorded"),
            })?;
        files.insert(name, b);
    }
    for v in 1..=repo.root().signed.version.get() {
        let name = format!("{v}.root.json");
        if let Some(b) = fetched.get(&name) {
            files.insert(name, b.clone());
        } else if v == 1 {
            files.insert(name, bytes::Bytes::copy_from_slice(trusted_root));
        }
    }
    let tmp = store.join(format!("meta/.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
    for (name, data) in &files {
        let p = tmp.join(name);
        let mut f = std::fs::File::create(&p).map_err(io_err("create", &p))?;
        f.write_all(data).map_err(io_err("write", &p))?;
        f.sync_all().map_err(io_err("fsync", &p))?;
    }
    std::fs::rename(&tmp, &dest).map_err(io_err("rename into place", &dest))
}

/// Removes blobs and metadata directories that `state` no longer names. Best effort.
fn prune(store: &Path, state: &MirrorState) {
    let blobs = store.join("blobs").join("sha256");
    let keep: Vec<&str> = state.targets.iter().map(|t| t.sha256.as_str()).collect();
    if let Ok(rd) = std::fs::read_dir(&blobs) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".part").unwrap_or(&name);
            if !keep.contains(&stem) {
                info!(blob = %name, "pruning");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let meta = store.join("meta");
    if let Ok(rd) = std::fs::read_dir(&meta) {
        for e in rd.flatten() {
            if format!("meta/{}", e.file_name().to_string_lossy()) != state.meta_dir {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A [`Throttle`] shared by every download of one sync.
#[derive(Debug, Clone)]
struct SharedThrottle(Option<Arc<Mutex<Throttle>>>);

impl SharedThrottle {
    fn new(rate: Option<u64>) -> Self {
        Self(
            rate.filter(|r| *r > 0)
                .map(|r| Arc::new(Mutex::new(Throttle::new(Some(r))))),
        )
    }

    fn delay_after(&self, n: u64) -> Option<Duration> {
        let t = self.0.as_ref()?;
        t.lock().map_or(None, |mut t| t.delay_after(n))
    }
}

/// Paces a download to a byte rate.
#[derive(Debug)]
struct Throttle {
    rate: Option<u64>,
    start: Instant,
    bytes: u64,
}

impl Throttle {
    fn new(rate: Option<u64>) -> Self {
        Self {
            rate: rate.filter(|r| *r > 0),
            start: Instant::now(),
            bytes: 0,
        }
    }

    /// How long to wait after `n` more bytes so the average stays under the rate.
    fn delay_after(&mut self, n: u64) -> Option<Duration> {
        let rate = self.rate?;
        self.bytes += n;
        #[allow(clippy::cast_precision_loss)]
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        due.checked_sub(self.start.elapsed())
    }
}

/// Chunks queued between the network and the writer thread (each up to a few hundred KiB).
const WRITE_QUEUE: usize = 64;
/// Write buffer of a blob's `.part` file: coalesces network chunks into large writes.
const WRITE_BUF: usize = 1 << 20;

/// What the writer thread of [`download_blob`] ended with.
struct Written {
    hasher: Sha256,
    /// Bytes in the `.part` file (before the failure, if any).
    have: u64,
    result: std::io::Result<()>,
}

/// Bytes appended between two background flushes of a blob being downloaded.
const FLUSH_EVERY: u64 = 64 << 20;

/// Appends the chunks it receives to `file` and hashes them, off the async runtime, so the
/// network, the hashing and the writes overlap; flushes and fsyncs when the channel closes.
///
/// Every [`FLUSH_EVERY`] bytes a helper thread `fdatasync`s a clone of the file, so the
/// kernel writes the blob out while the rest still arrives and the final fsync only has the
/// tail left (on a 1 GiB feed the fsync at the end alone cost ~0.35 s here). Durability is
/// unchanged: the blob counts only after the final `sync_all`.
fn write_and_hash(
    file: std::fs::File,
    mut hasher: Sha256,
    mut have: u64,
    mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
) -> Written {
    let flusher = file.try_clone().ok().map(|clone| {
        let (kick, wait) = std::sync::mpsc::sync_channel::<()>(1);
        let handle = std::thread::spawn(move || {
            while wait.recv().is_ok() {
                // An error here shows again in the final sync_all, which decides.
                let _ = clone.sync_data();
            }
        });
        (kick, handle)
    });
    let mut w = std::io::BufWriter::with_capacity(WRITE_BUF, file);
    let mut result = Ok(());
    let mut since_flush = 0u64;
    while let Some(chunk) = rx.blocking_recv() {
        if let Err(e) = w.write_all(&chunk) {
            result = Err(e);
            break;
        }
        hasher.update(&chunk);
        have += chunk.len() as u64;
        since_flush += chunk.len() as u64;
        if since_flush >= FLUSH_EVERY {
            since_flush = 0;
            if let Some((kick, _)) = &flusher {
                // Full means a flush is already running or queued: nothing to add.
                let _ = kick.try_send(());
            }
        }
    }
    drop(rx);
    if let Some((kick, handle)) = flusher {
        drop(kick);
        let _ = handle.join();
    }
    if result.is_ok() {
        result = w.flush();
    }
    if result.is_ok() {
        result = w.get_ref().sync_all();
    }
    Written {
        hasher,
        have,
        result,
    }
}

/// Downloads one target into `blobs/<sha>` (resuming `<sha>.part`), verifying length and
/// sha256 before the rename. Returns the bytes fetched over the network.
async fn download_blob(
    client: &reqwest::Client,
    gw: &str,
    url: &Url,
    blobs: &Path,
    c: &Candidate,
    throttle: &SharedThrottle,
) -> Result<u64, MirrorError> {
    let dest = blobs.join(&c.sha256);
    if dest.exists() {
        if verify_file(&dest, &c.sha256, c.length).is_ok() {
            return Ok(0);
        }
        warn!(blob = %dest.display(), "stored blob does not verify; downloading again");
        std::fs::remove_file(&dest).map_err(io_err("remove", &dest))?;
    }
    let part = blobs.join(format!("{}.part", c.sha256));
    let mut have = std::fs::metadata(&part).map_or(0, |m| m.len());
    if have > c.length {
        std::fs::remove_file(&part).map_err(io_err("remove", &part))?;
        have = 0;
    }
    let mut hasher = new_hasher();
    if have > 0 {
        have = hash_into(&part, &mut hasher)?;
    }
    let gateway_err = |reason: String| MirrorError::Gateway {
        gateway: gw.to_owned(),
        reason,
    };
    let mut fetched = 0u64;
    if have < c.length {
        let mut req = client.get(url.as_str());
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let mut resp = req.send().await.map_err(|e| gateway_err(error_chain(&e)))?;
        let status = resp.status();
        let resumed = status == reqwest::StatusCode::PARTIAL_CONTENT
            && resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&format!("bytes {have}-")));
        if !(status.is_success()) {
            return Err(gateway_err(format!("GET {url}: HTTP {status}")));
        }
        if !resumed && have > 0 {
            // The server sent the whole file: start over.
            have = 0;
            hasher = new_hasher();
        }
        if have > 0 {
            info!(blob = %c.name, from = have, "resuming download");
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(have > 0)
            .truncate(have == 0)
            .open(&part)
            .map_err(io_err("open", &part))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(WRITE_QUEUE);
        let writer = tokio::task::spawn_blocking(move || write_and_hash(file, hasher, have, rx));
        // What went wrong on the network side, if anything; the writer's outcome decides
        // what is on disk.
        let mut failure: Option<MirrorError> = None;
        let mut received = have;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(ch)) => ch,
                Ok(None) => break,
                Err(e) => {
                    failure = Some(MirrorError::TruncatedDownload {
                        name: c.name.clone(),
                        got: 0,
                        expected: c.length,
                        reason: error_chain(&e),
                    });
                    break;
                }
            };
            if received + chunk.len() as u64 > c.length {
                failure = Some(MirrorError::TamperedBlob {
                    name: c.name.clone(),
                    expected: c.sha256.clone(),
                    actual: format!("more than {} bytes", c.length),
                    length: c.length,
                });
                break;
            }
            let n = chunk.len() as u64;
            if tx.send(chunk).await.is_err() {
                // The writer stopped: its error is reported below.
                break;
            }
            received += n;
            fetched += n;
            if let Some(d) = throttle.delay_after(n) {
                tokio::time::sleep(d).await;
            }
        }
        drop(tx);
        let written = writer
            .await
            .map_err(|e| io_err("write", &part)(std::io::Error::other(e.to_string())))?;
        have = written.have;
        hasher = written.hasher;
        if let Err(e) = written.result {
            let _ = std::fs::remove_file(&part);
            if e.kind() == std::io::ErrorKind::StorageFull {
                return Err(MirrorError::DiskFull {
                    path: part,
                    needed: c.length - have,
                    available: free_space(blobs).unwrap_or(0),
                });
            }
            return Err(io_err("write", &part)(e));
        }
        match failure {
            Some(MirrorError::TruncatedDownload {
                name,
                expected,
                reason,
                ..
            }) => {
                // What arrived stays in `.part` (fsynced) for the next sync to resume.
                return Err(MirrorError::TruncatedDownload {
                    name,
                    got: have,
                    expected,
                    reason,
                });
            }
            Some(e) => {
                let _ = std::fs::remove_file(&part);
                return Err(e);
            }
            None => {}
        }
    }
    if have < c.length {
        return Err(MirrorError::TruncatedDownload {
            name: c.name.clone(),
            got: have,
            expected: c.length,
            reason: "the server ended the response early".into(),
        });
    }
    let got = hex::encode(hasher.finish());
    if got != c.sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(MirrorError::TamperedBlob {
            name: c.name.clone(),
            expected: c.sha256.clone(),
            actual: got,
            length: c.length,
        });
    }
    std::fs::rename(&part, &dest).map_err(io_err("rename into place", &dest))?;
    if let Ok(d) = std::fs::File::open(blobs) {
        let _ = d.sync_all();
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_paces_to_rate() {
        let mut t = Throttle::new(Some(1000));
        let d = t.delay_after(2000).unwrap_or_default();
        assert!(d > Duration::from_millis(1500), "{d:?}");
        let mut none = Throttle::new(None);
        assert!(none.delay_after(1 << 30).is_none());
    }
}
