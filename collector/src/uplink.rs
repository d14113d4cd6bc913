//! The send path: spool → `POST /v1/ingest` → acknowledge → trim.
//!
//! The sender takes the batch the spool hands out (the in-flight one, or a new one of up to
//! 500 records / 1 MiB written down in the ledger first, so a resend after a crash carries
//! the same sequence and records) and posts it over mTLS, so collection never waits for
//! the network and a backlog drains in few requests. On an acknowledgement the spool writes
//! it down and trims. A `409 sequence_gap` renumbers the in-flight batch to the sequence
//! the gateway expects; a duplicate answer whose highest record id is below the batch's
//! renumbers it after the gateway's last sequence (the state directory is older than the
//! gateway's data). A 403 (revoked or unknown certificate) is logged as an error and
//! retried every interval while records keep being spooled. Network errors and 5xx answers
//! fail over to the next gateway and back off with full jitter; while on a secondary the
//! primary's `/v1/health` is probed every `failback_probe` and the sender fails back as
//! soon as it answers.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outpost_proto::{paths, IngestAck, IngestBatch};
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::failover::{AfterFailure, GatewayRing};
use crate::http::{error_chain, url, ErrorReply};
use crate::shutdown::Shutdown;
use crate::spool::{AckOutcome, BatchLimits, Spool, SpoolError};

/// zstd level for request bodies: cheap on the box, still small on the wire.
const ZSTD_LEVEL: i32 = 3;
/// Bound on a probe of the primary.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// An uplink operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UplinkError {
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// A batch could not be encoded.
    #[error("failed to encode batch {seq}: {problem}")]
    Encode {
        /// Its sequence number.
        seq: u64,
        /// What went wrong.
        problem: String,
    },
    /// A blocking task died.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// zstd-compressed JSON of `batch`: the request body.
///
/// # Errors
/// [`UplinkError::Encode`].
pub fn encode_batch(batch: &IngestBatch) -> Result<Vec<u8>, UplinkError> {
    let err = |e: &dyn std::fmt::Display| UplinkError::Encode {
        seq: batch.seq,
        problem: e.to_string(),
    };
    let json = serde_json::to_vec(batch).map_err(|e| err(&e))?;
    zstd::encode_all(json.as_slice(), ZSTD_LEVEL).map_err(|e| err(&e))
}

/// The uplink's own counters, shared with the collecting task for self-metrics.
#[derive(Debug, Default)]
pub struct UplinkStats {
    inner: Mutex<UplinkSnapshot>,
}

/// A copy of [`UplinkStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UplinkSnapshot {
    /// The gateway that answered last.
    pub current_gateway: String,
    /// New connections after failures and fail-backs since start.
    pub reconnects: u64,
    /// Round trip of the last acknowledged request.
    pub send_latency_ms: Option<u64>,
}

impl UplinkStats {
    fn with<T>(&self, f: impl FnOnce(&mut UplinkSnapshot) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A copy of the counters.
    #[must_use]
    pub fn snapshot(&self) -> UplinkSnapshot {
        self.with(|s| s.clone())
    }

    fn answered(&self, gateway: &str) {
        self.with(|s| {
            if s.current_gateway != gateway {
                s.current_gateway = gateway.to_string();
            }
        });
    }

    fn reconnect(&self) {
        self.with(|s| s.reconnects += 1);
    }

    fn latency(&self, d: Duration) {
        self.with(|s| s.send_latency_ms = Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
    }
}

/// The answer to one `POST /v1/ingest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendResult {
    /// 200 with an acknowledgement.
    Acked(IngestAck),
    /// 409 `sequence_gap`: the gateway expects this sequence next.
    Gap {
        /// The sequence the gateway expects.
        expected: u64,
        /// The full answer.
        reply: ErrorReply,
    },
    /// 403: the certificate is revoked, pending or unknown.
    Forbidden(ErrorReply),
    /// Another 4xx: the gateway refuses this batch.
    Rejected(ErrorReply),
    /// 503 with `Retry-After`: the gateway is alive but shedding load (or its store is
    /// down for a moment). Not a failure of the connection: no fail-over, no reconnect.
    Busy {
        /// What `Retry-After` asked for (capped at [`MAX_RETRY_AFTER`]).
        retry_after: Duration,
        /// The full answer.
        reply: ErrorReply,
    },
    /// Network error, timeout, 5xx or an unreadable answer.
    Unreachable(String),
}

/// The longest `Retry-After` the collector honours; a larger value is read as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The edge the sender talks through: the real one is HTTPS, tests use a fake.
pub trait IngestTransport: Send + Sync + 'static {
    /// Posts one batch body (zstd JSON) to `gateway`.
    fn send(&self, gateway: &str, body: Vec<u8>) -> impl Future<Output = SendResult> + Send;
    /// Whether `gateway` answers its health route now.
    fn probe(&self, gateway: &str) -> impl Future<Output = bool> + Send;
}

/// `POST /v1/ingest` over the mTLS client.
#[derive(Debug, Clone)]
pub struct HttpsIngest {
    client: reqwest::Client,
}

impl HttpsIngest {
    /// Wraps an mTLS client.
    #[must_use]
    pub fn new(client: reqwest::Client) -> Self {
        Self { client }
    }
}

impl IngestTransport for HttpsIngest {
    async fn send(&self, gateway: &str, body: Vec<u8>) -> SendResult {
        let resp = self
            .client
            .post(url(gateway, paths::INGEST))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::CONTENT_ENCODING, "zstd")
            .timeout(crate::tls::INGEST_TIMEOUT)
            .body(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return SendResult::Unreachable(error_chain(&e)),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return SendResult::Unreachable(error_chain(&e)),
        };
        classify_ingest_reply(status, retry_after, &bytes)
    }

    async fn probe(&self, gateway: &str) -> bool {
        self.client
            .get(url(gateway, paths::HEALTH))
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

/// A `Retry-After` in seconds (the HTTP-date form is not used by the gateway and is
/// ignored), capped at [`MAX_RETRY_AFTER`].
#[must_use]
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

/// Reads an ingest answer with its `Retry-After`: a 503 that carries one is
/// [`SendResult::Busy`], everything else as [`classify_ingest_answer`].
#[must_use]
pub fn classify_ingest_reply(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> SendResult {
    match (status, retry_after) {
        (503, Some(retry_after)) => SendResult::Busy {
            retry_after,
            reply: ErrorReply::parse(status, body),
        },
        _ => classify_ingest_answer(status, body),
    }
}

/// Reads an ingest answer.
#[must_use]
pub fn classify_ingest_answer(status: u16, body: &[u8]) -> SendResult {
    if (200..300).contains(&status) {
        return match serde_json::from_slice::<IngestAck>(body) {
            Ok(ack) => SendResult::Acked(ack),
            Err(e) => SendResult::Unreachable(format!("unreadable acknowledgement: {e}")),
        };
    }
    let reply = ErrorReply::parse(status, body);
    match (status, reply.expected_seq) {
        (409, Some(expected)) => SendResult::Gap { expected, reply },
        (403, _) => SendResult::Forbidden(reply),
        _ if reply.is_client_error() => SendResult::Rejected(reply),
        _ => SendResult::Unreachable(reply.to_string()),
    }
}

/// How long to wait after a 503 with `Retry-After`: `retry_after` plus up to half of it,
/// by `rng_value` in `[0, 1)`.
#[must_use]
pub fn busy_wait(retry_after: Duration, rng_value: f64) -> Duration {
    retry_after + retry_after.mul_f64(rng_value.clamp(0.0, 1.0) / 2.0)
}

/// The spool shared by the collecting and the sending task.
pub type SharedSpool = Arc<Mutex<Spool>>;

/// Runs `f` on the spool on the blocking pool (it does file I/O and fsyncs).
///
/// # Errors
/// [`UplinkError::Task`] when the blocking task panicked.
pub async fn with_spool<T, F>(spool: &SharedSpool, f: F) -> Result<T, UplinkError>
where
    T: Send + 'static,
    F: FnOnce(&mut Spool) -> T + Send + 'static,
{
    let s = Arc::clone(spool);
    tokio::task::spawn_blocking(move || {
        let mut guard = s.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    })
    .await
    .map_err(|e| UplinkError::Task(e.to_string()))
}

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Everything the sending task needs.
pub struct Sender<T: IngestTransport> {
    /// The spool shared with the collector.
    pub spool: SharedSpool,
    /// Woken when records are spooled.
    pub wake: Arc<Notify>,
    /// The transport.
    pub transport: T,
    /// Gateways in order.
    pub ring: GatewayRing,
    /// The collection interval (retry period while forbidden).
    pub interval: watch::Receiver<Duration>,
    /// Appliance id, for messages.
    pub appliance_id: String,
    /// Caps on one batch.
    pub limits: BatchLimits,
    /// Counters for self-metrics.
    pub stats: Arc<UplinkStats>,
}

/// What the sender does after one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Send the next batch now.
    Continue,
    /// Nothing to send: wait for the collector.
    Idle,
    /// Wait this long, then try again.
    Wait(Duration),
}

impl<T: IngestTransport> Sender<T> {
    /// Probes the primary when due (fail-back), then sends the batch the spool hands out
    /// once and applies the answer.
    ///
    /// # Errors
    /// [`UplinkError`] when the spool cannot be read or updated.
    pub async fn step(&mut self, backoff: &mut Backoff) -> Result<Next, UplinkError> {
        if self.ring.probe_due(Instant::now()) {
            let primary = self.ring.primary().to_string();
            let ok = self.transport.probe(&primary).await;
            if self.ring.record_probe(Instant::now(), ok) {
                info!(gateway = %primary, "the primary gateway answers again; failing back to it");
                self.stats.reconnect();
            } else {
                debug!(gateway = %primary, "the primary gateway still does not answer");
            }
        }
        let limits = self.limits;
        let next = with_spool(&self.spool, move |s| {
            s.next_batch(limits)?
                .map(|b| Ok::<_, UplinkError>((b.seq, b.records.len(), encode_batch(&b)?)))
                .transpose()
        })
        .await??;
        let Some((seq, count, body)) = next else {
            return Ok(Next::Idle);
        };
        let gateway = self.ring.current().to_string();
        let started = Instant::now();
        let result = self.transport.send(&gateway, body).await;
        match result {
            SendResult::Acked(ack) => {
                self.ring.on_success(Instant::now());
                self.stats.answered(&gateway);
                self.stats.latency(started.elapsed());
                if backoff.attempts() > 0 {
                    info!(gateway = %gateway, "gateway reachable again; sending the spool");
                }
                backoff.reset();
                let outcome = with_spool(&self.spool, move |s| s.acknowledge(&ack)).await??;
                match outcome {
                    AckOutcome::Completed {
                        trimmed_segments, ..
                    } => {
                        debug!(seq, records = count, acked_seq = ack.acked_seq, duplicate = ack.duplicate, trimmed_segments, gateway = %gateway, "batch acknowledged");
                        Ok(Next::Continue)
                    }
                    AckOutcome::Renumbered { from, to } => {
                        warn!(gateway = %gateway, seq = from, acked_seq = ack.acked_seq, "gateway holds sequence {from} from another batch (its last record id is {}); resending ours as {to}", ack.last_rid);
                        Ok(Next::Continue)
                    }
                    AckOutcome::Behind => {
                        warn!(seq, acked_seq = ack.acked_seq, gateway = %gateway, "gateway acknowledged less than it was sent; retrying later");
                        Ok(Next::Wait(backoff.next_random_delay()))
                    }
                    AckOutcome::NoBatch => Ok(Next::Continue),
                }
            }
            SendResult::Gap { expected, reply } => {
                self.ring.on_success(Instant::now());
                self.stats.answered(&gateway);
                warn!(
                    gateway = %gateway,
                    seq,
                    expected_seq = expected,
                    "gateway expects sequence {expected}, not {seq} ({}); renumbering the batch",
                    reply.message
                );
                if expected == seq {
                    // Nothing to renumber; the gateway is confused. Do not spin.
                    return Ok(Next::Wait(backoff.next_random_delay()));
                }
                with_spool(&self.spool, move |s| s.resequence(expected)).await??;
                Ok(Next::Continue)
            }
            SendResult::Forbidden(reply) => {
                self.ring.on_success(Instant::now());
                self.stats.answered(&gateway);
                let waiting = with_spool(&self.spool, |s| s.stats().records).await?;
                error!(
                    appliance = %self.appliance_id,
                    gateway = %gateway,
                    "gateway refuses appliance {} (revoked, or unknown to this gateway): {}; \
                     keeping {waiting} spooled record(s) and retrying every interval",
                    self.appliance_id,
                    reply.message
                );
                Ok(Next::Wait(*self.interval.borrow()))
            }
            SendResult::Rejected(reply) => {
                self.ring.on_success(Instant::now());
                self.stats.answered(&gateway);
                error!(gateway = %gateway, seq, "gateway refused batch {seq}: {reply}; keeping it and retrying");
                Ok(Next::Wait(backoff.next_random_delay()))
            }
            SendResult::Busy { retry_after, reply } => {
                // The gateway answered: the connection is fine and failing over would only
                // move the load. Wait at least what it asked, plus up to half again so the
                // fleet does not come back in step; the backoff is left as it is.
                self.ring.on_success(Instant::now());
                self.stats.answered(&gateway);
                let wait = busy_wait(retry_after, rand::random::<f64>());
                info!(gateway = %gateway, seq, "gateway is busy ({reply}); sending batch {seq} again in {wait:?}");
                Ok(Next::Wait(wait))
            }
            SendResult::Unreachable(why) => {
                warn!(gateway = %gateway, seq, "sending batch {seq} failed: {why}");
                self.stats.reconnect();
                match self.ring.on_failure() {
                    AfterFailure::TryNext => {
                        info!(gateway = %self.ring.current(), "failing over to the next gateway");
                        Ok(Next::Continue)
                    }
                    AfterFailure::BackOff => Ok(Next::Wait(backoff.next_random_delay())),
                }
            }
        }
    }

    /// The sending task: sends until the spool is empty, then waits for the collector;
    /// stops at the next wait on shutdown (an interrupted request is simply resent later).
    pub async fn run(mut self, mut backoff: Backoff, mut shutdown: Shutdown) {
        loop {
            let next = tokio::select! {
                n = self.step(&mut backoff) => n,
                () = shutdown.wait() => return,
            };
            let wait = match next {
                Ok(Next::Continue) => continue,
                Ok(Next::Idle) => {
                    tokio::select! {
                        () = self.wake.notified() => continue,
                        () = shutdown.wait() => return,
                    }
                }
                Ok(Next::Wait(d)) => d,
                Err(e) => {
                    error!("uplink: {e}");
                    backoff.next_random_delay()
                }
            };
            if shutdown.sleep(wait).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::DEFAULT_FAIL_BACK_AFTER;
    use crate::spool::{SpoolConfig, SpoolStats};
    use outpost_proto::{content_hash, HostInventory, HostMetrics, Record};
    use std::collections::VecDeque;

    fn inv(name: &str) -> HostInventory {
        HostInventory {
            hostname: name.into(),
            ..HostInventory::default()
        }
    }

    fn metrics(n: i64) -> Record {
        Record::Metrics {
            collected_at_ms: n,
            metrics: HostMetrics::default(),
        }
    }

    fn decode(body: &[u8]) -> IngestBatch {
        let json = zstd::decode_all(body).unwrap();
        serde_json::from_slice(&json).unwrap()
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(
            classify_ingest_answer(200, br#"{"acked_seq":3,"duplicate":false,"last_rid":9}"#),
            SendResult::Acked(IngestAck {
                acked_seq: 3,
                duplicate: false,
                last_rid: 9,
            })
        );
        assert!(matches!(
            classify_ingest_answer(
                409,
                br#"{"error":"sequence_gap","message":"m","expected_seq":2}"#
            ),
            SendResult::Gap { expected: 2, .. }
        ));
        assert!(matches!(
            classify_ingest_answer(403, br#"{"error":"revoked","message":"m"}"#),
            SendResult::Forbidden(_)
        ));
        assert!(matches!(
            classify_ingest_answer(400, b"{}"),
            SendResult::Rejected(_)
        ));
        assert!(matches!(
            classify_ingest_answer(503, b""),
            SendResult::Unreachable(_)
        ));
        assert!(matches!(
            classify_ingest_reply(503, None, b""),
            SendResult::Unreachable(_)
        ));
        assert!(matches!(
            classify_ingest_reply(
                503,
                parse_retry_after("2"),
                br#"{"error":"overloaded","message":"m"}"#
            ),
            SendResult::Busy { retry_after, .. } if retry_after == Duration::from_secs(2)
        ));
        assert_eq!(parse_retry_after("86400"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            busy_wait(Duration::from_secs(2), 0.0),
            Duration::from_secs(2)
        );
        assert_eq!(busy_wait(Duration::from_secs(2), 0.999_999).as_secs(), 2);
        assert!(matches!(
            classify_ingest_answer(200, b"nope"),
            SendResult::Unreachable(_)
        ));
    }

    /// What the scripted gateway received.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Sent {
        gateway: String,
        seq: u64,
        rids: Vec<u64>,
    }

    /// A gateway double: answers from a script and records what it was sent. With
    /// `Auto`, it acknowledges like a real gateway would.
    #[derive(Clone, Default)]
    struct ScriptedGateway {
        answers: Arc<Mutex<VecDeque<Answer>>>,
        probes: Arc<Mutex<VecDeque<bool>>>,
        sent: Arc<Mutex<Vec<Sent>>>,
        probed: Arc<Mutex<Vec<String>>>,
    }

    #[derive(Clone)]
    enum Answer {
        Fixed(SendResult),
        /// Store the batch: ack its seq, last rid of the batch.
        Store,
    }

    impl IngestTransport for ScriptedGateway {
        async fn send(&self, gateway: &str, body: Vec<u8>) -> SendResult {
            let batch = decode(&body);
            let rids: Vec<u64> = batch.records.iter().map(|e| e.rid).collect();
            self.sent.lock().unwrap().push(Sent {
                gateway: gateway.to_string(),
                seq: batch.seq,
                rids: rids.clone(),
            });
            match self.answers.lock().unwrap().pop_front() {
                Some(Answer::Fixed(r)) => r,
                Some(Answer::Store) => SendResult::Acked(IngestAck {
                    acked_seq: batch.seq,
                    duplicate: false,
                    last_rid: rids.last().copied().unwrap_or(0),
                }),
                None => SendResult::Unreachable("script ended".into()),
            }
        }

        async fn probe(&self, gateway: &str) -> bool {
            self.probed.lock().unwrap().push(gateway.to_string());
            self.probes.lock().unwrap().pop_front().unwrap_or(false)
        }
    }

    fn ack(seq: u64, last_rid: u64) -> Answer {
        Answer::Fixed(SendResult::Acked(IngestAck {
            acked_seq: seq,
            duplicate: false,
            last_rid,
        }))
    }

    fn down() -> Answer {
        Answer::Fixed(SendResult::Unreachable("down".into()))
    }

    fn sender_with(
        dir: &std::path::Path,
        script: Vec<Answer>,
        fail_back: Duration,
        limits: BatchLimits,
    ) -> (Sender<ScriptedGateway>, ScriptedGateway) {
        let gw = ScriptedGateway::default();
        gw.answers.lock().unwrap().extend(script);
        let spool = Spool::open(dir, SpoolConfig::default()).unwrap();
        let (_tx, rx) = watch::channel(Duration::from_secs(10));
        let s = Sender {
            spool: Arc::new(Mutex::new(spool)),
            wake: Arc::new(Notify::new()),
            transport: gw.clone(),
            ring: GatewayRing::new(vec!["a:1".into(), "b:1".into()], fail_back),
            interval: rx,
            appliance_id: "ap-test".into(),
            limits,
            stats: Arc::new(UplinkStats::default()),
        };
        (s, gw)
    }

    fn sender(
        dir: &std::path::Path,
        script: Vec<Answer>,
    ) -> (Sender<ScriptedGateway>, ScriptedGateway) {
        sender_with(dir, script, DEFAULT_FAIL_BACK_AFTER, BatchLimits::default())
    }

    fn spool_stats(s: &Sender<ScriptedGateway>) -> SpoolStats {
        s.spool.lock().unwrap().stats()
    }

    fn append(s: &Sender<ScriptedGateway>, records: Vec<Record>) {
        s.spool.lock().unwrap().append(records).unwrap();
    }

    #[tokio::test]
    async fn sender_trims_on_ack_and_fails_over() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, gw) = sender(dir.path(), vec![ack(1, 2), down(), ack(2, 3)]);
        append(&s, vec![metrics(1), metrics(2)]);
        let mut b = Backoff::default();
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        append(&s, vec![metrics(3)]);
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Idle);
        let sent = gw.sent.lock().unwrap().clone();
        let summary: Vec<(&str, u64, Vec<u64>)> = sent
            .iter()
            .map(|x| (x.gateway.as_str(), x.seq, x.rids.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a:1", 1, vec![1, 2]),
                ("a:1", 2, vec![3]),
                ("b:1", 2, vec![3]),
            ]
        );
        let st = spool_stats(&s);
        assert_eq!((st.last_acked_seq, st.acked_rid, st.records), (2, 3, 0));
        let snap = s.stats.snapshot();
        assert_eq!(snap.current_gateway, "b:1");
        assert_eq!(snap.reconnects, 1);
        assert!(snap.send_latency_ms.is_some());
    }

    #[tokio::test]
    async fn a_busy_gateway_is_waited_for_not_failed_over() {
        let dir = tempfile::tempdir().unwrap();
        let busy = Answer::Fixed(classify_ingest_reply(
            503,
            Some(Duration::from_secs(3)),
            br#"{"error":"overloaded","message":"busy"}"#,
        ));
        let (mut s, gw) = sender(dir.path(), vec![busy, ack(1, 1)]);
        append(&s, vec![metrics(1)]);
        let mut b = Backoff::default();
        match s.step(&mut b).await.unwrap() {
            Next::Wait(d) => assert!(
                d >= Duration::from_secs(3) && d <= Duration::from_millis(4500),
                "{d:?}"
            ),
            other => panic!("expected a wait, got {other:?}"),
        }
        assert_eq!(b.attempts(), 0, "a busy answer is not a failure");
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        let sent: Vec<String> = gw
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|x| x.gateway.clone())
            .collect();
        assert_eq!(
            sent,
            vec!["a:1", "a:1"],
            "no fail-over on 503 with Retry-After"
        );
        assert_eq!(s.stats.snapshot().reconnects, 0);
        assert_eq!(spool_stats(&s).records, 0);
    }

    #[tokio::test]
    async fn a_backlog_drains_in_capped_batches() {
        let dir = tempfile::tempdir().unwrap();
        let limits = BatchLimits {
            max_records: 4,
            max_bytes: 1 << 20,
        };
        let script = vec![Answer::Store; 10];
        let (mut s, gw) = sender_with(dir.path(), script, DEFAULT_FAIL_BACK_AFTER, limits);
        append(&s, (0..10).map(metrics).collect());
        let mut b = Backoff::default();
        while s.step(&mut b).await.unwrap() == Next::Continue {}
        let sent = gw.sent.lock().unwrap().clone();
        let sizes: Vec<(u64, usize)> = sent.iter().map(|x| (x.seq, x.rids.len())).collect();
        assert_eq!(sizes, vec![(1, 4), (2, 4), (3, 2)]);
        let all: Vec<u64> = sent.iter().flat_map(|x| x.rids.clone()).collect();
        assert_eq!(all, (1..=10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn sender_renumbers_on_gap_and_waits_when_forbidden() {
        let dir = tempfile::tempdir().unwrap();
        // A ledger from before: the collector believes 10 batches are stored.
        crate::spool::Ledger {
            last_acked_seq: 10,
            ..crate::spool::Ledger::default()
        }
        .write(dir.path())
        .unwrap();
        let gap = Answer::Fixed(classify_ingest_answer(
            409,
            br#"{"error":"sequence_gap","message":"expected 4","expected_seq":4}"#,
        ));
        let forbidden = Answer::Fixed(classify_ingest_answer(
            403,
            br#"{"error":"revoked","message":"revoked"}"#,
        ));
        let (mut s, gw) = sender(dir.path(), vec![gap, forbidden, ack(4, 1)]);
        append(&s, vec![metrics(0)]);
        let mut b = Backoff::default();
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        assert_eq!(
            s.step(&mut b).await.unwrap(),
            Next::Wait(Duration::from_secs(10))
        );
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        let seqs: Vec<(u64, Vec<u64>)> = gw
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|x| (x.seq, x.rids.clone()))
            .collect();
        assert_eq!(seqs, vec![(11, vec![1]), (4, vec![1]), (4, vec![1])]);
        let st = spool_stats(&s);
        assert_eq!((st.records, st.last_acked_seq), (0, 4));
    }

    #[tokio::test]
    async fn a_duplicate_of_someone_elses_batch_is_renumbered_not_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        // The gateway holds seq 1..=7 with records up to id 1 (the ledger was lost, the
        // spool kept); our batch 1 holds ids 1..=2, so the gateway does not hold it all.
        let dup = Answer::Fixed(SendResult::Acked(IngestAck {
            acked_seq: 7,
            duplicate: true,
            last_rid: 1,
        }));
        let (mut s, gw) = sender(dir.path(), vec![dup, ack(8, 2)]);
        append(&s, vec![metrics(1), metrics(2)]);
        let mut b = Backoff::default();
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        assert_eq!(spool_stats(&s).records, 2, "nothing trimmed");
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        let seqs: Vec<(u64, Vec<u64>)> = gw
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|x| (x.seq, x.rids.clone()))
            .collect();
        assert_eq!(seqs, vec![(1, vec![1, 2]), (8, vec![1, 2])]);
        assert_eq!(spool_stats(&s).last_acked_seq, 8);
        assert_eq!(spool_stats(&s).records, 0);
        append(&s, vec![metrics(3)]);
        let fresh = s
            .spool
            .lock()
            .unwrap()
            .next_batch(BatchLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!((fresh.seq, fresh.records[0].rid), (9, 3));
    }

    #[tokio::test]
    async fn record_ids_jump_past_a_gateway_that_holds_more() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _gw) = sender(dir.path(), vec![ack(1, 40)]);
        append(&s, vec![metrics(1)]);
        let mut b = Backoff::default();
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        assert_eq!(spool_stats(&s).next_rid, 41);
    }

    #[tokio::test]
    async fn a_crash_before_the_ack_resends_the_same_batch() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The gateway stores the batch, but the answer never arrives.
            let (mut s, gw) = sender(dir.path(), vec![down(), down()]);
            append(&s, vec![metrics(1), metrics(2), metrics(3)]);
            let mut b = Backoff::default();
            s.step(&mut b).await.unwrap();
            assert_eq!(gw.sent.lock().unwrap()[0].seq, 1);
        }
        // Restart: more records were spooled meanwhile; the in-flight batch is resent as
        // it was, the new records follow in the next batch.
        let (mut s, gw) = sender(dir.path(), vec![Answer::Store, Answer::Store]);
        append(&s, vec![metrics(4)]);
        let mut b = Backoff::default();
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        let sent = gw.sent.lock().unwrap().clone();
        assert_eq!(
            sent.iter()
                .map(|x| (x.seq, x.rids.clone()))
                .collect::<Vec<_>>(),
            vec![(1, vec![1, 2, 3]), (2, vec![4])]
        );
    }

    #[tokio::test]
    async fn sender_probes_the_primary_and_fails_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = Duration::from_millis(50);
        let script = vec![down(), Answer::Store, Answer::Store, Answer::Store];
        let (mut s, gw) = sender_with(dir.path(), script, p, BatchLimits::default());
        gw.probes.lock().unwrap().extend([false, true]);
        let mut b = Backoff::default();
        append(&s, vec![metrics(1)]);
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        assert_eq!(s.ring.current(), "b:1");
        // First probe: the primary is still down.
        tokio::time::sleep(p).await;
        append(&s, vec![metrics(2)]);
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        assert_eq!(s.ring.current(), "b:1");
        // Second probe, a period later: it answers; the next batch goes to it.
        tokio::time::sleep(p).await;
        append(&s, vec![metrics(3)]);
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        assert!(s.ring.on_primary());
        let sent: Vec<(String, u64)> = gw
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|x| (x.gateway.clone(), x.seq))
            .collect();
        assert_eq!(
            sent,
            vec![
                ("a:1".into(), 1),
                ("b:1".into(), 1),
                ("b:1".into(), 2),
                ("a:1".into(), 3)
            ]
        );
        assert_eq!(*gw.probed.lock().unwrap(), vec!["a:1", "a:1"]);
        assert_eq!(
            s.stats.snapshot().reconnects,
            2,
            "one failover, one fail-back"
        );
    }

    #[tokio::test]
    async fn inventory_is_known_until_acknowledged_and_after() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _gw) = sender(dir.path(), vec![Answer::Store]);
        let h = content_hash(&inv("a"));
        append(
            &s,
            vec![
                Record::Inventory {
                    collected_at_ms: 1,
                    hash: h.clone(),
                    inventory: inv("a"),
                },
                metrics(1),
            ],
        );
        assert_eq!(
            s.spool.lock().unwrap().known_inventory_hash(),
            Some(h.as_str())
        );
        let mut b = Backoff::default();
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        drop(s);
        let spool = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
        assert_eq!(spool.known_inventory_hash(), Some(h.as_str()));
        assert_eq!(
            spool.ledger().acked_inventory_hash.as_deref(),
            Some(h.as_str())
        );
    }
}
