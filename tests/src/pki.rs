//! Keys, CSRs and certificates for tests: an appliance key (ECDSA P-256), its CSR, a CSR with a
//! broken signature, a throwaway CA that the gateway does not trust, and certificates signed
//! with the gateway's own CA key for keys the gateway never enrolled.

use std::path::Path;

use anyhow::{bail, Context};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

/// A fresh ECDSA P-256 key, as the collector makes on first start.
///
/// # Errors
/// When key generation fails.
pub fn new_key() -> anyhow::Result<KeyPair> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("failed to generate a P-256 key")
}

fn subject(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// A plain CSR (PEM) for `key` with common name `cn`.
///
/// # Errors
/// When rcgen cannot serialize it.
pub fn csr_pem(key: &KeyPair, cn: &str) -> anyhow::Result<String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(cn);
    csr_pem_with(&params, key)
}

/// A CSR (PEM) made from arbitrary `params`, e.g. one that asks for `CA:TRUE`.
///
/// # Errors
/// When rcgen cannot serialize it.
pub fn csr_pem_with(params: &CertificateParams, key: &KeyPair) -> anyhow::Result<String> {
    params
        .serialize_request(key)
        .context("failed to make a CSR")?
        .pem()
        .context("failed to PEM-encode a CSR")
}

/// The same CSR with the last byte of its DER (inside the signature) flipped, re-encoded as
/// PEM: still well-formed, but the signature no longer verifies.
///
/// # Errors
/// When `pem_text` is not a PEM CSR.
pub fn corrupt_csr_signature(pem_text: &str) -> anyhow::Result<String> {
    let p = pem::parse(pem_text).context("not PEM")?;
    if p.tag() != "CERTIFICATE REQUEST" {
        bail!("PEM tag is {:?}, not CERTIFICATE REQUEST", p.tag());
    }
    let mut der = p.contents().to_vec();
    let last = der.last_mut().context("empty CSR")?;
    *last ^= 0x01;
    Ok(pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der)))
}

/// Parameters of an appliance-like leaf certificate.
fn leaf_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(cn);
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
}

/// Signs a leaf certificate for `key` with the CA in PEM form; returns the certificate PEM.
///
/// # Errors
/// When the CA certificate or key cannot be used.
pub fn sign_leaf(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    key: &KeyPair,
    cn: &str,
) -> anyhow::Result<String> {
    let ca_key = KeyPair::from_pem(ca_key_pem).context("CA key is not a PKCS#8 PEM key")?;
    let issuer =
        Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).context("CA certificate is unusable")?;
    let cert = leaf_params(cn)
        .signed_by(key, &issuer)
        .context("failed to sign a leaf certificate")?;
    Ok(cert.pem())
}

/// Signs a leaf certificate for `key` with the gateway's own CA (`DIR/ca.pem`,
/// `DIR/ca-key.pem`): a certificate the TLS layer accepts for a key the store never saw.
///
/// # Errors
/// When the CA files cannot be read or used.
pub fn sign_with_gateway_ca(gateway_dir: &Path, key: &KeyPair, cn: &str) -> anyhow::Result<String> {
    let read = |name: &str| {
        let p = gateway_dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("failed to read {}", p.display()))
    };
    sign_leaf(&read("ca.pem")?, &read("ca-key.pem")?, key, cn)
}

/// A CA that nobody trusts, to make certificates from "another CA".
pub struct ThrowawayCa {
    cert_pem: String,
    key_pem: String,
}

impl ThrowawayCa {
    /// A new self-signed CA named `name`.
    ///
    /// # Errors
    /// When generation fails.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(name);
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params
            .self_signed(&key)
            .context("failed to self-sign the throwaway CA")?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Its certificate (PEM).
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs a leaf certificate for `key`; returns the PEM.
    ///
    /// # Errors
    /// When signing fails.
    pub fn sign(&self, key: &KeyPair, cn: &str) -> anyhow::Result<String> {
        sign_leaf(&self.cert_pem, &self.key_pem, key, cn)
    }
}

impl std::fmt::Debug for ThrowawayCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrowawayCa").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupted_csr_differs_only_in_its_last_byte() {
        let key = new_key().unwrap();
        let good = csr_pem(&key, "x").unwrap();
        let bad = corrupt_csr_signature(&good).unwrap();
        let a = pem::parse(&good).unwrap();
        let b = pem::parse(&bad).unwrap();
        assert_eq!(a.contents().len(), b.contents().len());
        let diffs = a
            .contents()
            .iter()
            .zip(b.contents())
            .filter(|(x, y)| x != y)
            .count();
        assert_eq!(diffs, 1);
        assert_ne!(a.contents().last(), b.contents().last());
    }

    #[test]
    fn throwaway_ca_signs_a_leaf_that_names_it_as_issuer() {
        let ca = ThrowawayCa::new("Other CA").unwrap();
        let key = new_key().unwrap();
        let leaf = ca.sign(&key, "leaf").unwrap();
        let der = pem::parse(&leaf).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.contents()).unwrap();
        assert!(cert.issuer().to_string().contains("Other CA"));
        assert!(!cert.is_ca());
    }
}
