//! The vendor's update feed: a TUF repository (root, targets, snapshot, timestamp) built and
//! signed with the `tough` crate.
//!
//! # Layout of a feed directory `DIR`
//! * `DIR/feed.json` — thresholds and expiry periods chosen at `init`.
//! * `DIR/keys/<role>-<n>.pk8` — Ed25519 private keys (PKCS#8 DER), mode 0600, never
//!   under `DIR/repo`.
//! * `DIR/root.json` — the trusted root to ship in the appliance image.
//! * `DIR/repo/` — what the gateway serves (`[feed] dir`): `metadata/` (`N.root.json`,
//!   `N.targets.json`, `N.snapshot.json`, `timestamp.json`; consistent snapshots) and
//!   `targets/<sha256>.<name>`.
//!
//! # Channels
//! A bundle is one target named `outpost-<version>.tar.zst` whose custom metadata is
//! `{"version": "1.2.0", "channels": ["testing", "stable"]}`. Promotion adds a channel and
//! re-signs targets, snapshot and timestamp; the bundle bytes never change.
//!
//! # Atomicity
//! New metadata is signed into `DIR/staging/`, then renamed into `repo/metadata/`: the new
//! versioned files first, `timestamp.json` last, so a reader sees either the old or the
//! new repository.

use std::collections::HashMap;
use std::io::Write;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tough::editor::signed::SignedRole;
use tough::editor::RepositoryEditor;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{
    Hashes, KeyHolder, Metafile, RoleKeys, RoleType, Root, Signed, Snapshot, Target, Targets,
    Timestamp,
};
use tough::sign::Sign;
use tough::TargetName;

use crate::bundle;

/// TUF specification version written into the metadata.
pub const SPEC_VERSION: &str = "1.0.0";
/// Custom metadata key holding the bundle's version.
pub const CUSTOM_VERSION: &str = "version";
/// Custom metadata key holding the channels a bundle is on.
pub const CUSTOM_CHANNELS: &str = "channels";
/// The four top-level roles, in the order keys are generated.
pub const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

/// How long each role's metadata stays valid after it is signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expiries {
    /// Root metadata (default one year).
    #[serde(with = "humantime_serde_compat")]
    pub root: Duration,
    /// Targets metadata (default three months).
    #[serde(with = "humantime_serde_compat")]
    pub targets: Duration,
    /// Snapshot metadata (default one week).
    #[serde(with = "humantime_serde_compat")]
    pub snapshot: Duration,
    /// Timestamp metadata (default one day); `refresh` re-signs it.
    #[serde(with = "humantime_serde_compat")]
    pub timestamp: Duration,
}

impl Default for Expiries {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            root: Duration::from_secs(365 * DAY),
            targets: Duration::from_secs(90 * DAY),
            snapshot: Duration::from_secs(7 * DAY),
            timestamp: Duration::from_secs(DAY),
        }
    }
}

mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// `DIR/feed.json`: the choices made at `init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Signatures required per role (as many keys per role are generated).
    pub threshold: u64,
    /// Expiry periods.
    pub expiries: Expiries,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            threshold: 1,
            expiries: Expiries::default(),
        }
    }
}

/// One bundle in the feed, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    /// TUF target name (`outpost-<version>.tar.zst`).
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// Channels the bundle is on.
    pub channels: Vec<String>,
    /// Size in bytes.
    pub length: u64,
    /// Lowercase hex sha256.
    pub sha256: String,
}

/// A feed operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// A file or directory could not be read or written.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `init` on a directory that already holds a feed.
    #[error("{} already holds a feed (feed.json exists)", dir.display())]
    AlreadyInitialised {
        /// The feed directory.
        dir: PathBuf,
    },
    /// A metadata or config file could not be parsed.
    #[error("cannot parse {}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A command-line value is invalid.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// Which value (`version`, `channel`, `threshold`).
        what: &'static str,
        /// The value given.
        value: String,
        /// Why.
        reason: String,
    },
    /// The version is already in the feed.
    #[error("version {version} is already in the feed as {name}")]
    DuplicateVersion {
        /// The version.
        version: String,
        /// Its existing target name.
        name: String,
    },
    /// `promote` of a version the feed does not hold.
    #[error("version {version} is not in the feed")]
    UnknownVersion {
        /// The version.
        version: String,
    },
    /// The bundle is unreadable or its manifest disagrees with `--version`.
    #[error("bundle {}: {source}", path.display())]
    Bundle {
        /// The bundle.
        path: PathBuf,
        /// What failed.
        source: bundle::BundleError,
    },
    /// The bundle's manifest names another version than `--version`.
    #[error("bundle {} holds version {manifest}, not {given}", path.display())]
    VersionMismatch {
        /// The bundle.
        path: PathBuf,
        /// Version in its manifest.
        manifest: String,
        /// Version given.
        given: String,
    },
    /// Fewer private keys for a role than its signature threshold.
    #[error("only {have} of the {need} {role} keys needed are in {}", dir.display())]
    MissingKeys {
        /// The role.
        role: String,
        /// The keys directory.
        dir: PathBuf,
        /// Keys found.
        have: u64,
        /// Threshold.
        need: u64,
    },
    /// tough refused to build or sign the metadata.
    #[error("TUF {op}: {source}")]
    Tuf {
        /// What was being done.
        op: &'static str,
        /// tough's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FeedError + 'a {
    move |source| FeedError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn tuf_err<E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
) -> impl FnOnce(E) -> FeedError {
    move |e| FeedError::Tuf {
        op,
        source: Box::new(e),
    }
}

/// Paths inside a feed directory.
#[derive(Debug, Clone)]
pub struct FeedPaths {
    /// The feed directory.
    pub dir: PathBuf,
}

impl FeedPaths {
    /// Paths under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }
    /// `DIR/feed.json`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("feed.json")
    }
    /// `DIR/keys`.
    pub fn keys(&self) -> PathBuf {
        self.dir.join("keys")
    }
    /// `DIR/root.json`, the root to ship in images.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root.json")
    }
    /// `DIR/repo`, the directory to serve.
    pub fn repo(&self) -> PathBuf {
        self.dir.join("repo")
    }
    /// `DIR/repo/metadata`.
    pub fn metadata(&self) -> PathBuf {
        self.repo().join("metadata")
    }
    /// `DIR/repo/targets`.
    pub fn targets(&self) -> PathBuf {
        self.repo().join("targets")
    }
    /// `DIR/staging`, where new metadata is signed before it is renamed into place.
    pub fn staging(&self) -> PathBuf {
        self.dir.join("staging")
    }
}

/// The target name of a version's bundle.
#[must_use]
pub fn target_name(version: &str) -> String {
    format!("outpost-{version}.tar.zst")
}

/// Checks a channel name: 1-32 of `a-z 0-9 -`.
///
/// # Errors
/// [`FeedError::Invalid`].
pub fn check_channel(channel: &str) -> Result<(), FeedError> {
    let ok = (1..=32).contains(&channel.len())
        && channel
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(FeedError::Invalid {
            what: "channel",
            value: channel.to_owned(),
            reason: "use 1-32 characters of a-z, 0-9 and -".into(),
        })
    }
}

fn parse_version(v: &str) -> Result<semver::Version, FeedError> {
    semver::Version::parse(v).map_err(|e| FeedError::Invalid {
        what: "version",
        value: v.to_owned(),
        reason: e.to_string(),
    })
}

fn expires_at(now: jiff::Timestamp, d: Duration) -> Result<jiff::Timestamp, FeedError> {
    let span = jiff::SignedDuration::try_from(d).map_err(tuf_err("expiry"))?;
    now.checked_add(span).map_err(tuf_err("expiry"))
}

/// Writes `data` to `path` through a temporary name in the same directory, fsynced.
///
/// # Errors
/// [`FeedError::Io`].
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), FeedError> {
    let tmp = bundle::temp_name(path);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(data).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err("rename into place", path))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), FeedError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create key", path))?;
    f.write_all(data).map_err(io_err("write key", path))?;
    f.sync_all().map_err(io_err("fsync key", path))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FeedError> {
    let data = std::fs::read(path).map_err(io_err("read", path))?;
    serde_json::from_slice(&data).map_err(|e| FeedError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Options of `init`.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Threshold and expiries.
    pub config: FeedConfig,
}

/// Creates a feed in `dir`: keys (0600 under `dir/keys`), `feed.json`, a signed root
/// (`dir/root.json` and `repo/metadata/1.root.json`) and empty targets/snapshot/timestamp.
///
/// # Errors
/// [`FeedError`] when `dir` already holds a feed, a file cannot be written or signing fails.
pub async fn init(dir: &Path, opts: &InitOptions, now: jiff::Timestamp) -> Result<(), FeedError> {
    let paths = FeedPaths::new(dir);
    if paths.config().exists() {
        return Err(FeedError::AlreadyInitialised {
            dir: dir.to_path_buf(),
        });
    }
    let threshold = NonZeroU64::new(opts.config.threshold)
        .filter(|t| t.get() <= 16)
        .ok_or_else(|| FeedError::Invalid {
            what: "threshold",
            value: opts.config.threshold.to_string(),
            reason: "must be between 1 and 16".into(),
        })?;
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let keys_dir = paths.keys();
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&keys_dir)
            .map_err(io_err("create", &keys_dir))?;
    }
    let rng = SystemRandom::new();
    let mut root = Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version: NonZeroU64::MIN,
        expires: expires_at(now, opts.config.expiries.root)?,
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    for (role, role_type) in ROLES.iter().zip([
        RoleType::Root,
        RoleType::Targets,
        RoleType::Snapshot,
        RoleType::Timestamp,
    ]) {
        let mut keyids = Vec::new();
        for n in 0..threshold.get() {
            let pk8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(tuf_err("generate key"))?;
            let path = keys_dir.join(format!("{role}-{n}.pk8"));
            write_private(&path, pk8.as_ref())?;
            let pair = tough::sign::parse_keypair(pk8.as_ref()).map_err(tuf_err("parse key"))?;
            let key = pair.tuf_key();
            let id = key.key_id().map_err(tuf_err("key id"))?;
            root.keys.insert(id.clone(), key);
            keyids.push(id);
        }
        root.roles.insert(
            role_type,
            RoleKeys {
                keyids,
                threshold,
                _extra: HashMap::new(),
            },
        );
    }
    let keys = load_keys(&paths, &ROLES, threshold.get())?;
    let signed_root = SignedRole::new(root.clone(), &KeyHolder::Root(root), &keys, &rng)
        .await
        .map_err(tuf_err("sign root"))?;
    std::fs::create_dir_all(paths.metadata()).map_err(io_err("create", &paths.metadata()))?;
    std::fs::create_dir_all(paths.targets()).map_err(io_err("create", &paths.targets()))?;
    write_atomic(&paths.metadata().join("1.root.json"), signed_root.buffer())?;
    write_atomic(&paths.root(), signed_root.buffer())?;
    let cfg = serde_json::to_vec_pretty(&opts.config).map_err(tuf_err("serialise feed.json"))?;
    // The first metadata set: no targets yet, every version 1.
    let editor = RepositoryEditor::new(paths.root())
        .await
        .map_err(tuf_err("open root"))?;
    publish(&paths, &opts.config, editor, None, now).await?;
    write_atomic(&paths.config(), &cfg)
}

/// The signing keys in `DIR/keys`, after checking that each of `roles` has at least
/// `threshold` of them (so nothing is published with too few signatures). Roles not listed
/// may keep their keys offline (the root key, typically).
fn load_keys(
    paths: &FeedPaths,
    roles: &[&str],
    threshold: u64,
) -> Result<Vec<Box<dyn KeySource>>, FeedError> {
    let dir = paths.keys();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(io_err("list keys in", &dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pk8"))
        .collect();
    names.sort();
    for role in roles {
        let have = names
            .iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{role}-")))
            })
            .count() as u64;
        if have < threshold {
            return Err(FeedError::MissingKeys {
                role: (*role).to_owned(),
                dir: dir.clone(),
                have,
                need: threshold,
            });
        }
    }
    Ok(names
        .into_iter()
        .map(|path| Box::new(LocalKeySource { path }) as Box<dyn KeySource>)
        .collect())
}

/// The metadata currently published in `repo/metadata`, read (not verified) from disk.
#[derive(Debug)]
pub struct Current {
    /// `timestamp.json`.
    pub timestamp: Signed<Timestamp>,
    /// The snapshot the timestamp names, with its raw bytes.
    pub snapshot: Signed<Snapshot>,
    /// Raw bytes of the snapshot file.
    pub snapshot_bytes: Vec<u8>,
    /// The targets the snapshot names.
    pub targets: Signed<Targets>,
}

fn meta_version(
    meta: &HashMap<String, Metafile>,
    name: &str,
    file: &Path,
) -> Result<u64, FeedError> {
    meta.get(name)
        .map(|m| m.version.get())
        .ok_or_else(|| FeedError::Parse {
            path: file.to_path_buf(),
            reason: format!("meta has no {name}"),
        })
}

/// Reads the published metadata of the feed in `dir`.
///
/// # Errors
/// [`FeedError::Io`] or [`FeedError::Parse`].
pub fn read_current(dir: &Path) -> Result<Current, FeedError> {
    let md = FeedPaths::new(dir).metadata();
    let ts_path = md.join("timestamp.json");
    let timestamp: Signed<Timestamp> = read_json(&ts_path)?;
    let sv = meta_version(&timestamp.signed.meta, "snapshot.json", &ts_path)?;
    let sn_path = md.join(format!("{sv}.snapshot.json"));
    let snapshot_bytes = std::fs::read(&sn_path).map_err(io_err("read", &sn_path))?;
    let snapshot: Signed<Snapshot> =
        serde_json::from_slice(&snapshot_bytes).map_err(|e| FeedError::Parse {
            path: sn_path.clone(),
            reason: e.to_string(),
        })?;
    let tv = meta_version(&snapshot.signed.meta, "targets.json", &sn_path)?;
    let targets: Signed<Targets> = read_json(&md.join(format!("{tv}.targets.json")))?;
    Ok(Current {
        timestamp,
        snapshot,
        snapshot_bytes,
        targets,
    })
}

/// Reads `feed.json`.
///
/// # Errors
/// [`FeedError`].
pub fn read_config(dir: &Path) -> Result<FeedConfig, FeedError> {
    read_json(&FeedPaths::new(dir).config())
}

/// Signs a new targets/snapshot/timestamp set from `editor` (versions one above `prev`, or
/// 1) and renames it into `repo/metadata`, timestamp last.
async fn publish(
    paths: &FeedPaths,
    cfg: &FeedConfig,
    mut editor: RepositoryEditor,
    prev: Option<&Current>,
    now: jiff::Timestamp,
) -> Result<(), FeedError> {
    let next = |v: Option<u64>| NonZeroU64::new(v.unwrap_or(0) + 1).unwrap_or(NonZeroU64::MIN);
    let e = &cfg.expiries;
    editor
        .targets_version(next(prev.map(|c| c.targets.signed.version.get())))
        .map_err(tuf_err("set targets version"))?
        .targets_expires(expires_at(now, e.targets)?)
        .map_err(tuf_err("set targets expiry"))?
        .snapshot_version(next(prev.map(|c| c.snapshot.signed.version.get())))
        .snapshot_expires(expires_at(now, e.snapshot)?)
        .timestamp_version(next(prev.map(|c| c.timestamp.signed.version.get())))
        .timestamp_expires(expires_at(now, e.timestamp)?);
    let keys = load_keys(paths, &ROLES[1..], cfg.threshold)?;
    let signed = editor.sign(&keys).await.map_err(tuf_err("sign"))?;
    let staging = paths.staging();
    let _ = std::fs::remove_dir_all(&staging);
    signed
        .write(&staging)
        .await
        .map_err(tuf_err("write metadata"))?;
    install_staged(paths)
}

/// Moves the files of `DIR/staging` into `repo/metadata`, `timestamp.json` last.
fn install_staged(paths: &FeedPaths) -> Result<(), FeedError> {
    let staging = paths.staging();
    let md = paths.metadata();
    let mut names: Vec<String> = std::fs::read_dir(&staging)
        .map_err(io_err("list", &staging))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort_by_key(|n| n == "timestamp.json");
    for name in names {
        let from = staging.join(&name);
        let to = md.join(&name);
        if name.ends_with(".root.json") && to.exists() {
            continue;
        }
        let f = std::fs::File::open(&from).map_err(io_err("open", &from))?;
        f.sync_all().map_err(io_err("fsync", &from))?;
        std::fs::rename(&from, &to).map_err(io_err("rename into place", &to))?;
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(())
}

fn custom_str(t: &Target, key: &str) -> Option<String> {
    t.custom.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn entry_of(name: &TargetName, t: &Target) -> FeedEntry {
    let channels = t
        .custom
        .get(CUSTOM_CHANNELS)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    FeedEntry {
        name: name.raw().to_owned(),
        version: custom_str(t, CUSTOM_VERSION).unwrap_or_default(),
        channels,
        length: t.length,
        sha256: hex::encode(&t.hashes.sha256),
    }
}

/// The bundles of the feed, oldest version first.
///
/// # Errors
/// [`FeedError`] when the metadata cannot be read.
pub fn list(dir: &Path) -> Result<Vec<FeedEntry>, FeedError> {
    let cur = read_current(dir)?;
    Ok(entries_of(&cur.targets.signed))
}

/// The bundles described by a targets role, oldest semver first.
#[must_use]
pub fn entries_of(targets: &Targets) -> Vec<FeedEntry> {
    let mut v: Vec<FeedEntry> = targets
        .targets
        .iter()
        .map(|(n, t)| entry_of(n, t))
        .collect();
    v.sort_by(|a, b| {
        let pa = semver::Version::parse(&a.version).ok();
        let pb = semver::Version::parse(&b.version).ok();
        pa.cmp(&pb).then_with(|| a.name.cmp(&b.name))
    });
    v
}

/// Adds `bundle_path` as `version` on `channel`: copies it to
/// `repo/targets/<sha256>.<name>` and publishes new targets, snapshot and timestamp.
///
/// # Errors
/// [`FeedError::DuplicateVersion`] when the version is already there,
/// [`FeedError::VersionMismatch`] when the bundle's manifest names another version, and
/// I/O or signing failures.
pub async fn add(
    dir: &Path,
    bundle_path: &Path,
    version: &str,
    channel: &str,
    now: jiff::Timestamp,
) -> Result<FeedEntry, FeedError> {
    let paths = FeedPaths::new(dir);
    let cfg = read_config(dir)?;
    let v = parse_version(version)?;
    check_channel(channel)?;
    let manifest = bundle::read_manifest(bundle_path).map_err(|source| FeedError::Bundle {
        path: bundle_path.to_path_buf(),
        source,
    })?;
    if parse_version(&manifest.version)? != v {
        return Err(FeedError::VersionMismatch {
            path: bundle_path.to_path_buf(),
            manifest: manifest.version,
            given: version.to_owned(),
        });
    }
    let cur = read_current(dir)?;
    if let Some(e) = entries_of(&cur.targets.signed)
        .into_iter()
        .find(|e| semver::Version::parse(&e.version).ok().as_ref() == Some(&v))
    {
        return Err(FeedError::DuplicateVersion {
            version: version.to_owned(),
            name: e.name,
        });
    }
    let (length, sha) = bundle::hash_file(bundle_path).map_err(|source| FeedError::Bundle {
        path: bundle_path.to_path_buf(),
        source,
    })?;
    let name = target_name(version);
    // Copy the blob first under its content-addressed name; metadata naming it comes after.
    let dest = paths.targets().join(format!("{sha}.{name}"));
    let tmp = bundle::temp_name(&dest);
    std::fs::copy(bundle_path, &tmp).map_err(io_err("copy bundle to", &tmp))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync", &tmp))?;
    std::fs::rename(&tmp, &dest).map_err(io_err("rename into place", &dest))?;

    let sha_bytes = hex::decode(&sha).map_err(tuf_err("decode sha256"))?;
    let mut custom = HashMap::new();
    custom.insert(CUSTOM_VERSION.to_owned(), Value::from(version));
    custom.insert(CUSTOM_CHANNELS.to_owned(), Value::from(vec![channel]));
    let target = Target {
        length,
        hashes: Hashes {
            sha256: Decoded::<Hex>::from(sha_bytes),
            _extra: HashMap::new(),
        },
        custom,
        _extra: HashMap::new(),
    };
    let mut editor = editor_from(&paths, &cur).await?;
    editor
        .add_target(name.as_str(), target.clone())
        .map_err(tuf_err("add target"))?;
    publish(&paths, &cfg, editor, Some(&cur), now).await?;
    let tn = TargetName::new(name.as_str()).map_err(tuf_err("target name"))?;
    Ok(entry_of(&tn, &target))
}

async fn editor_from(paths: &FeedPaths, cur: &Current) -> Result<RepositoryEditor, FeedError> {
    let mut editor = RepositoryEditor::new(paths.root())
        .await
        .map_err(tuf_err("open root"))?;
    editor
        .targets(cur.targets.clone())
        .map_err(tuf_err("load targets"))?;
    Ok(editor)
}

/// Puts `version` on channel `to` as well (a bundle can be on several channels) and
/// publishes new targets, snapshot and timestamp.
///
/// # Errors
/// [`FeedError::UnknownVersion`], invalid channel, I/O or signing failures.
pub async fn promote(
    dir: &Path,
    version: &str,
    to: &str,
    now: jiff::Timestamp,
) -> Result<FeedEntry, FeedError> {
    let paths = FeedPaths::new(dir);
    let cfg = read_config(dir)?;
    let v = parse_version(version)?;
    check_channel(to)?;
    let cur = read_current(dir)?;
    let (name, mut target) = cur
        .targets
        .signed
        .targets
        .iter()
        .find(|(_, t)| {
            custom_str(t, CUSTOM_VERSION)
                .and_then(|s| semver::Version::parse(&s).ok())
                .as_ref()
                == Some(&v)
        })
        .map(|(n, t)| (n.clone(), t.clone()))
        .ok_or_else(|| FeedError::UnknownVersion {
            version: version.to_owned(),
        })?;
    let mut channels = entry_of(&name, &target).channels;
    if !channels.iter().any(|c| c == to) {
        channels.push(to.to_owned());
    }
    target
        .custom
        .insert(CUSTOM_CHANNELS.to_owned(), Value::from(channels));
    let mut editor = editor_from(&paths, &cur).await?;
    editor
        .remove_target(&name)
        .map_err(tuf_err("remove target"))?;
    editor
        .add_target(name.clone(), target.clone())
        .map_err(tuf_err("add target"))?;
    publish(&paths, &cfg, editor, Some(&cur), now).await?;
    Ok(entry_of(&name, &target))
}

/// Re-signs `timestamp.json` only (a new version, a fresh expiry) pointing at the current
/// snapshot. Returns the new timestamp version.
///
/// # Errors
/// I/O or signing failures.
pub async fn refresh(dir: &Path, now: jiff::Timestamp) -> Result<u64, FeedError> {
    let paths = FeedPaths::new(dir);
    let cfg = read_config(dir)?;
    let cur = read_current(dir)?;
    let root: Signed<Root> = read_json(&paths.root())?;
    let version =
        NonZeroU64::new(cur.timestamp.signed.version.get() + 1).unwrap_or(NonZeroU64::MIN);
    let mut ts = Timestamp::new(
        SPEC_VERSION.into(),
        version,
        expires_at(now, cfg.expiries.timestamp)?,
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &cur.snapshot_bytes);
    ts.meta.insert(
        "snapshot.json".into(),
        Metafile {
            length: Some(cur.snapshot_bytes.len() as u64),
            hashes: Some(Hashes {
                sha256: Decoded::<Hex>::from(digest.as_ref().to_vec()),
                _extra: HashMap::new(),
            }),
            version: cur.snapshot.signed.version,
            _extra: HashMap::new(),
        },
    );
    let keys = load_keys(&paths, &["timestamp"], cfg.threshold)?;
    let signed = SignedRole::new(
        ts,
        &KeyHolder::Root(root.signed),
        &keys,
        &SystemRandom::new(),
    )
    .await
    .map_err(tuf_err("sign timestamp"))?;
    write_atomic(&paths.metadata().join("timestamp.json"), signed.buffer())?;
    Ok(version.get())
}
