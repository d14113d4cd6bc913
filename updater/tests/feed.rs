//! The feed publisher and the bundle format against a real TUF client: `tough` loads the
//! published repository from disk (file:// transport) with expiry enforced and a datastore
//! for rollback protection, exactly as the mirror does over HTTPS.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use jiff::{SignedDuration, Timestamp};
use outpost_updater::bundle::{self, BundleError};
use outpost_updater::feed::{self, FeedError, InitOptions};
use tough::{ExpirationEnforcement, RepositoryLoader};
use url::Url;

fn noise(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// A bundle of `len` bytes as `version`, in `dir`.
fn make_bundle(dir: &Path, version: &str, len: usize) -> PathBuf {
    let img = dir.join(format!("{version}.img"));
    std::fs::write(
        &img,
        noise(len, version.len() as u8 + version.as_bytes()[0]),
    )
    .unwrap();
    let out = dir.join(format!("{version}.tar.zst"));
    bundle::create_at(&out, version, &img, 1_700_000_000).unwrap();
    out
}

async fn load(feed_dir: &Path, datastore: &Path) -> Result<tough::Repository, tough::error::Error> {
    std::fs::create_dir_all(datastore).unwrap();
    let root = std::fs::read(feed_dir.join("root.json")).unwrap();
    let md = Url::from_directory_path(feed_dir.join("repo/metadata")).unwrap();
    let tg = Url::from_directory_path(feed_dir.join("repo/targets")).unwrap();
    RepositoryLoader::new(&root, md, tg)
        .datastore(datastore)
        .expiration_enforcement(ExpirationEnforcement::Safe)
        .load()
        .await
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn swap_metadata(feed_dir: &Path, from: &Path) {
    let md = feed_dir.join("repo/metadata");
    std::fs::remove_dir_all(&md).unwrap();
    copy_dir(from, &md);
}

#[test]
fn bundle_round_trips_and_is_deterministic() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("root.img");
    let data = noise(123_457, 1);
    std::fs::write(&img, &data).unwrap();
    let a = t.path().join("a.tar.zst");
    let b = t.path().join("b.tar.zst");
    let m = bundle::create_at(&a, "1.2.3", &img, 1_700_000_000).unwrap();
    bundle::create_at(&b, "1.2.3", &img, 1_700_000_000).unwrap();
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "not reproducible"
    );
    assert_eq!(bundle::read_manifest(&a).unwrap(), m);
    assert_eq!(m.root_entry().unwrap().size, data.len() as u64);
    let mut out = Vec::new();
    let (n, sha) = bundle::stream_root_image(&a, &mut out).unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(out, data);
    assert_eq!(sha, m.root_entry().unwrap().sha256);
    // No temporary file left next to the output.
    let names: Vec<String> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn bundle_with_a_non_semver_version_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("root.img");
    std::fs::write(&img, b"x").unwrap();
    let out = t.path().join("b");
    let e = bundle::create(&out, "one-point-oh", &img).unwrap_err();
    assert!(matches!(e, BundleError::BadVersion { .. }), "{e}");
    assert!(!out.exists());
}

/// Writes a hand-made bundle: (`name`, bytes) entries in order.
fn raw_bundle(path: &Path, entries: &[(&str, &[u8])]) {
    let f = std::fs::File::create(path).unwrap();
    let enc = zstd::Encoder::new(f, 3).unwrap();
    let mut tar = tar::Builder::new(enc);
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        // Write the name bytes directly: tar's set_path refuses `..`, an attacker does not.
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append(&h, *data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

fn manifest_json(path: &str, data: &[u8], sha: Option<&str>) -> Vec<u8> {
    use sha2::Digest;
    let sha = sha.map_or_else(|| hex::encode(sha2::Sha256::digest(data)), str::to_owned);
    serde_json::to_vec(&serde_json::json!({
        "format": 1, "version": "1.0.0", "created": 0, "root_image": path,
        "files": [{"path": path, "size": data.len(), "sha256": sha}],
    }))
    .unwrap()
}

#[test]
fn bundle_with_a_tampered_root_image_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("b");
    let img = noise(5000, 2);
    let mut flipped = img.clone();
    flipped[10] ^= 1;
    // One flipped bit; and a root image longer than the manifest says, which is cut at
    // size + 1 and refused too.
    for bad in [flipped, noise(9000, 2)] {
        raw_bundle(
            &p,
            &[
                ("manifest.json", &manifest_json("root.img", &img, None)),
                ("root.img", &bad),
            ],
        );
        let mut out = Vec::new();
        let e = bundle::stream_root_image(&p, &mut out).unwrap_err();
        assert!(matches!(e, BundleError::RootImageMismatch { .. }), "{e}");
        assert!(out.len() <= img.len() + 1);
    }
}

#[test]
fn bundle_with_unsafe_paths_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("b");
    let img = noise(100, 3);
    raw_bundle(
        &p,
        &[
            ("manifest.json", &manifest_json("../root.img", &img, None)),
            ("../root.img", &img),
        ],
    );
    let e = bundle::read_manifest(&p).unwrap_err();
    assert!(matches!(e, BundleError::UnsafePath { .. }), "{e}");
    raw_bundle(
        &p,
        &[("manifest.json", &manifest_json("/root.img", &img, None))],
    );
    let e = bundle::read_manifest(&p).unwrap_err();
    assert!(matches!(e, BundleError::UnsafePath { .. }), "{e}");
    // An entry with `..` before the root image stops the stream.
    raw_bundle(
        &p,
        &[
            ("manifest.json", &manifest_json("root.img", &img, None)),
            ("../evil", b"x"),
            ("root.img", &img),
        ],
    );
    let e = bundle::stream_root_image(&p, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, BundleError::UnsafePath { .. }), "{e}");
}

#[test]
fn bundle_with_an_oversized_or_missing_manifest_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("b");
    let big = vec![b' '; 100 * 1024];
    raw_bundle(&p, &[("manifest.json", &big)]);
    let e = bundle::read_manifest(&p).unwrap_err();
    assert!(e.to_string().contains("cap"), "{e}");
    raw_bundle(&p, &[("root.img", b"x")]);
    let e = bundle::read_manifest(&p).unwrap_err();
    assert!(e.to_string().contains("expected manifest.json"), "{e}");
    std::fs::write(&p, b"not zstd at all").unwrap();
    assert!(bundle::read_manifest(&p).is_err());
}

#[tokio::test]
async fn publish_promote_refresh_verify_with_tuf() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("feed");
    let now = Timestamp::now();
    feed::init(&dir, &InitOptions::default(), now)
        .await
        .unwrap();
    // Keys: 0600 in DIR/keys, nothing secret in DIR/repo.
    for e in std::fs::read_dir(dir.join("keys")).unwrap() {
        let mode = e.unwrap().metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert_eq!(std::fs::read_dir(dir.join("keys")).unwrap().count(), 4);
    let b = make_bundle(t.path(), "1.10.0", 10_000);
    feed::add(&dir, &b, "1.10.0", "testing", now).await.unwrap();
    let b9 = make_bundle(t.path(), "1.9.0", 20_000);
    feed::add(&dir, &b9, "1.9.0", "testing", now).await.unwrap();
    feed::promote(&dir, "1.9.0", "stable", now).await.unwrap();
    let ds = t.path().join("ds");
    let repo = load(&dir, &ds).await.unwrap();
    let entries = feed::entries_of(&repo.targets().signed);
    let versions: Vec<&str> = entries.iter().map(|e| e.version.as_str()).collect();
    assert_eq!(versions, ["1.9.0", "1.10.0"], "not semver order");
    assert_eq!(entries[0].channels, ["testing", "stable"]);
    assert_eq!(entries[1].channels, ["testing"]);
    assert_eq!(feed::list(&dir).unwrap(), entries);
    // The target the client reads back is the bundle, verified by tough.
    let name = tough::TargetName::new("outpost-1.9.0.tar.zst").unwrap();
    let stream = repo.read_target(&name).await.unwrap().unwrap();
    let bytes = tough::IntoVec::into_vec(stream).await.unwrap();
    assert_eq!(bytes, std::fs::read(&b9).unwrap());

    let before = repo.timestamp().signed.version.get();
    let v = feed::refresh(&dir, now).await.unwrap();
    assert_eq!(v, before + 1);
    let repo = load(&dir, &ds).await.unwrap();
    assert_eq!(repo.timestamp().signed.version.get(), before + 1);
    assert_eq!(repo.snapshot().signed.version.get(), 4);
    // Nothing left behind in the staging directory or as temporary names.
    assert!(!dir.join("staging").exists());
    for e in std::fs::read_dir(dir.join("repo/metadata")).unwrap() {
        assert!(!e.unwrap().file_name().to_string_lossy().starts_with('.'));
    }
}

#[tokio::test]
async fn bad_publisher_input_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("feed");
    let now = Timestamp::now();
    feed::init(&dir, &InitOptions::default(), now)
        .await
        .unwrap();
    let e = feed::init(&dir, &InitOptions::default(), now)
        .await
        .unwrap_err();
    assert!(matches!(e, FeedError::AlreadyInitialised { .. }), "{e}");
    let b = make_bundle(t.path(), "1.0.0", 1000);
    feed::add(&dir, &b, "1.0.0", "testing", now).await.unwrap();
    let e = feed::add(&dir, &b, "1.0.0", "testing", now)
        .await
        .unwrap_err();
    assert!(matches!(e, FeedError::DuplicateVersion { .. }), "{e}");
    let e = feed::add(&dir, &b, "1.0.1", "testing", now)
        .await
        .unwrap_err();
    assert!(matches!(e, FeedError::VersionMismatch { .. }), "{e}");
    let e = feed::add(&dir, &b, "1.0.0", "Bad Channel", now)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            FeedError::Invalid {
                what: "channel",
                ..
            }
        ),
        "{e}"
    );
    let e = feed::promote(&dir, "2.0.0", "stable", now)
        .await
        .unwrap_err();
    assert!(matches!(e, FeedError::UnknownVersion { .. }), "{e}");
    let e = feed::add(&dir, &t.path().join("missing"), "1.0.2", "testing", now)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

#[tokio::test]
async fn threshold_two_signs_every_role_twice() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("feed");
    let mut opts = InitOptions::default();
    opts.config.threshold = 2;
    feed::init(&dir, &opts, Timestamp::now()).await.unwrap();
    assert_eq!(std::fs::read_dir(dir.join("keys")).unwrap().count(), 8);
    let repo = load(&dir, &t.path().join("ds")).await.unwrap();
    for role in repo.root().signed.roles.values() {
        assert_eq!(role.threshold.get(), 2);
        assert_eq!(role.keyids.len(), 2);
    }
    assert_eq!(repo.timestamp().signatures.len(), 2);
    // With one timestamp key gone the threshold cannot be met: refresh fails, nothing written.
    let ts_before = std::fs::read(dir.join("repo/metadata/timestamp.json")).unwrap();
    std::fs::rename(
        dir.join("keys/timestamp-1.pk8"),
        t.path().join("timestamp-1.pk8"),
    )
    .unwrap();
    let e = feed::refresh(&dir, Timestamp::now()).await.unwrap_err();
    assert!(
        matches!(e, FeedError::MissingKeys { ref role, have: 1, need: 2, .. } if role == "timestamp"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(dir.join("repo/metadata/timestamp.json")).unwrap(),
        ts_before
    );
    // The root keys can stay offline: publishing needs targets, snapshot and timestamp.
    std::fs::rename(dir.join("keys/root-0.pk8"), t.path().join("root-0.pk8")).unwrap();
    std::fs::rename(dir.join("keys/root-1.pk8"), t.path().join("root-1.pk8")).unwrap();
    std::fs::rename(
        t.path().join("timestamp-1.pk8"),
        dir.join("keys/timestamp-1.pk8"),
    )
    .unwrap();
    let b = make_bundle(t.path(), "2.0.0", 1000);
    feed::add(&dir, &b, "2.0.0", "testing", Timestamp::now())
        .await
        .unwrap();
    feed::refresh(&dir, Timestamp::now()).await.unwrap();
    let repo = load(&dir, &t.path().join("ds3")).await.unwrap();
    assert_eq!(repo.targets().signed.targets.len(), 1);
    assert_eq!(repo.targets().signatures.len(), 2);
}

#[tokio::test]
async fn client_refuses_expired_tampered_mixed_and_rolled_back_metadata() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("feed");
    let now = Timestamp::now();
    feed::init(&dir, &InitOptions::default(), now)
        .await
        .unwrap();
    let b = make_bundle(t.path(), "1.0.0", 1000);
    feed::add(&dir, &b, "1.0.0", "stable", now).await.unwrap();
    let ds = t.path().join("ds");
    load(&dir, &ds).await.unwrap();
    let state_a = t.path().join("state-a");
    copy_dir(&dir.join("repo/metadata"), &state_a);

    // Expired: a timestamp signed two days ago with a one-day expiry.
    feed::refresh(&dir, now - SignedDuration::from_hours(48))
        .await
        .unwrap();
    let e = load(&dir, &ds).await.unwrap_err();
    assert!(
        matches!(e, tough::error::Error::ExpiredMetadata { .. }),
        "{e}"
    );
    // Expired targets (signed 100 days ago, three-month expiry) with a fresh timestamp.
    let b2 = make_bundle(t.path(), "1.1.0", 1000);
    feed::add(
        &dir,
        &b2,
        "1.1.0",
        "stable",
        now - SignedDuration::from_hours(24 * 100),
    )
    .await
    .unwrap();
    feed::refresh(&dir, now).await.unwrap();
    let e = load(&dir, &ds).await.unwrap_err();
    assert!(
        matches!(e, tough::error::Error::ExpiredMetadata { .. }),
        "{e}"
    );
    feed::promote(&dir, "1.1.0", "testing", now).await.unwrap();
    let repo = load(&dir, &ds).await.unwrap();
    assert_eq!(repo.targets().signed.targets.len(), 2);

    // Rollback: the repository as it was (state A) is older than what the datastore trusts.
    let state_b = t.path().join("state-b");
    copy_dir(&dir.join("repo/metadata"), &state_b);
    swap_metadata(&dir, &state_a);
    let e = load(&dir, &ds).await.unwrap_err();
    assert!(
        matches!(e, tough::error::Error::OlderMetadata { .. }),
        "{e}"
    );
    swap_metadata(&dir, &state_b);
    load(&dir, &ds).await.unwrap();

    // Mixed: the timestamp names snapshot N, the file holds snapshot N-1.
    let cur = feed::read_current(&dir).unwrap();
    let sv = cur.snapshot.signed.version.get();
    let md = dir.join("repo/metadata");
    std::fs::copy(
        md.join(format!("{}.snapshot.json", sv - 1)),
        md.join(format!("{sv}.snapshot.json")),
    )
    .unwrap();
    let e = load(&dir, &t.path().join("fresh-ds")).await.unwrap_err();
    assert!(e.to_string().contains("Hash mismatch"), "{e}");
    swap_metadata(&dir, &state_b);

    // Tampered: targets edited without re-signing (snapshot hash catches it first), and a
    // timestamp edited without re-signing (signature).
    let tv = cur.targets.signed.version.get();
    let tp = md.join(format!("{tv}.targets.json"));
    let text = std::fs::read_to_string(&tp)
        .unwrap()
        .replace("\"stable\"", "\"stablf\"");
    std::fs::write(&tp, text).unwrap();
    assert!(load(&dir, &t.path().join("fresh-ds2")).await.is_err());
    swap_metadata(&dir, &state_b);
    let tsp = md.join("timestamp.json");
    let text = std::fs::read_to_string(&tsp).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["signed"]["expires"] = serde_json::json!("2099-01-01T00:00:00Z");
    std::fs::write(&tsp, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = load(&dir, &t.path().join("fresh-ds3")).await.unwrap_err();
    assert!(
        matches!(e, tough::error::Error::VerifyMetadata { .. }),
        "{e}"
    );
}
