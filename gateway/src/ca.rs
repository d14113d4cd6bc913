//! The Outpost certificate authority: creates the CA and the gateway's server certificate,
//! checks CSRs made on appliances, and issues appliance certificates whose content the CA
//! decides (never copied from the CSR).

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};

use crate::error::{CaError, CsrError};

/// Lifetime of the CA certificate (10 years).
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Lifetime of the gateway's server certificate (2 years).
pub const SERVER_LIFETIME: Duration = Duration::from_secs(2 * 365 * 86_400);
/// Backdating of `notBefore`, to tolerate clock skew between gateway and appliance.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// Smallest RSA modulus accepted in a CSR, bits.
pub const MIN_RSA_BITS: usize = 2048;

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";

/// PEM texts of a freshly created CA and server certificate.
pub struct CaBundle {
    /// CA certificate.
    pub ca_cert_pem: String,
    /// CA private key.
    pub ca_key_pem: String,
    /// Gateway server certificate.
    pub server_cert_pem: String,
    /// Gateway server key.
    pub server_key_pem: String,
}

/// Creates a new CA and a server certificate for `sans` (IPs become IP SANs).
///
/// # Errors
/// [`CaError`] when a SAN is unusable or key generation or signing fails.
pub fn create_ca(sans: &[String], now: SystemTime) -> Result<CaBundle, CaError> {
    if sans.is_empty() {
        return Err(CaError::BadSan {
            name: String::new(),
            reason: "at least one --san is needed (the name or IP appliances connect to)".into(),
        });
    }
    let ca_key = KeyPair::generate().map_err(|source| CaError::Sign {
        op: "generate the CA key",
        source,
    })?;
    let mut ca_params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Outpost CA");
    dn.push(DnType::OrganizationName, "Outpost");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.serial_number = Some(random_serial());
    set_validity(&mut ca_params, now, CA_LIFETIME);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|source| CaError::Sign {
            op: "self-sign the CA",
            source,
        })?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let server_key = KeyPair::generate().map_err(|source| CaError::Sign {
        op: "generate the server key",
        source,
    })?;
    let mut sp = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, sans[0].as_str());
    dn.push(DnType::OrganizationName, "Outpost gateway");
    sp.distinguished_name = dn;
    sp.subject_alt_names = sans.iter().map(|s| san_for(s)).collect::<Result<_, _>>()?;
    sp.is_ca = IsCa::ExplicitNoCa;
    sp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sp.use_authority_key_identifier_extension = true;
    sp.serial_number = Some(random_serial());
    set_validity(&mut sp, now, SERVER_LIFETIME);
    let server_cert = sp
        .signed_by(&server_key, &issuer)
        .map_err(|source| CaError::Sign {
            op: "sign the server certificate",
            source,
        })?;
    Ok(CaBundle {
        ca_cert_pem: ca_cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}

fn san_for(name: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid {
        return Err(CaError::BadSan {
            name: name.to_string(),
            reason: "not an IP address or DNS name".into(),
        });
    }
    let ia5 = name.try_into().map_err(|e: rcgen::Error| CaError::BadSan {
        name: name.to_string(),
        reason: e.to_string(),
    })?;
    Ok(SanType::DnsName(ia5))
}

/// A random positive, non-zero 128-bit serial number.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn set_validity(p: &mut CertificateParams, now: SystemTime, lifetime: Duration) {
    let now = time::OffsetDateTime::from(now);
    p.not_before = now - CLOCK_SKEW;
    p.not_after = now + lifetime;
}

/// Writes a file with mode 0600 (0644 when `private` is false), through a temp file and a
/// rename so a crash never leaves half a key under the final name.
///
/// # Errors
/// [`CaError::WriteFile`] naming the path.
pub fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| CaError::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// PEM text.
    pub pem: String,
    /// Serial number, lowercase hex.
    pub serial_hex: String,
    /// sha256 of the DER, lowercase hex: how the gateway recognises it on every request.
    pub fingerprint: String,
    /// Not valid before, unix seconds.
    pub not_before: i64,
    /// Not valid after, unix seconds.
    pub not_after: i64,
}

/// A CSR that passed every check.
pub struct CheckedCsr {
    params: CertificateSigningRequestParams,
    /// sha256 of the subject public key info, hex: identifies the key that enrolled.
    pub key_fingerprint: String,
}

impl std::fmt::Debug for CheckedCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedCsr")
            .field("key_fingerprint", &self.key_fingerprint)
            .finish_non_exhaustive()
    }
}

/// Parses a PEM CSR, checks its key (ECDSA P-256/P-384, Ed25519, RSA of at least
/// [`MIN_RSA_BITS`]) and verifies its self-signature.
///
/// # Errors
/// [`CsrError::Invalid`] or [`CsrError::WeakKey`], saying why.
pub fn check_csr(pem_text: &str) -> Result<CheckedCsr, CsrError> {
    use x509_parser::prelude::FromDer;
    if pem_text.len() > 64 * 1024 {
        return Err(CsrError::Invalid("larger than 64 KiB".into()));
    }
    let der = pem_der(pem_text, "CERTIFICATE REQUEST")
        .ok_or_else(|| CsrError::Invalid("not a PEM \"CERTIFICATE REQUEST\" block".into()))?;
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| CsrError::Invalid(format!("not a PKCS#10 request: {e}")))?;
    let spki = &req.certification_request_info.subject_pki;
    let alg = spki.algorithm.algorithm.to_id_string();
    match alg.as_str() {
        OID_RSA => {
            let bits = spki.parsed().map(|k| k.key_size()).unwrap_or(0);
            if bits < MIN_RSA_BITS {
                return Err(CsrError::WeakKey(format!(
                    "RSA key of {bits} bits; at least {MIN_RSA_BITS} required"
                )));
            }
        }
        OID_EC => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            if curve != OID_P256 && curve != OID_P384 {
                return Err(CsrError::WeakKey(format!(
                    "EC curve {curve:?} not accepted; use P-256 or P-384"
                )));
            }
        }
        OID_ED25519 => {}
        other => {
            return Err(CsrError::WeakKey(format!(
                "key algorithm {other} not accepted; use ECDSA P-256/P-384, Ed25519 or RSA >= {MIN_RSA_BITS}"
            )))
        }
    }
    let key_fingerprint = hex::encode(Sha256::digest(spki.raw));
    let params =
        CertificateSigningRequestParams::from_der(&der.as_slice().into()).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => {
                CsrError::Invalid("signature does not verify".into())
            }
            rcgen::Error::UnsupportedSignatureAlgorithm => {
                CsrError::WeakKey("signature algorithm not accepted".into())
            }
            other => CsrError::Invalid(other.to_string()),
        })?;
    Ok(CheckedCsr {
        params,
        key_fingerprint,
    })
}

fn pem_der(text: &str, label: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let body: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// sha256 (hex) of a DER certificate.
#[must_use]
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The loaded CA, able to sign.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM), handed to appliances.
    pub cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA certificate and key.
    ///
    /// # Errors
    /// [`CaError`] naming the file that cannot be read or used.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| CaError::ReadPem {
                path: p.to_path_buf(),
                source,
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::BadPem {
            path: key_path.to_path_buf(),
            what: "private key",
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| CaError::BadPem {
            path: cert_path.to_path_buf(),
            what: "CA certificate",
            reason: e.to_string(),
        })?;
        Ok(Self { issuer, cert_pem })
    }

    /// Issues the certificate of appliance `id` for the key of a checked CSR. Subject,
    /// extensions and lifetime are the CA's: CN and DNS SAN = the appliance id, CA flag off,
    /// digitalSignature, serverAuth + clientAuth, a random serial.
    ///
    /// # Errors
    /// [`CaError::Sign`] when signing fails.
    pub fn issue(
        &self,
        csr: &CheckedCsr,
        appliance_id: &str,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert, CaError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, appliance_id);
        dn.push(DnType::OrganizationName, "Outpost appliance");
        p.distinguished_name = dn;
        p.subject_alt_names = vec![san_for(appliance_id)?];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        let serial_hex = hex::encode(serial.as_ref());
        p.serial_number = Some(serial);
        set_validity(&mut p, now, lifetime);
        let (nb, na) = (p.not_before.unix_timestamp(), p.not_after.unix_timestamp());
        let cert = p
            .signed_by(&csr.params.public_key, &self.issuer)
            .map_err(|source| CaError::Sign {
                op: "sign an appliance certificate",
                source,
            })?;
        Ok(IssuedCert {
            pem: cert.pem(),
            serial_hex,
            fingerprint: fingerprint(cert.der()),
            not_before: nb,
            not_after: na,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest};

    fn csr_for(key: &KeyPair, tweak: impl FnOnce(&mut CertificateParams)) -> String {
        let mut p = CertificateParams::new(vec!["box.example".to_string()]).unwrap();
        tweak(&mut p);
        p.serialize_request(key).unwrap().pem().unwrap()
    }

    fn loaded_ca(dir: &Path) -> Ca {
        let b = create_ca(
            &["127.0.0.1".into(), "gw.example".into()],
            SystemTime::now(),
        )
        .unwrap();
        write_file(&dir.join("ca.pem"), b.ca_cert_pem.as_bytes(), false).unwrap();
        write_file(&dir.join("ca-key.pem"), b.ca_key_pem.as_bytes(), true).unwrap();
        Ca::load(&dir.join("ca.pem"), &dir.join("ca-key.pem")).unwrap()
    }

    #[test]
    fn issued_certificate_content_is_decided_by_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = loaded_ca(dir.path());
        let key = KeyPair::generate().unwrap();
        // The CSR asks to be a CA: the CA must ignore that.
        let pem = csr_for(&key, |p| {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
        });
        let csr = check_csr(&pem).unwrap();
        let lifetime = Duration::from_secs(30 * 86_400);
        let issued = ca
            .issue(&csr, "ap-0123456789ab", lifetime, SystemTime::now())
            .unwrap();
        let der = pem_der(&issued.pem, "CERTIFICATE").unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && eku.server_auth);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(cn, "ap-0123456789ab");
        let span = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(
            span,
            i64::try_from((lifetime + CLOCK_SKEW).as_secs()).unwrap()
        );
        assert_eq!(issued.fingerprint, fingerprint(&der));
        assert_eq!(cert.public_key().raw, {
            let d = pem_der(&pem, "CERTIFICATE REQUEST").unwrap();
            let (_, r) = X509CertificationRequest::from_der(&d).unwrap();
            r.certification_request_info.subject_pki.raw.to_vec()
        });
    }

    #[test]
    fn serials_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let ca = loaded_ca(dir.path());
        let key = KeyPair::generate().unwrap();
        let csr = check_csr(&csr_for(&key, |_| {})).unwrap();
        let a = ca
            .issue(&csr, "ap-a", Duration::from_secs(60), SystemTime::now())
            .unwrap();
        let b = ca
            .issue(&csr, "ap-b", Duration::from_secs(60), SystemTime::now())
            .unwrap();
        assert_ne!(a.serial_hex, b.serial_hex);
        assert_eq!(a.serial_hex.len(), 32);
    }

    #[test]
    fn garbage_and_tampered_csrs_are_invalid() {
        assert!(matches!(check_csr("hello"), Err(CsrError::Invalid(_))));
        let key = KeyPair::generate().unwrap();
        let pem = csr_for(&key, |_| {});
        let mut der = pem_der(&pem, "CERTIFICATE REQUEST").unwrap();
        let n = der.len();
        der[n - 5] ^= 0x55; // inside the signature
        let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
        let err = check_csr(&tampered).unwrap_err();
        assert!(matches!(err, CsrError::Invalid(_)), "{err}");
    }

    #[test]
    fn ca_key_is_written_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let _ = loaded_ca(dir.path());
        let mode = std::fs::metadata(dir.path().join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(dir.path().join("ca.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn bad_sans_are_named() {
        let err = create_ca(&["not a name!".into()], SystemTime::now())
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a name!"), "{err}");
        assert!(create_ca(&[], SystemTime::now()).is_err());
    }
}
