//! The appliance side of the wire, for tests and load generation: rustls client
//! configurations (roots = the Outpost CA only, optional client identity, chosen protocol
//! versions) and [`ApplianceClient`], which enrols with a key of its own and then speaks mTLS.

use std::io::BufReader;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use outpost_proto::{paths, EnrollRequest, EnrollResponse, IngestAck, IngestBatch};
use rcgen::KeyPair;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use serde_json::Value;

/// Bound on every HTTP request of the test clients (longer than any long-poll they make).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// TLS 1.3 only, as the gateway requires.
pub const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
/// TLS 1.2 only, to prove the gateway refuses it.
pub const TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

fn parse_certs(pem_text: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem_text.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .context("bad certificate PEM")?;
    if certs.is_empty() {
        bail!("PEM holds no certificate");
    }
    Ok(certs)
}

fn parse_key(pem_text: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut BufReader::new(pem_text.as_bytes()))
        .context("bad private key PEM")?
        .ok_or_else(|| anyhow!("PEM holds no private key"))
}

/// A rustls client configuration with the ring provider, trusting only `ca_pem`, offering
/// `versions`, and presenting `identity` (certificate PEM, key PEM) when given.
/// ALPN offers `h2` and `http/1.1`.
///
/// # Errors
/// When the PEM inputs are unusable or the versions are not supported.
pub fn tls_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    versions: &[&'static SupportedProtocolVersion],
) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in parse_certs(ca_pem).context("CA certificate")? {
        roots
            .add(c)
            .context("CA certificate not usable as a root")?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .context("protocol versions")?
            .with_root_certificates(roots);
    let mut cfg = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(parse_certs(cert)?, parse_key(key)?)
            .context("client identity")?,
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// An HTTP client on a preconfigured rustls configuration, no proxy, bounded requests.
///
/// # Errors
/// When reqwest refuses the configuration.
pub fn http_client(cfg: ClientConfig) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("failed to build the HTTP client")
}

/// An HTTP answer: status and body.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// `ETag` header, if any.
    pub etag: Option<String>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The body as JSON (`Value::Null` when it is not JSON).
    #[must_use]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as text.
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` code of an error body.
    #[must_use]
    pub fn error_code(&self) -> Option<String> {
        self.json()["error"].as_str().map(str::to_string)
    }

    /// The body as an [`IngestAck`] if the status is 200.
    ///
    /// # Errors
    /// When the status is not 200 or the body is not an ack.
    pub fn ack(&self) -> anyhow::Result<IngestAck> {
        if self.status != 200 {
            bail!("ingest answered {}: {}", self.status, self.text());
        }
        serde_json::from_slice(&self.body)
            .with_context(|| format!("ingest ack is not an IngestAck: {}", self.text()))
    }

    /// One line for assertion messages.
    #[must_use]
    pub fn describe(&self) -> String {
        format!("{} {}", self.status, self.text())
    }
}

async fn into_reply(resp: reqwest::Response) -> anyhow::Result<HttpReply> {
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .bytes()
        .await
        .context("failed to read the body")?
        .to_vec();
    Ok(HttpReply { status, etag, body })
}

/// An appliance as the gateway sees it: a key of its own, a bootstrap client (no client
/// certificate) for enrolment, and an mTLS client once it holds a certificate.
pub struct ApplianceClient {
    base: String,
    ca_pem: String,
    versions: Vec<&'static SupportedProtocolVersion>,
    key: KeyPair,
    hostname: String,
    bootstrap: reqwest::Client,
    mtls: Option<reqwest::Client>,
    id: Option<String>,
    cert_pem: Option<String>,
}

impl std::fmt::Debug for ApplianceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplianceClient")
            .field("base", &self.base)
            .field("id", &self.id)
            .field("has_cert", &self.cert_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl ApplianceClient {
    /// A new appliance with a fresh P-256 key, talking to `addr`, trusting `ca_pem`.
    ///
    /// # Errors
    /// When the key or TLS configuration cannot be made.
    pub fn new(addr: SocketAddr, ca_pem: &str) -> anyhow::Result<Self> {
        Self::with_key(addr, ca_pem, crate::pki::new_key()?, TLS13_ONLY)
    }

    /// An appliance with a given key and protocol versions.
    ///
    /// # Errors
    /// When the TLS configuration cannot be made.
    pub fn with_key(
        addr: SocketAddr,
        ca_pem: &str,
        key: KeyPair,
        versions: &[&'static SupportedProtocolVersion],
    ) -> anyhow::Result<Self> {
        let bootstrap = http_client(tls_config(ca_pem, None, versions)?)?;
        let hostname = format!("test-{}", &crate::now_ms().to_string());
        Ok(Self {
            base: format!("https://{addr}"),
            ca_pem: ca_pem.to_string(),
            versions: versions.to_vec(),
            key,
            hostname,
            bootstrap,
            mtls: None,
            id: None,
            cert_pem: None,
        })
    }

    /// An appliance presenting an arbitrary certificate for `key` (e.g. from another CA, or
    /// signed by the real CA for a key the store does not know).
    ///
    /// # Errors
    /// When the TLS configuration cannot be made.
    pub fn with_identity(
        addr: SocketAddr,
        ca_pem: &str,
        key: KeyPair,
        cert_pem: &str,
        versions: &[&'static SupportedProtocolVersion],
    ) -> anyhow::Result<Self> {
        let mut c = Self::with_key(addr, ca_pem, key, versions)?;
        c.use_certificate(cert_pem)?;
        Ok(c)
    }

    /// Points the client at another address (e.g. the gateway after a restart).
    ///
    /// # Errors
    /// When the TLS clients cannot be rebuilt.
    pub fn set_addr(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        self.base = format!("https://{addr}");
        // Fresh clients: no pooled connection to the old address survives.
        self.bootstrap = http_client(tls_config(&self.ca_pem, None, &self.versions)?)?;
        if let Some(cert) = self.cert_pem.clone() {
            self.use_certificate(&cert)?;
        }
        Ok(())
    }

    /// Presents `cert_pem` (with this client's key) on the mTLS routes from now on.
    ///
    /// # Errors
    /// When the TLS configuration cannot be made.
    pub fn use_certificate(&mut self, cert_pem: &str) -> anyhow::Result<()> {
        let key_pem = self.key.serialize_pem();
        let cfg = tls_config(&self.ca_pem, Some((cert_pem, &key_pem)), &self.versions)?;
        self.mtls = Some(http_client(cfg)?);
        self.cert_pem = Some(cert_pem.to_string());
        Ok(())
    }

    /// The key.
    #[must_use]
    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// The host name sent at enrolment.
    #[must_use]
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The id the gateway gave, once enrolled.
    #[must_use]
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The issued certificate (PEM), once fetched.
    #[must_use]
    pub fn cert_pem(&self) -> Option<&str> {
        self.cert_pem.as_deref()
    }

    /// `https://ADDR{path}`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A CSR for this client's key.
    ///
    /// # Errors
    /// When rcgen fails.
    pub fn csr_pem(&self) -> anyhow::Result<String> {
        crate::pki::csr_pem(&self.key, &self.hostname)
    }

    /// `POST /v1/enroll` with this client's CSR and `Authorization: Bearer TOKEN`.
    ///
    /// # Errors
    /// When the request fails below HTTP.
    pub async fn enroll(&self, token: &str) -> anyhow::Result<HttpReply> {
        self.enroll_with_csr(Some(token), &self.csr_pem()?).await
    }

    /// `POST /v1/enroll` with any CSR text and an optional token.
    ///
    /// # Errors
    /// When the request fails below HTTP.
    pub async fn enroll_with_csr(
        &self,
        token: Option<&str>,
        csr_pem: &str,
    ) -> anyhow::Result<HttpReply> {
        let body = EnrollRequest {
            csr_pem: csr_pem.to_string(),
            hostname: self.hostname.clone(),
        };
        let mut req = self.bootstrap.post(self.url(paths::ENROLL)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        into_reply(req.send().await.context("POST /v1/enroll failed")?).await
    }

    /// Enrols and expects success; remembers and returns the answer.
    ///
    /// # Errors
    /// When the gateway does not answer 2xx with an [`EnrollResponse`].
    pub async fn enroll_ok(&mut self, token: &str) -> anyhow::Result<EnrollResponse> {
        let csr = self.csr_pem()?;
        self.enroll_ok_with_csr(token, &csr).await
    }

    /// Enrols with a CSR of the caller's making (for this client's key) and expects success;
    /// remembers and returns the answer.
    ///
    /// # Errors
    /// When the gateway does not answer 2xx with an [`EnrollResponse`].
    pub async fn enroll_ok_with_csr(
        &mut self,
        token: &str,
        csr_pem: &str,
    ) -> anyhow::Result<EnrollResponse> {
        let r = self.enroll_with_csr(Some(token), csr_pem).await?;
        if !(200..300).contains(&r.status) {
            bail!("enrolment refused: {}", r.describe());
        }
        let resp: EnrollResponse = serde_json::from_slice(&r.body)
            .with_context(|| format!("enrol answer is not an EnrollResponse: {}", r.text()))?;
        self.id = Some(resp.id.clone());
        Ok(resp)
    }

    /// `GET /v1/enroll/{id}` with `Authorization: Bearer TOKEN`.
    ///
    /// # Errors
    /// When the request fails below HTTP.
    pub async fn enrollment_status(&self, id: &str, token: &str) -> anyhow::Result<HttpReply> {
        let req = self
            .bootstrap
            .get(self.url(&paths::enroll_status(id)))
            .bearer_auth(token);
        into_reply(req.send().await.context("GET /v1/enroll/{id} failed")?).await
    }

    /// Polls `GET /v1/enroll/{id}` until it carries a certificate (bounded by `timeout`),
    /// then uses it for mTLS. Returns the certificate PEM.
    ///
    /// # Errors
    /// When not enrolled yet, on timeout, or on an error answer.
    pub async fn wait_certificate(
        &mut self,
        token: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let id = self
            .id
            .clone()
            .ok_or_else(|| anyhow!("not enrolled: call enroll_ok first"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.enrollment_status(&id, token).await?;
            if !(200..300).contains(&r.status) {
                bail!("GET /v1/enroll/{id} answered {}", r.describe());
            }
            let resp: EnrollResponse = serde_json::from_slice(&r.body)
                .with_context(|| format!("not an EnrollResponse: {}", r.text()))?;
            if let Some(cert) = resp.certificate_pem {
                self.use_certificate(&cert)?;
                return Ok(cert);
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for the certificate of {id} (state {})",
                    resp.state
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Enrols with `token` (which should auto-approve or be approved meanwhile) and fetches
    /// the certificate. Returns the appliance id.
    ///
    /// # Errors
    /// As [`ApplianceClient::enroll_ok`] and [`ApplianceClient::wait_certificate`].
    pub async fn enroll_and_fetch(
        &mut self,
        token: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let resp = self.enroll_ok(token).await?;
        self.wait_certificate(token, timeout).await?;
        Ok(resp.id)
    }

    fn mtls(&self) -> anyhow::Result<&reqwest::Client> {
        self.mtls
            .as_ref()
            .ok_or_else(|| anyhow!("no certificate yet: enrol and fetch one first"))
    }

    /// `POST /v1/ingest` with raw body bytes and an optional `Content-Encoding`, over mTLS.
    ///
    /// # Errors
    /// When the request fails below HTTP (e.g. the handshake is refused).
    pub async fn ingest_raw(
        &self,
        body: Vec<u8>,
        content_encoding: Option<&str>,
    ) -> anyhow::Result<HttpReply> {
        let mut req = self
            .mtls()?
            .post(self.url(paths::INGEST))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(enc) = content_encoding {
            req = req.header(reqwest::header::CONTENT_ENCODING, enc);
        }
        into_reply(req.send().await.context("POST /v1/ingest failed")?).await
    }

    /// `POST /v1/ingest` with `batch` as zstd-compressed JSON.
    ///
    /// # Errors
    /// As [`ApplianceClient::ingest_raw`].
    pub async fn ingest(&self, batch: &IngestBatch) -> anyhow::Result<HttpReply> {
        let json = serde_json::to_vec(batch)?;
        let body = zstd::encode_all(&json[..], 3).context("zstd")?;
        self.ingest_raw(body, Some("zstd")).await
    }

    /// `GET path` over mTLS.
    ///
    /// # Errors
    /// When the request fails below HTTP.
    pub async fn get(&self, path: &str) -> anyhow::Result<HttpReply> {
        let resp = self.mtls()?.get(self.url(path)).send().await;
        into_reply(resp.with_context(|| format!("GET {path} failed"))?).await
    }

    /// `GET path` over mTLS with `If-None-Match: etag`.
    ///
    /// # Errors
    /// When the request fails below HTTP.
    pub async fn get_if_none_match(&self, path: &str, etag: &str) -> anyhow::Result<HttpReply> {
        let resp = self
            .mtls()?
            .get(self.url(path))
            .header(reqwest::header::IF_NONE_MATCH, etag)
            .send()
            .await;
        into_reply(resp.with_context(|| format!("GET {path} failed"))?).await
    }

    /// `POST path` with a JSON body over mTLS.
    ///
    /// # Errors
    /// When the request fails below HTTP.
    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<HttpReply> {
        let resp = self.mtls()?.post(self.url(path)).json(body).send().await;
        into_reply(resp.with_context(|| format!("POST {path} failed"))?).await
    }

    /// `GET path` without a client certificate.
    ///
    /// # Errors
    /// When the request fails below HTTP.
    pub async fn get_without_cert(&self, path: &str) -> anyhow::Result<HttpReply> {
        let resp = self.bootstrap.get(self.url(path)).send().await;
        into_reply(resp.with_context(|| format!("GET {path} failed"))?).await
    }

    /// `POST path` with raw bytes and no client certificate.
    ///
    /// # Errors
    /// When the request fails below HTTP.
    pub async fn post_without_cert(
        &self,
        path: &str,
        body: Vec<u8>,
        content_encoding: Option<&str>,
    ) -> anyhow::Result<HttpReply> {
        let mut req = self.bootstrap.post(self.url(path)).body(body);
        if let Some(enc) = content_encoding {
            req = req.header(reqwest::header::CONTENT_ENCODING, enc);
        }
        into_reply(
            req.send()
                .await
                .with_context(|| format!("POST {path} failed"))?,
        )
        .await
    }
}

/// Test batches: one [`outpost_proto::Record::Metrics`] and, when `with_inventory`, an
/// inventory record first. Record ids are `seq * 10 + 1` and `seq * 10 + 2`: the same for a
/// resent seq, distinct across seqs, increasing.
#[must_use]
pub fn sample_batch(seq: u64, with_inventory: bool, hostname: &str) -> IngestBatch {
    use outpost_proto::{Envelope, HostInventory, HostMetrics, Record};
    let now = crate::now_ms();
    let mut records = Vec::new();
    if with_inventory {
        let inventory = HostInventory {
            hostname: hostname.to_string(),
            os_name: "Test OS".into(),
            os_version: "1".into(),
            kernel_version: "0.0.0-test".into(),
            arch: "x86_64".into(),
            cpu_count: 2,
            memory_total_bytes: 1 << 30,
            ..HostInventory::default()
        };
        records.push(Record::Inventory {
            collected_at_ms: now,
            hash: outpost_proto::content_hash(&inventory),
            inventory,
        });
    }
    records.push(Record::Metrics {
        collected_at_ms: now,
        metrics: HostMetrics {
            uptime_secs: 1000 + seq,
            load_avg: [0.5, 0.25, 0.125],
            process_count: 42,
            ..HostMetrics::default()
        },
    });
    let records = records
        .into_iter()
        .zip(1..)
        .map(|(record, i)| Envelope {
            rid: seq * 10 + i,
            record,
        })
        .collect();
    IngestBatch { seq, records }
}
