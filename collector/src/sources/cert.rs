//! Certificate files: the ones the packs' certificate discoveries list (`paths = [...]`)
//! and the collector's own (`cert.pem` in the state directory, object id
//! [`OWN_CERTIFICATE_ID`]) — it expires, so an alert before expiry matters.
//!
//! Each file is read (at most [`MAX_CERTIFICATE_FILE`] bytes) and its first PEM
//! certificate parsed with x509-parser. A file that is missing, unreadable, too big or not
//! a certificate becomes a [`CertificateStatus`] with `error` set and no expiry, so its
//! monitors are Unknown — never a crash, never a skipped object. Pack-listed files are
//! named by their path.

use std::io::Read;
use std::path::Path;

use outpost_health::CertificateStatus;
use x509_parser::pem::Pem;

/// The object id of the collector's own certificate.
pub const OWN_CERTIFICATE_ID: &str = "outpost-collector";

/// The most bytes read from one certificate file.
pub const MAX_CERTIFICATE_FILE: u64 = 1 << 20;

/// The most certificate files read in one collection.
pub const MAX_CERTIFICATE_FILES: usize = 256;

/// Subject and `notAfter` (unix milliseconds) of the first certificate in a PEM text.
///
/// # Errors
/// Why it is not a certificate, as text.
pub fn parse_certificate_pem(pem: &[u8]) -> Result<(String, i64), String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| format!("no PEM certificate found: {e}"))?;
    certificate_fields(&pem)
}

fn certificate_fields(pem: &Pem) -> Result<(String, i64), String> {
    if pem.label != "CERTIFICATE" {
        return Err(format!("PEM block is {:?}, not a CERTIFICATE", pem.label));
    }
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let not_after_ms = cert.validity().not_after.timestamp().saturating_mul(1000);
    Ok((cert.subject().to_string(), not_after_ms))
}

/// Reads one certificate file into the status of object `id`; problems go into `error`.
#[must_use]
pub fn read_certificate(id: &str, path: &Path) -> CertificateStatus {
    let mut status = CertificateStatus {
        id: id.to_string(),
        path: path.display().to_string(),
        subject: String::new(),
        not_after_ms: None,
        error: None,
    };
    let parsed = read_capped(path).and_then(|bytes| parse_certificate_pem(&bytes));
    match parsed {
        Ok((subject, not_after_ms)) => {
            status.subject = subject;
            status.not_after_ms = Some(not_after_ms);
        }
        Err(e) => status.error = Some(format!("{}: {e}", path.display())),
    }
    status
}

fn read_capped(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut buf = Vec::new();
    file.take(MAX_CERTIFICATE_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    if buf.len() as u64 > MAX_CERTIFICATE_FILE {
        return Err(format!(
            "larger than {MAX_CERTIFICATE_FILE} bytes; not a certificate file"
        ));
    }
    Ok(buf)
}

/// The certificates of one collection: the collector's own (`own`, when it has one yet)
/// and every pack-listed path (at most [`MAX_CERTIFICATE_FILES`]).
#[must_use]
pub fn sample_certificates(own: Option<&Path>, paths: &[String]) -> Vec<CertificateStatus> {
    let mut out = Vec::with_capacity(paths.len() + 1);
    if let Some(own) = own.filter(|p| p.is_file()) {
        out.push(read_certificate(OWN_CERTIFICATE_ID, own));
    }
    for p in paths.iter().take(MAX_CERTIFICATE_FILES) {
        out.push(read_certificate(p, Path::new(p)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_health::{Class, HealthEngine, HealthState, ObjectKey, ObjectSample, Samples};

    const DAY_MS: i64 = 86_400_000;

    /// A self-signed certificate for `cn` that expires `days` from `now_secs`.
    fn cert_pem(cn: &str, now_secs: i64, days: i64) -> String {
        let mut params = rcgen::CertificateParams::new(vec![cn.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        let not_after = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(u64::try_from(now_secs + days * 86_400).unwrap());
        params.not_after = not_after.into();
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    fn now_secs() -> i64 {
        i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap()
    }

    #[test]
    fn real_certificates_expiring_in_3_20_365_days_are_critical_warning_healthy() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_secs();
        let mut paths = Vec::new();
        for (name, days) in [("soon", 3), ("month", 20), ("year", 365)] {
            let p = dir.path().join(format!("{name}.pem"));
            std::fs::write(&p, cert_pem(name, now, days)).unwrap();
            paths.push(p.display().to_string());
        }
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n").unwrap();
        paths.push(garbage.display().to_string());
        paths.push(dir.path().join("missing.pem").display().to_string());
        let certs = sample_certificates(None, &paths);
        assert_eq!(certs.len(), 5);
        assert!(certs[0].subject.contains("CN=soon"), "{:?}", certs[0]);
        let left = certs[0].not_after_ms.unwrap() - now * 1000;
        assert!((2 * DAY_MS..4 * DAY_MS).contains(&left), "{left}");
        for bad in &certs[3..] {
            assert!(bad.not_after_ms.is_none());
            assert!(bad.error.as_deref().unwrap().contains(&bad.path), "{bad:?}");
        }

        let mut engine = HealthEngine::new(outpost_health::default_pack_set());
        let mut s = Samples::new();
        s.push(ObjectSample::new(ObjectKey::new(Class::Host, "box")));
        s.add_certificates(&certs);
        engine.observe(&s, now * 1000);
        let tree = engine.tree();
        let state = |id: &str| {
            tree.monitor_state(
                &ObjectKey::new(Class::Certificate, id),
                "certificate.expiry",
            )
        };
        assert_eq!(state(&paths[0]), Some(HealthState::Critical));
        assert_eq!(state(&paths[1]), Some(HealthState::Warning));
        assert_eq!(state(&paths[2]), Some(HealthState::Healthy));
        assert_eq!(state(&paths[3]), Some(HealthState::Unknown));
        assert_eq!(state(&paths[4]), Some(HealthState::Unknown));
    }

    #[test]
    fn own_certificate_is_watched_under_its_own_id() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("cert.pem");
        // Not enrolled yet: nothing to watch.
        assert!(sample_certificates(Some(&own), &[]).is_empty());
        std::fs::write(&own, cert_pem("box1", now_secs(), 90)).unwrap();
        let certs = sample_certificates(Some(&own), &[]);
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].id, OWN_CERTIFICATE_ID);
        assert!(certs[0].error.is_none(), "{:?}", certs[0]);
    }

    #[test]
    fn a_key_or_huge_file_is_not_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let s = read_certificate("k", &key);
        assert!(s.error.unwrap().contains("not a CERTIFICATE"));
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; 2 << 20]).unwrap();
        assert!(read_certificate("b", &big)
            .error
            .unwrap()
            .contains("larger than"));
    }
}
