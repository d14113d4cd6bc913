//! Enrolment: from a fresh box to a certificate issued by the Outpost CA.
//!
//! The state directory says where we are, so a restart never enrols twice:
//!
//! | present | step |
//! |---|---|
//! | `cert.pem` | enrolled: nothing to do |
//! | `enrollment.json` | poll `GET /v1/enroll/{id}` until approved |
//! | neither | `POST /v1/enroll` with a CSR, save the id, then poll |
//!
//! Both calls carry the bootstrap token as `Authorization: Bearer` over TLS 1.3 that trusts
//! only the configured CA, without a client certificate. The issued certificate is stored
//! only after checking that it carries our public key. A CA certificate returned by the
//! gateway is never trusted in place of the configured one.
//!
//! A 4xx answer to the first submission (bad token, used-up token, refused CSR) is fatal;
//! once an id has been saved, errors are logged and retried. Network errors and 5xx answers
//! move on to the next gateway and back off with full jitter.

use std::time::{Duration, Instant};

use outpost_proto::{paths, ApplianceState, EnrollRequest, EnrollResponse};
use rcgen::KeyPair;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::config::{Config, ConfigError};
use crate::failover::{AfterFailure, GatewayRing};
use crate::http::{error_chain, url, ErrorReply};
use crate::identity::{self, IdentityError};
use crate::shutdown::Shutdown;
use crate::state::{self, EnrollmentRecord, StateError, KEY_FILE};
use crate::tls::{self, TlsError};

/// Shortest wait between two polls while pending.
pub const MIN_POLL_DELAY: Duration = Duration::from_secs(1);
/// Longest wait between two polls while pending.
pub const MAX_POLL_DELAY: Duration = Duration::from_secs(30);
/// How often the "approve it with" hint is repeated at INFO while pending.
pub const PENDING_REMINDER: Duration = Duration::from_secs(600);

/// Why enrolment stopped for good.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The config lacks what enrolment needs (the bootstrap token).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Key, CSR or certificate handling failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// `enrollment.json` could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The TLS client could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The gateway refused the enrolment request for good.
    #[error("gateway {gateway} refused the enrolment: {reply}")]
    Refused {
        /// The gateway that answered.
        gateway: String,
        /// Its answer.
        reply: ErrorReply,
    },
}

/// Where enrolment stands, from the files in the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollStep {
    /// `cert.pem` exists.
    Enrolled,
    /// `enrollment.json` exists: poll this id.
    Poll {
        /// Appliance id.
        id: String,
    },
    /// Nothing yet: submit a CSR.
    Submit,
}

/// Decides the next step; pure.
#[must_use]
pub fn decide_step(has_certificate: bool, record: Option<EnrollmentRecord>) -> EnrollStep {
    match (has_certificate, record) {
        (true, _) => EnrollStep::Enrolled,
        (false, Some(r)) => EnrollStep::Poll { id: r.id },
        (false, None) => EnrollStep::Submit,
    }
}

/// How enrolment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollOutcome {
    /// `cert.pem` is in place.
    Enrolled,
    /// A stop was requested first.
    Stopped,
}

/// The delay the gateway asks for while pending, clamped to 1–30 s.
#[must_use]
pub fn poll_delay(retry_after_secs: u64) -> Duration {
    Duration::from_secs(retry_after_secs).clamp(MIN_POLL_DELAY, MAX_POLL_DELAY)
}

/// One exchange with a gateway.
enum Attempt {
    /// A 2xx answer.
    Answer(EnrollResponse),
    /// A 4xx answer that will not change by retrying.
    Rejected(ErrorReply),
    /// Network error, 5xx, 408/429 or an unreadable answer: try elsewhere, later.
    Unreachable(String),
}

/// Makes sure the appliance holds a certificate, enrolling when needed.
///
/// # Errors
/// [`EnrollError`] when enrolment cannot succeed (no token, refused, bad certificate, I/O).
pub async fn ensure_enrolled(
    config: &Config,
    key: &KeyPair,
    shutdown: &mut Shutdown,
) -> Result<EnrollOutcome, EnrollError> {
    let dir = &config.state_dir;
    let record = EnrollmentRecord::load(dir)?;
    let mut id = match decide_step(state::has_certificate(dir), record) {
        EnrollStep::Enrolled => return Ok(EnrollOutcome::Enrolled),
        EnrollStep::Poll { id } => {
            info!(appliance = %id, "resuming enrolment");
            Some(id)
        }
        EnrollStep::Submit => None,
    };
    let token = config.bootstrap_token()?;
    let client = tls::http_client(tls::client_config(&config.ca_certs, None)?)?;
    let hostname = identity::hostname();
    let request = EnrollRequest {
        csr_pem: identity::make_csr(key, &hostname)?,
        hostname,
    };
    let mut ring = GatewayRing::new(config.gateways.clone(), config.failback_probe);
    let mut backoff = Backoff::new(config.backoff_max);
    // Once an id has been saved, token problems are no longer fatal.
    let mut had_id = id.is_some();
    let mut last_reminder: Option<(String, Instant)> = None;

    loop {
        ring.maybe_fail_back(Instant::now());
        let gateway = ring.current().to_string();
        let exchange = async {
            match &id {
                None => submit(&client, &gateway, &token, &request).await,
                Some(i) => poll(&client, &gateway, &token, i).await,
            }
        };
        let attempt = tokio::select! {
            a = exchange => a,
            () = shutdown.wait() => return Ok(EnrollOutcome::Stopped),
        };
        let delay = match attempt {
            Attempt::Answer(resp) => {
                ring.on_success(Instant::now());
                backoff.reset();
                if id.as_deref() != Some(resp.id.as_str()) {
                    EnrollmentRecord {
                        id: resp.id.clone(),
                    }
                    .write(dir)?;
                    info!(appliance = %resp.id, gateway = %gateway, "enrolment accepted by the gateway");
                    id = Some(resp.id.clone());
                    had_id = true;
                }
                match resp.state {
                    ApplianceState::Approved => {
                        if let Some(pem) = resp.certificate_pem.as_deref() {
                            install_certificate(config, key, &gateway, &resp, pem)?;
                            return Ok(EnrollOutcome::Enrolled);
                        }
                        warn!(appliance = %resp.id, gateway = %gateway, "approved but the answer carries no certificate; asking again");
                        backoff.next_random_delay()
                    }
                    ApplianceState::Pending => {
                        let due = match &last_reminder {
                            Some((rid, at)) => rid != &resp.id || at.elapsed() >= PENDING_REMINDER,
                            None => true,
                        };
                        if due {
                            info!(
                                "enrolment pending: appliance id {id}; approve it with: \
                                 outpost-gateway appliances approve {id}",
                                id = resp.id
                            );
                            last_reminder = Some((resp.id.clone(), Instant::now()));
                        } else {
                            debug!(appliance = %resp.id, "enrolment still pending");
                        }
                        poll_delay(resp.retry_after_secs)
                    }
                    ApplianceState::Revoked => {
                        error!(appliance = %resp.id, "the gateway says this appliance is revoked; waiting for an operator");
                        MAX_POLL_DELAY
                    }
                }
            }
            Attempt::Rejected(reply) => {
                ring.on_success(Instant::now());
                if reply.status == 404 && id.is_some() {
                    warn!(
                        appliance = id.as_deref().unwrap_or_default(),
                        gateway = %gateway,
                        "{reply}; submitting the CSR again"
                    );
                    id = None;
                    backoff.next_random_delay()
                } else if had_id {
                    error!(
                        appliance = id.as_deref().unwrap_or_default(),
                        gateway = %gateway,
                        "enrolment refused: {}; retrying",
                        reply.message
                    );
                    backoff.next_random_delay()
                } else {
                    return Err(EnrollError::Refused { gateway, reply });
                }
            }
            Attempt::Unreachable(why) => {
                warn!(gateway = %gateway, "enrolment request failed: {why}");
                match ring.on_failure() {
                    AfterFailure::TryNext => Duration::ZERO,
                    AfterFailure::BackOff => backoff.next_random_delay(),
                }
            }
        };
        if shutdown.sleep(delay).await {
            return Ok(EnrollOutcome::Stopped);
        }
    }
}

/// Checks and stores an issued certificate.
fn install_certificate(
    config: &Config,
    key: &KeyPair,
    gateway: &str,
    resp: &EnrollResponse,
    pem: &str,
) -> Result<(), EnrollError> {
    let origin = format!("certificate from gateway {gateway}");
    let info =
        identity::check_certificate_key(pem, key, &config.state_dir.join(KEY_FILE), &origin)?;
    if let Some(ca_pem) = resp.ca_pem.as_deref() {
        let same = identity::certificate_der(ca_pem, "gateway CA")
            .is_ok_and(|der| config.ca_certs.iter().any(|c| c == &der));
        if !same {
            warn!(
                gateway = %gateway,
                ca_cert = %config.ca_cert_path.display(),
                "the gateway sent a CA certificate that differs from ca_cert; it is ignored"
            );
        }
    }
    identity::store_certificate(&config.state_dir, pem)?;
    let until = u64::try_from(info.not_after)
        .ok()
        .map(|s| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s))
                .to_string()
        })
        .unwrap_or_default();
    info!(appliance = %resp.id, not_after = %until, "enrolment approved; certificate stored");
    Ok(())
}

async fn submit(
    client: &reqwest::Client,
    gateway: &str,
    token: &str,
    request: &EnrollRequest,
) -> Attempt {
    let resp = client
        .post(url(gateway, paths::ENROLL))
        .bearer_auth(token)
        .json(request)
        .send()
        .await;
    read_answer(resp).await
}

async fn poll(client: &reqwest::Client, gateway: &str, token: &str, id: &str) -> Attempt {
    let resp = client
        .get(url(gateway, &paths::enroll_status(id)))
        .bearer_auth(token)
        .send()
        .await;
    read_answer(resp).await
}

async fn read_answer(resp: Result<reqwest::Response, reqwest::Error>) -> Attempt {
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return Attempt::Unreachable(error_chain(&e)),
    };
    let status = resp.status();
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return Attempt::Unreachable(error_chain(&e)),
    };
    if status.is_success() {
        return match serde_json::from_slice::<EnrollResponse>(&body) {
            Ok(r) => Attempt::Answer(r),
            Err(e) => Attempt::Unreachable(format!("unreadable enrolment answer: {e}")),
        };
    }
    let reply = ErrorReply::parse(status.as_u16(), &body);
    if reply.is_client_error() {
        Attempt::Rejected(reply)
    } else {
        Attempt::Unreachable(reply.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_wins_over_everything() {
        let rec = Some(EnrollmentRecord { id: "ap-1".into() });
        assert_eq!(decide_step(true, rec.clone()), EnrollStep::Enrolled);
        assert_eq!(
            decide_step(false, rec),
            EnrollStep::Poll { id: "ap-1".into() }
        );
        assert_eq!(decide_step(false, None), EnrollStep::Submit);
    }

    #[test]
    fn poll_delay_honours_the_gateway_within_bounds() {
        assert_eq!(poll_delay(0), MIN_POLL_DELAY);
        assert_eq!(poll_delay(3), Duration::from_secs(3));
        assert_eq!(poll_delay(3600), MAX_POLL_DELAY);
    }
}
