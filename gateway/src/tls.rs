//! TLS on the one port: TLS 1.3 only, ALPN `h2` and `http/1.1`, client certificates
//! verified against the Outpost CA when presented (they are optional at the handshake so
//! that enrolment works without one; every other route demands one in [`crate::api`]).
//!
//! A certificate from another CA, an expired one, or TLS 1.2 and lower fail the handshake.
//! The verified leaf certificate is attached to every request of the connection as a
//! [`PeerCert`] extension, which is how handlers learn who is calling.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::GatewayConfig;
use crate::error::ServeError;

/// The verified client certificate of a connection, if the client presented one.
#[derive(Debug, Clone, Default)]
pub struct PeerCert(pub Option<Arc<CertificateDer<'static>>>);

/// The single crypto provider of the workspace (ring).
#[must_use]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServeError> {
    let f = std::fs::File::open(path)
        .map_err(|e| ServeError::Tls(format!("cannot read {}: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Tls(format!("{}: bad PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ServeError> {
    let f = std::fs::File::open(path)
        .map_err(|e| ServeError::Tls(format!("cannot read {}: {e}", path.display())))?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|e| ServeError::Tls(format!("{}: bad PEM: {e}", path.display())))?
        .ok_or_else(|| ServeError::Tls(format!("{} holds no private key", path.display())))
}

/// Builds the server TLS configuration from the files named in the config.
///
/// # Errors
/// [`ServeError::Tls`] naming the file that cannot be used.
pub fn server_config(cfg: &GatewayConfig) -> Result<Arc<ServerConfig>, ServeError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for c in read_certs(&cfg.ca_cert)? {
        roots
            .add(c)
            .map_err(|e| ServeError::Tls(format!("{}: {e}", cfg.ca_cert.display())))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| ServeError::Tls(format!("client verifier: {e}")))?;
    let mut sc = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(&cfg.server_cert)?, read_key(&cfg.server_key)?)
        .map_err(|e| ServeError::Tls(format!("{}: {e}", cfg.server_cert.display())))?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(sc))
}
