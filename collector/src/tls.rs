//! TLS towards the gateway: TLS 1.3 only, ring as the one crypto provider, the configured
//! Outpost CA as the only trust anchor, ALPN `h2` and `http/1.1`.
//!
//! Two clients come out of here: one without a client certificate for enrolment, one with
//! `cert.pem` + `key.pem` for everything else (mTLS).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Time allowed to open a TCP connection and finish the handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for an ordinary request, answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for one ingest request (connect, TLS, upload, answer). Shorter than
/// [`REQUEST_TIMEOUT`] so a gateway that hangs (accepts but never answers) is failed over
/// from quickly; a batch that timed out is resent with the same sequence and deduplicated.
pub const INGEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How much longer than its wait a long-poll request may take.
pub const LONG_POLL_GRACE: Duration = Duration::from_secs(30);

/// Building a TLS or HTTP client failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A CA certificate could not be added as a root.
    #[error("the CA certificate cannot be used as a trust anchor: {0}")]
    AddRoot(rustls::Error),
    /// The protocol versions or client certificate were refused by rustls.
    #[error("failed to build the TLS configuration: {0}")]
    Configure(rustls::Error),
    /// reqwest refused the configuration.
    #[error("failed to build the HTTPS client: {0}")]
    BuildClient(reqwest::Error),
}

/// The client certificate chain and its private key.
pub struct ClientAuth {
    /// Leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The key of the leaf.
    pub key: PrivateKeyDer<'static>,
}

/// Builds the rustls client configuration: TLS 1.3, roots = `ca_certs` only, and a client
/// certificate when `auth` is given.
///
/// # Errors
/// [`TlsError`] when a root or the client certificate is refused.
pub fn client_config(
    ca_certs: &[CertificateDer<'static>],
    auth: Option<ClientAuth>,
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in ca_certs {
        roots.add(c.clone()).map_err(TlsError::AddRoot)?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Configure)?
            .with_root_certificates(roots);
    let mut cfg = match auth {
        Some(a) => builder
            .with_client_auth_cert(a.certs, a.key)
            .map_err(TlsError::Configure)?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Wraps a TLS configuration in a reqwest client with the collector's timeouts. Proxies
/// from the environment are ignored: the appliance talks to its gateways directly.
///
/// # Errors
/// [`TlsError::BuildClient`].
pub fn http_client(cfg: ClientConfig) -> Result<reqwest::Client, TlsError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .no_proxy()
        .user_agent(concat!("outpost-collector/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(TlsError::BuildClient)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn config_offers_h2_and_http1() {
        let cfg = client_config(&[ca()], None).unwrap();
        assert_eq!(
            cfg.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(http_client(cfg).is_ok());
    }

    #[test]
    fn garbage_root_is_refused() {
        let e = client_config(&[CertificateDer::from(vec![1, 2, 3])], None);
        assert!(e.is_err());
    }
}
