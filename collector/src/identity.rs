//! The appliance's identity: its private key (made here, never sent anywhere), the CSR that
//! carries its public half, and the certificate the gateway's CA issues for it.
//!
//! Key material and the bootstrap token are never logged; errors name files, not contents.

use std::io::BufReader;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

use crate::files::{self, FileError, MODE_PRIVATE};
use crate::state::{CERT_FILE, KEY_FILE};

/// Common name used when the host name is unknown.
pub const FALLBACK_COMMON_NAME: &str = "outpost-appliance";

/// An identity operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Generating the key pair failed.
    #[error("failed to generate a key pair: {0}")]
    GenerateKey(rcgen::Error),
    /// Writing the key failed.
    #[error("failed to write the private key: {0}")]
    WriteKey(FileError),
    /// Reading the key failed.
    #[error("failed to read the private key {}: {source}", path.display())]
    ReadKey {
        /// The key file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The key file does not hold a usable key.
    #[error("{} does not hold a usable private key: {problem}", path.display())]
    ParseKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong (never the key itself).
        problem: String,
    },
    /// Making the CSR failed.
    #[error("failed to make the certificate signing request: {0}")]
    MakeCsr(rcgen::Error),
    /// A certificate could not be parsed.
    #[error("{origin}: not a usable PEM certificate: {problem}")]
    ParseCertificate {
        /// Where it came from (file or gateway).
        origin: String,
        /// What is wrong.
        problem: String,
    },
    /// The issued certificate is for another key.
    #[error("{origin}: the certificate's public key does not match our key {}", key.display())]
    CertificateKeyMismatch {
        /// Where the certificate came from.
        origin: String,
        /// Our key file.
        key: PathBuf,
    },
    /// Writing the certificate failed.
    #[error("failed to write the certificate: {0}")]
    WriteCertificate(FileError),
    /// Reading the certificate failed.
    #[error("failed to read the certificate {}: {source}", path.display())]
    ReadCertificate {
        /// The certificate file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Facts about a certificate that the collector reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Subject, as text.
    pub subject: String,
    /// Subject common name (the appliance id for issued certificates).
    pub common_name: Option<String>,
    /// Serial number, hex.
    pub serial_hex: String,
    /// End of validity, unix seconds.
    pub not_after: i64,
}

/// Loads `state_dir/key.pem`, or generates an ECDSA P-256 key and writes it there (0600)
/// when it does not exist yet.
///
/// # Errors
/// [`IdentityError`] naming the key file.
pub fn load_or_create_key(state_dir: &Path) -> Result<KeyPair, IdentityError> {
    let path = state_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            tighten_mode(&path);
            KeyPair::from_pem(&text).map_err(|e| IdentityError::ParseKey {
                path: path.clone(),
                problem: e.to_string(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            files::ensure_dir(state_dir).map_err(IdentityError::WriteKey)?;
            let key = KeyPair::generate().map_err(IdentityError::GenerateKey)?;
            let pem = key.serialize_pem();
            files::write_atomic(&path, pem.as_bytes(), MODE_PRIVATE)
                .map_err(IdentityError::WriteKey)?;
            info!(path = %path.display(), "generated a new ECDSA P-256 key");
            Ok(key)
        }
        Err(source) => Err(IdentityError::ReadKey { path, source }),
    }
}

/// Resets a private file to 0600 when someone widened it.
fn tighten_mode(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode != MODE_PRIVATE {
            warn!(path = %path.display(), mode = format!("{mode:o}"), "private file was not 0600; fixing");
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(MODE_PRIVATE));
        }
    }
}

/// Makes a PEM CSR for `key` with common name `hostname` (or [`FALLBACK_COMMON_NAME`]).
///
/// # Errors
/// [`IdentityError::MakeCsr`].
pub fn make_csr(key: &KeyPair, hostname: &str) -> Result<String, IdentityError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let cn = if hostname.trim().is_empty() {
        FALLBACK_COMMON_NAME
    } else {
        hostname.trim()
    };
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(IdentityError::MakeCsr)
}

/// Parses the first certificate of a PEM text; `origin` names its source in errors.
///
/// # Errors
/// [`IdentityError::ParseCertificate`].
pub fn certificate_der(pem: &str, origin: &str) -> Result<CertificateDer<'static>, IdentityError> {
    rustls_pemfile::certs(&mut BufReader::new(pem.as_bytes()))
        .next()
        .ok_or_else(|| IdentityError::ParseCertificate {
            origin: origin.to_string(),
            problem: "no PEM certificate found".into(),
        })?
        .map_err(|e| IdentityError::ParseCertificate {
            origin: origin.to_string(),
            problem: e.to_string(),
        })
}

/// Reads subject, serial and expiry from a DER certificate.
///
/// # Errors
/// [`IdentityError::ParseCertificate`].
pub fn certificate_info(der: &[u8], origin: &str) -> Result<CertificateInfo, IdentityError> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).map_err(|e| {
        IdentityError::ParseCertificate {
            origin: origin.to_string(),
            problem: e.to_string(),
        }
    })?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Ok(CertificateInfo {
        subject: cert.subject().to_string(),
        common_name,
        serial_hex: cert.raw_serial_as_string().replace(':', ""),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Checks that the certificate in `pem` carries `key`'s public key.
///
/// # Errors
/// [`IdentityError::ParseCertificate`] or [`IdentityError::CertificateKeyMismatch`].
pub fn check_certificate_key(
    pem: &str,
    key: &KeyPair,
    key_path: &Path,
    origin: &str,
) -> Result<CertificateInfo, IdentityError> {
    use x509_parser::prelude::FromDer;
    let der = certificate_der(pem, origin)?;
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(der.as_ref()).map_err(|e| {
            IdentityError::ParseCertificate {
                origin: origin.to_string(),
                problem: e.to_string(),
            }
        })?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(IdentityError::CertificateKeyMismatch {
            origin: origin.to_string(),
            key: key_path.to_path_buf(),
        });
    }
    certificate_info(der.as_ref(), origin)
}

/// Stores the issued certificate as `state_dir/cert.pem` (0600, atomic).
///
/// # Errors
/// [`IdentityError::WriteCertificate`].
pub fn store_certificate(state_dir: &Path, pem: &str) -> Result<(), IdentityError> {
    files::write_atomic(&state_dir.join(CERT_FILE), pem.as_bytes(), MODE_PRIVATE)
        .map_err(IdentityError::WriteCertificate)
}

/// Reads `state_dir/cert.pem`, if present, and returns its facts.
///
/// # Errors
/// [`IdentityError`] naming the file when it exists but cannot be read or parsed.
pub fn read_certificate_info(state_dir: &Path) -> Result<Option<CertificateInfo>, IdentityError> {
    let path = state_dir.join(CERT_FILE);
    let Some(bytes) =
        files::read_optional(&path).map_err(|source| IdentityError::ReadCertificate {
            path: path.clone(),
            source,
        })?
    else {
        return Ok(None);
    };
    let origin = path.display().to_string();
    let der = certificate_der(&String::from_utf8_lossy(&bytes), &origin)?;
    certificate_info(der.as_ref(), &origin).map(Some)
}

/// The client certificate chain and key for mTLS, from `cert.pem` and `key.pem`.
///
/// # Errors
/// [`IdentityError`] naming the file that cannot be used.
pub fn load_client_auth(
    state_dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), IdentityError> {
    let cert_path = state_dir.join(CERT_FILE);
    let pem = std::fs::read(&cert_path).map_err(|source| IdentityError::ReadCertificate {
        path: cert_path.clone(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::ParseCertificate {
            origin: cert_path.display().to_string(),
            problem: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::ParseCertificate {
            origin: cert_path.display().to_string(),
            problem: "no PEM certificate found".into(),
        });
    }
    let key_path = state_dir.join(KEY_FILE);
    let key_pem = std::fs::read(&key_path).map_err(|source| IdentityError::ReadKey {
        path: key_path.clone(),
        source,
    })?;
    let key = rustls_pemfile::private_key(&mut BufReader::new(key_pem.as_slice()))
        .map_err(|e| IdentityError::ParseKey {
            path: key_path.clone(),
            problem: e.to_string(),
        })?
        .ok_or_else(|| IdentityError::ParseKey {
            path: key_path.clone(),
            problem: "no PEM private key found".into(),
        })?;
    Ok((certs, key))
}

/// This machine's host name, as sysinfo reports it (empty when unknown).
#[must_use]
pub fn hostname() -> String {
    sysinfo::System::host_name().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let k1 = load_or_create_key(&state).unwrap();
        let path = state.join(KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let k2 = load_or_create_key(&state).unwrap();
        assert_eq!(k1.public_key_raw(), k2.public_key_raw());
    }

    #[test]
    fn widened_key_mode_is_fixed() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create_key(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        load_or_create_key(dir.path()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn garbage_key_names_the_file_not_the_content() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "SECRET-GARBAGE").unwrap();
        let m = load_or_create_key(dir.path()).unwrap_err().to_string();
        assert!(m.contains(KEY_FILE), "{m}");
        assert!(!m.contains("SECRET-GARBAGE"), "{m}");
    }

    #[test]
    fn csr_carries_hostname_and_key() {
        use rcgen::PublicKeyData;
        let key = KeyPair::generate().unwrap();
        let pem = make_csr(&key, "box-1").unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE REQUEST"));
        let params = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        assert_eq!(params.public_key.der_bytes(), key.public_key_raw());
    }

    fn issue_for(key: &KeyPair) -> String {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let csr = make_csr(key, "box").unwrap();
        let req = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        req.signed_by(&issuer).unwrap().pem()
    }

    #[test]
    fn certificate_for_our_key_is_accepted_and_stored() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create_key(dir.path()).unwrap();
        let pem = issue_for(&key);
        let info = check_certificate_key(&pem, &key, Path::new("key.pem"), "gateway").unwrap();
        assert!(info.not_after > 0);
        store_certificate(dir.path(), &pem).unwrap();
        let mode = std::fs::metadata(dir.path().join(CERT_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_certificate_info(dir.path()).unwrap(), Some(info));
        let (certs, _key) = load_client_auth(dir.path()).unwrap();
        assert_eq!(certs.len(), 1);
    }

    #[test]
    fn certificate_for_another_key_is_refused() {
        let ours = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        let pem = issue_for(&other);
        let e = check_certificate_key(&pem, &ours, Path::new("key.pem"), "gateway").unwrap_err();
        assert!(
            matches!(e, IdentityError::CertificateKeyMismatch { .. }),
            "{e}"
        );
    }
}
