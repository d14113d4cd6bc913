//! The load generator behind `outpost-loadgen`: N simulated appliances against one gateway
//! or a pool, each with its own key, its own enrolled certificate and its own TLS
//! connection, speaking the real protocol.
//!
//! # Design
//!
//! * Enrolment goes through the real routes (`POST /v1/enroll` with an auto-approve token,
//!   then `GET /v1/enroll/{id}`), many at once, so the CA and the store do what they do for
//!   a real fleet.
//! * Every appliance then holds one mTLS connection (HTTP/2 when the gateway offers it), on
//!   which it keeps a command long-poll (`GET /v1/commands?wait=`) open and sends, every
//!   interval with a per-appliance random offset, a zstd JSON batch as a collector would: a
//!   metrics and an agent record, and an inventory record the first time and now and then.
//!   The payload is a real collection of this machine when the collector binary is at hand.
//! * A batch is kept until it is acknowledged and resent as it was (same sequence, same
//!   record ids), so what the generator counts as acknowledged is exactly what the gateway
//!   must hold. A 503 is honoured: the batch is resent after `Retry-After`.
//! * A transport error drops the connection; the appliance reconnects with exponential
//!   backoff and full jitter (a fresh client, so a fresh TLS handshake, proven by a
//!   `GET /v1/config`) and counts the reconnect.
//! * Storm mode: once every appliance is connected the generator is armed; the first
//!   refused request starts the clock, which stops when every appliance that lost its
//!   connection has it back. The gateway restart itself is done from outside.
//!
//! * Source addresses: appliance `i` binds its connections to `sources[i % len]` before it
//!   connects (a loopback source address has about 28,000 ephemeral ports), so a fleet can
//!   outgrow one address.
//! * Workers ([`run_workers`]): the fleet split over K processes of `outpost-loadgen`
//!   (each holds its appliances' descriptors, so the fleet can outgrow one process's
//!   open-file limit). The parent hands each worker its share as a [`WorkerSpec`] on
//!   stdin, moves them through the phases together (enrolled → connected → running), so
//!   the gateway's memory per connection and CPU per batch are measured as with one
//!   process, and adds their reports up (latency percentiles over all samples).
//!
//! Time and randomness come from the settings (`seed`), every loop ends at the deadline.
//!
//! # Current limitations
//!
//! Storm mode runs in one process only. Enrolment connections come from the default source
//! address (they are short-lived).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use anyhow::Context;
use outpost_proto::{
    paths, AgentMetrics, Envelope, HostInventory, HostMetrics, IngestAck, IngestBatch, Record,
};
use rustls::ClientConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::client::{tls_config, ApplianceClient, REQUEST_TIMEOUT, TLS13_ONLY};
use crate::faults::SeededRng as Jitter;
use crate::measure::{proc_usage, Latency, ProcUsage};

/// What to simulate and against what.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// Gateways; appliance `i` enrols with and talks to `gateways[i % len]`.
    pub gateways: Vec<SocketAddr>,
    /// The Outpost CA (PEM), the only root the appliances trust.
    pub ca_pem: String,
    /// An auto-approve bootstrap token with at least `appliances` uses.
    pub token: String,
    /// Number of simulated appliances.
    pub appliances: usize,
    /// Time between two batches of one appliance.
    pub interval: Duration,
    /// How long the appliances run after enrolment.
    pub duration: Duration,
    /// Enrolments (and first connections) in flight at once.
    pub enrol_concurrency: usize,
    /// `wait=` of the command long-poll.
    pub poll_wait: Duration,
    /// An inventory record in about one batch out of this many (and in the first).
    pub inventory_every: u32,
    /// Upper bound of the reconnect backoff.
    pub backoff_max: Duration,
    /// Gateway processes whose RSS and CPU are reported.
    pub gateway_pids: Vec<u32>,
    /// Storm mode (see the module docs).
    pub storm: bool,
    /// Written (with the number of connected appliances) when storm mode is armed.
    pub ready_file: Option<std::path::PathBuf>,
    /// Seed of every random choice.
    pub seed: u64,
    /// Inventory and metrics every batch is made from.
    pub payload: Payload,
    /// Local addresses the appliances' connections are bound to (round robin); empty: the
    /// system's choice.
    pub sources: Vec<IpAddr>,
    /// Index of the first appliance (a worker's share starts here; 0 otherwise): picks the
    /// gateway, the source address and the random stream of each appliance.
    pub first_index: usize,
}

/// The content of simulated batches.
#[derive(Debug, Clone)]
pub struct Payload {
    /// Host inventory (its host name is replaced by the appliance id).
    pub inventory: HostInventory,
    /// Host metrics (its counters move a little per batch).
    pub metrics: HostMetrics,
    /// Where it came from (`real` or `synthetic`).
    pub source: &'static str,
}

impl Payload {
    /// A real collection of this machine, or a small synthetic one when the collector
    /// binary is not at hand.
    #[must_use]
    pub fn best_available() -> Self {
        match crate::measure::real_sample() {
            Ok((inventory, metrics)) => Self {
                inventory,
                metrics,
                source: "real",
            },
            Err(_) => Self::synthetic(),
        }
    }

    /// A made-up host with two file systems and two NICs.
    #[must_use]
    pub fn synthetic() -> Self {
        let b = crate::client::sample_batch(1, true, "loadgen");
        let mut inventory = HostInventory::default();
        let mut metrics = HostMetrics::default();
        for e in b.records {
            match e.record {
                Record::Inventory { inventory: i, .. } => inventory = i,
                Record::Metrics { metrics: m, .. } => metrics = m,
                _ => {}
            }
        }
        Self {
            inventory,
            metrics,
            source: "synthetic",
        }
    }
}

/// Latency summary, ms.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

impl LatencySummary {
    fn of(mut l: Latency) -> Self {
        Self {
            p50_ms: l.pct(0.5),
            p99_ms: l.pct(0.99),
            max_ms: l.pct(1.0),
        }
    }
}

/// One gateway process over the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GatewayUsage {
    /// Its pid.
    pub pid: u32,
    /// RSS before the enrolments, KiB.
    pub rss_start_kib: u64,
    /// RSS once every appliance held its connection (nothing sent yet), KiB.
    pub rss_connected_kib: u64,
    /// RSS at the end, KiB.
    pub rss_end_kib: u64,
    /// Peak RSS, KiB.
    pub rss_peak_kib: u64,
    /// CPU seconds used while the appliances ran (after enrolment).
    pub cpu_secs: f64,
    /// The same as a share of one core over the run.
    pub cpu_percent_of_one_core: f64,
    /// CPU seconds used by the enrolments.
    pub enrol_cpu_secs: f64,
}

/// The storm's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StormReport {
    /// Whether every appliance that lost its connection got it back in time.
    pub complete: bool,
    /// Appliances that lost their connection.
    pub lost: usize,
    /// Of those, how many got it back.
    pub back: usize,
    /// From the first refused request to the last appliance back, seconds.
    pub secs_from_first_refusal: f64,
    /// From the first appliance back (the gateway answers again) to the last, seconds.
    pub secs_from_first_back: f64,
    /// Reconnections (TLS handshakes that led to an answer) per second between the first
    /// and the last appliance back.
    pub handshakes_per_sec: f64,
    /// Connection attempts that failed during the storm.
    pub failed_attempts: u64,
    /// Appliances that saw no error at all (their connection outlived the restart's
    /// window, or a request retried onto the new gateway by itself).
    pub never_lost: usize,
}

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// Simulated appliances.
    pub appliances: usize,
    /// Gateways.
    pub gateways: Vec<String>,
    /// Source addresses of the appliances' connections (empty: the system's choice).
    pub sources: Vec<String>,
    /// Processes that simulated the fleet (1 without workers).
    pub workers: usize,
    /// Where the payload came from.
    pub payload: String,
    /// Compressed size of a batch with inventory / without, bytes.
    pub batch_bytes_with_inventory: usize,
    /// See above.
    pub batch_bytes_metrics_only: usize,
    /// Enrolment wall time, seconds.
    pub enrol_secs: f64,
    /// Enrolments per second.
    pub enrol_per_sec: f64,
    /// Time for every appliance to open its mTLS connection, seconds.
    pub connect_secs: f64,
    /// Seconds the appliances ran.
    pub run_secs: f64,
    /// Batch requests sent (including resends).
    pub batches_sent: u64,
    /// Batches acknowledged (each once, whether the answer said duplicate or not).
    pub batches_acked: u64,
    /// Records in the acknowledged batches.
    pub records_acked: u64,
    /// Acknowledgements that said `duplicate` (a resend of a stored batch).
    pub duplicates: u64,
    /// Acknowledged batches per second over the run.
    pub batches_per_sec: f64,
    /// Acknowledged records per second over the run.
    pub records_per_sec: f64,
    /// Latency of acknowledged batch requests.
    pub ingest_latency: LatencySummary,
    /// 503 answers (overload or store) to batches.
    pub busy_answers: u64,
    /// Long-polls that came back with an answer.
    pub polls_answered: u64,
    /// Errors by kind (`connect`, `timeout`, `transport`, `http_503`, `http_409`, ...,
    /// prefixed with the route).
    pub errors: BTreeMap<String, u64>,
    /// New connections after an error.
    pub reconnects: u64,
    /// Gateway processes.
    pub gateway_usage: Vec<GatewayUsage>,
    /// Gateway RSS per connected appliance: (connected − after enrolment) / N, KiB.
    pub gateway_kib_per_connection: Option<f64>,
    /// Storm mode only.
    pub storm: Option<StormReport>,
    /// A worker's latency samples, ms, for the parent to merge (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_samples_ms: Vec<f64>,
}

/// Counters shared by every simulated appliance.
#[derive(Default)]
struct Shared {
    batches_sent: AtomicU64,
    batches_acked: AtomicU64,
    records_acked: AtomicU64,
    duplicates: AtomicU64,
    busy: AtomicU64,
    polls: AtomicU64,
    reconnects: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    latency: Mutex<Latency>,
    stop: AtomicBool,
    storm: StormState,
}

#[derive(Default)]
struct StormState {
    armed: AtomicBool,
    first_refusal: OnceLock<Instant>,
    first_back: OnceLock<Instant>,
    last_back: Mutex<Option<Instant>>,
    lost: AtomicUsize,
    back: AtomicUsize,
    handshakes: AtomicU64,
    failed_attempts: AtomicU64,
}

impl Shared {
    fn error(&self, kind: String) {
        *self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(kind)
            .or_insert(0) += 1;
    }
}

/// Uniform in `[0, d)` from `rng`.
pub fn below(rng: &mut Jitter, d: Duration) -> Duration {
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rng.next_u64() % nanos)
}

/// Full-jitter exponential backoff: the n-th wait is uniform in `[0, min(max, base·2ⁿ))`.
#[must_use]
pub fn backoff_delay(attempt: u32, base: Duration, max: Duration, j: &mut Jitter) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(20)).min(max);
    below(j, ceiling)
}

/// One simulated appliance after enrolment.
struct Sim {
    id: String,
    base: String,
    source: Option<IpAddr>,
    tls: ClientConfig,
    client: reqwest::Client,
    inventory: HostInventory,
    metrics: HostMetrics,
    next_seq: u64,
    next_rid: u64,
    pending: Option<Pending>,
    rng: Jitter,
}

/// A batch sent and not yet acknowledged: resent as it is.
struct Pending {
    seq: u64,
    records: Vec<Envelope>,
    body: Vec<u8>,
}

/// What a batch request came to.
enum SendOutcome {
    Acked,
    Busy(Duration),
    Refused,
    Transport,
}

fn encode(batch: &IngestBatch) -> anyhow::Result<Vec<u8>> {
    let json = serde_json::to_vec(batch)?;
    zstd::encode_all(&json[..], 3).context("zstd")
}

fn transport_kind(e: &reqwest::Error) -> &'static str {
    if e.is_connect() {
        "connect"
    } else if e.is_timeout() {
        "timeout"
    } else {
        "transport"
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

impl Sim {
    fn make_batch(&mut self, inventory_every: u32) -> anyhow::Result<Pending> {
        let now = crate::now_ms();
        let seq = self.next_seq;
        let mut records = Vec::with_capacity(3);
        let with_inventory = seq == 1
            || (inventory_every > 0
                && self
                    .rng
                    .next_u64()
                    .is_multiple_of(u64::from(inventory_every)));
        if with_inventory {
            if seq > 1 {
                // Something changed on the box: a new kernel, say.
                self.inventory.kernel_version = format!("6.1.0-{seq}");
            }
            records.push(Record::Inventory {
                collected_at_ms: now,
                hash: outpost_proto::content_hash(&self.inventory),
                inventory: self.inventory.clone(),
            });
        }
        let mut metrics = self.metrics.clone();
        metrics.uptime_secs += seq * 30;
        metrics.process_count += self.rng.next_u64() % 8;
        records.push(Record::Metrics {
            collected_at_ms: now,
            metrics,
        });
        records.push(Record::Agent {
            collected_at_ms: now,
            agent: AgentMetrics {
                current_gateway: self.base.clone(),
                send_latency_ms: Some(5),
                ..AgentMetrics::default()
            },
        });
        let records: Vec<Envelope> = records
            .into_iter()
            .map(|record| {
                let rid = self.next_rid;
                self.next_rid += 1;
                Envelope { rid, record }
            })
            .collect();
        let batch = IngestBatch { seq, records };
        let body = encode(&batch)?;
        Ok(Pending {
            seq,
            records: batch.records,
            body,
        })
    }

    async fn send(&mut self, sh: &Shared, inventory_every: u32) -> SendOutcome {
        if self.pending.is_none() {
            match self.make_batch(inventory_every) {
                Ok(p) => self.pending = Some(p),
                Err(e) => {
                    sh.error(format!("ingest_encode: {e}"));
                    return SendOutcome::Refused;
                }
            }
        }
        let Some(p) = self.pending.as_mut() else {
            return SendOutcome::Refused;
        };
        sh.batches_sent.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let resp = self
            .client
            .post(format!("{}{}", self.base, paths::INGEST))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::CONTENT_ENCODING, "zstd")
            .body(p.body.clone())
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                sh.error(format!("ingest_{}", transport_kind(&e)));
                return SendOutcome::Transport;
            }
        };
        let status = resp.status().as_u16();
        let after = retry_after(&resp);
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                sh.error(format!("ingest_{}", transport_kind(&e)));
                return SendOutcome::Transport;
            }
        };
        match status {
            200 => match serde_json::from_slice::<IngestAck>(&body) {
                Ok(ack) if ack.acked_seq >= p.seq => {
                    sh.latency
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(started.elapsed());
                    sh.batches_acked.fetch_add(1, Ordering::Relaxed);
                    sh.records_acked
                        .fetch_add(p.records.len() as u64, Ordering::Relaxed);
                    if ack.duplicate {
                        sh.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    self.pending = None;
                    self.next_seq += 1;
                    SendOutcome::Acked
                }
                Ok(_) => {
                    sh.error("ingest_ack_behind".into());
                    SendOutcome::Refused
                }
                Err(_) => {
                    sh.error("ingest_bad_ack".into());
                    SendOutcome::Refused
                }
            },
            503 => {
                sh.busy.fetch_add(1, Ordering::Relaxed);
                sh.error(if after.is_some() {
                    "ingest_http_503".into()
                } else {
                    "ingest_http_503_without_retry_after".into()
                });
                SendOutcome::Busy(after.unwrap_or(Duration::from_secs(5)))
            }
            409 => {
                sh.error("ingest_http_409".into());
                // Renumber as a collector does (the records keep their ids).
                let expected = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["expected_seq"].as_u64());
                if let Some(expected) = expected.filter(|e| *e != p.seq) {
                    p.seq = expected;
                    self.next_seq = expected;
                    let batch = IngestBatch {
                        seq: expected,
                        records: std::mem::take(&mut p.records),
                    };
                    match encode(&batch) {
                        Ok(b) => p.body = b,
                        Err(e) => sh.error(format!("ingest_encode: {e}")),
                    }
                    p.records = batch.records;
                }
                SendOutcome::Refused
            }
            other => {
                sh.error(format!("ingest_http_{other}"));
                SendOutcome::Refused
            }
        }
    }

    /// A fresh client (so a fresh TLS handshake) proven by `GET /v1/config`.
    async fn reconnect(&mut self, sh: &Shared) -> bool {
        let client = match sim_client(self.tls.clone(), self.source) {
            Ok(c) => c,
            Err(e) => {
                sh.error(format!("client: {e}"));
                return false;
            }
        };
        match client
            .get(format!("{}{}", self.base, paths::CONFIG))
            .send()
            .await
        {
            Ok(r) => {
                let _ = r.bytes().await;
                self.client = client;
                true
            }
            Err(e) => {
                sh.error(format!("reconnect_{}", transport_kind(&e)));
                false
            }
        }
    }
}

type PollFuture = Pin<Box<dyn Future<Output = Result<u16, reqwest::Error>> + Send>>;

fn long_poll(client: reqwest::Client, url: String) -> PollFuture {
    Box::pin(async move {
        let r = client.get(url).send().await?;
        let status = r.status().as_u16();
        r.bytes().await?;
        Ok(status)
    })
}

/// Runs one appliance until the deadline (or the storm's end).
#[allow(clippy::too_many_lines)]
async fn drive(mut sim: Sim, sh: Arc<Shared>, s: Arc<LoadSettings>, end: Instant) {
    const BACKOFF_BASE: Duration = Duration::from_millis(200);
    let poll_url = format!(
        "{}{}?wait={}s",
        sim.base,
        paths::COMMANDS,
        s.poll_wait.as_secs().max(1)
    );
    let mut next_send = Instant::now() + below(&mut sim.rng, s.interval);
    let mut connected = true;
    let mut attempt = 0u32;
    let mut lost = false;
    let mut poll: Option<PollFuture> = None;
    let lose = |lost: &mut bool, sh: &Shared| {
        if sh.storm.armed.load(Ordering::Relaxed) {
            let _ = sh.storm.first_refusal.set(Instant::now());
            if !*lost {
                *lost = true;
                sh.storm.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    while Instant::now() < end && !sh.stop.load(Ordering::Relaxed) {
        if !connected {
            let wait = backoff_delay(attempt, BACKOFF_BASE, s.backoff_max, &mut sim.rng);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = tokio::time::sleep_until(end) => break,
            }
            if sim.reconnect(&sh).await {
                connected = true;
                attempt = 0;
                sh.reconnects.fetch_add(1, Ordering::Relaxed);
                if lost {
                    lost = false;
                    let now = Instant::now();
                    let st = &sh.storm;
                    let _ = st.first_back.set(now);
                    *st.last_back.lock().unwrap_or_else(PoisonError::into_inner) = Some(now);
                    st.handshakes.fetch_add(1, Ordering::Relaxed);
                    st.back.fetch_add(1, Ordering::Relaxed);
                }
            } else if sh.storm.armed.load(Ordering::Relaxed) {
                sh.storm.failed_attempts.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        let p = poll.get_or_insert_with(|| long_poll(sim.client.clone(), poll_url.clone()));
        tokio::select! {
            () = tokio::time::sleep_until(next_send.min(end)) => {
                if Instant::now() >= end || sh.stop.load(Ordering::Relaxed) {
                    break;
                }
                let now = Instant::now();
                match sim.send(&sh, s.inventory_every).await {
                    SendOutcome::Acked => {
                        next_send += s.interval;
                        if next_send < now {
                            next_send = now + s.interval;
                        }
                    }
                    SendOutcome::Busy(after) => {
                        next_send = Instant::now() + after + below(&mut sim.rng, Duration::from_secs(1));
                    }
                    SendOutcome::Refused => next_send = Instant::now() + s.interval,
                    SendOutcome::Transport => {
                        connected = false;
                        poll = None;
                        lose(&mut lost, &sh);
                        // Send the waiting batch as soon as the connection is back.
                        next_send = Instant::now();
                    }
                }
            }
            r = p => {
                poll = None;
                match r {
                    Ok(200) => {
                        sh.polls.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(status) => {
                        sh.error(format!("poll_http_{status}"));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        sh.error(format!("poll_{}", transport_kind(&e)));
                        connected = false;
                        lose(&mut lost, &sh);
                    }
                }
            }
        }
    }
}

/// The HTTP client of one appliance: its TLS identity, bound to `source` when given.
fn sim_client(tls: ClientConfig, source: Option<IpAddr>) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .local_address(source)
        .build()
        .context("failed to build the HTTP client")
}

/// Enrols one appliance through the real routes; returns it ready to connect.
async fn enrol(idx: usize, s: &LoadSettings, seed: u64) -> anyhow::Result<Sim> {
    let addr = s.gateways[idx % s.gateways.len()];
    let mut c = ApplianceClient::new(addr, &s.ca_pem)?;
    let id = c
        .enroll_and_fetch(&s.token, Duration::from_secs(120))
        .await
        .with_context(|| format!("enrol appliance {idx} with {addr}"))?;
    let cert = c
        .cert_pem()
        .context("enrolled without a certificate")?
        .to_string();
    let key = c.key().serialize_pem();
    let tls = tls_config(&s.ca_pem, Some((&cert, &key)), TLS13_ONLY)?;
    let source = (!s.sources.is_empty()).then(|| s.sources[idx % s.sources.len()]);
    let client = sim_client(tls.clone(), source)?;
    let mut inventory = s.payload.inventory.clone();
    inventory.hostname.clone_from(&id);
    Ok(Sim {
        id,
        base: format!("https://{addr}"),
        source,
        tls,
        client,
        inventory,
        metrics: s.payload.metrics.clone(),
        next_seq: 1,
        next_rid: 1,
        pending: None,
        rng: Jitter::new(seed ^ (idx as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)),
    })
}

fn usage_of(pids: &[u32]) -> Vec<ProcUsage> {
    pids.iter()
        .map(|p| proc_usage(*p).unwrap_or_default())
        .collect()
}

/// Raises this process's open-file limit to its hard limit (one descriptor per appliance).
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

/// The points of a run where a worker waits for its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Every appliance is enrolled; none is connected yet.
    Enrolled,
    /// Every appliance holds its connection; the run has not started.
    Connected,
}

/// What a run does at each [`Phase`]: nothing alone, wait for the parent in a worker.
pub trait Phases {
    /// Called when the run reaches `phase`; the run goes on when it returns.
    fn reached(&mut self, phase: Phase) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Whether the report keeps every latency sample (for a parent to merge).
    fn keeps_samples(&self) -> bool {
        false
    }
}

/// A run on its own: the phases pass at once.
#[derive(Debug, Default)]
pub struct NoPhases;

impl Phases for NoPhases {
    async fn reached(&mut self, _phase: Phase) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Enrols the appliances, connects them, runs them for `duration` (or through the storm)
/// and reports.
///
/// # Errors
/// When an enrolment or a first connection fails: the figures would mean nothing.
pub async fn run(s: LoadSettings) -> anyhow::Result<LoadReport> {
    run_phased(s, &mut NoPhases).await
}

/// [`run`], stopping at each [`Phase`] for `phases` (a worker waits for its parent there).
///
/// # Errors
/// As [`run`], and when `phases` fails.
#[allow(clippy::too_many_lines, clippy::cast_precision_loss)]
pub async fn run_phased<P: Phases>(s: LoadSettings, phases: &mut P) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(!s.gateways.is_empty(), "no gateway to load");
    anyhow::ensure!(s.appliances > 0, "no appliances to simulate");
    raise_fd_limit();
    let s = Arc::new(s);
    let mut report = LoadReport {
        appliances: s.appliances,
        gateways: s.gateways.iter().map(ToString::to_string).collect(),
        sources: s.sources.iter().map(ToString::to_string).collect(),
        workers: 1,
        payload: s.payload.source.to_string(),
        ..LoadReport::default()
    };
    {
        let mut j = Jitter::new(s.seed);
        let mut sim_inv = s.payload.inventory.clone();
        sim_inv.hostname = "ap-0000000000000000".into();
        let mk = |with_inventory: bool, j: &mut Jitter| -> anyhow::Result<usize> {
            let mut records = vec![Record::Metrics {
                collected_at_ms: 0,
                metrics: s.payload.metrics.clone(),
            }];
            if with_inventory {
                records.insert(
                    0,
                    Record::Inventory {
                        collected_at_ms: 0,
                        hash: outpost_proto::content_hash(&sim_inv),
                        inventory: sim_inv.clone(),
                    },
                );
            }
            let records = records
                .into_iter()
                .map(|record| Envelope {
                    rid: j.next_u64() >> 40,
                    record,
                })
                .collect();
            Ok(encode(&IngestBatch { seq: 1, records })?.len())
        };
        report.batch_bytes_with_inventory = mk(true, &mut j)?;
        report.batch_bytes_metrics_only = mk(false, &mut j)?;
    }
    let u_start = usage_of(&s.gateway_pids);

    // Enrolment, many at once, through the real routes.
    let started = Instant::now();
    let sem = Arc::new(Semaphore::new(s.enrol_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(s.appliances);
    for idx in s.first_index..s.first_index + s.appliances {
        let (sem, s) = (sem.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await?;
            enrol(idx, &s, s.seed).await
        }));
    }
    let mut sims = Vec::with_capacity(s.appliances);
    for t in tasks {
        sims.push(t.await.context("enrolment task")??);
    }
    report.enrol_secs = started.elapsed().as_secs_f64();
    report.enrol_per_sec = s.appliances as f64 / report.enrol_secs.max(f64::MIN_POSITIVE);
    let u_enrolled = usage_of(&s.gateway_pids);
    phases.reached(Phase::Enrolled).await?;

    // First connections: every appliance opens its mTLS connection (GET /v1/config).
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(sims.len());
    for sim in sims {
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await?;
            let r = sim
                .client
                .get(format!("{}{}", sim.base, paths::CONFIG))
                .send()
                .await
                .with_context(|| format!("first connection of {}", sim.id))?;
            anyhow::ensure!(
                r.status().is_success(),
                "GET /v1/config for {} answered {}",
                sim.id,
                r.status()
            );
            let _ = r.bytes().await;
            anyhow::Ok(sim)
        }));
    }
    let mut sims = Vec::with_capacity(tasks.len());
    for t in tasks {
        sims.push(t.await.context("connection task")??);
    }
    report.connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let u_connected = usage_of(&s.gateway_pids);
    phases.reached(Phase::Connected).await?;

    // The run.
    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let end = started + s.duration;
    let mut tasks = Vec::with_capacity(sims.len());
    for sim in sims {
        tasks.push(tokio::spawn(drive(sim, shared.clone(), s.clone(), end)));
    }
    if s.storm {
        // Let the long-polls open, then arm and say so.
        tokio::time::sleep(Duration::from_secs(2).min(s.duration / 4)).await;
        shared.storm.armed.store(true, Ordering::SeqCst);
        if let Some(f) = &s.ready_file {
            std::fs::write(f, format!("{}\n", s.appliances))
                .with_context(|| format!("write {}", f.display()))?;
        }
        eprintln!(
            "outpost-loadgen: storm armed, {} appliances connected",
            s.appliances
        );
        // Done when every appliance that lost its connection has it back and nothing has
        // changed for a while (appliances that never noticed the restart are not waited for).
        const SETTLE: Duration = Duration::from_secs(5);
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let st = &shared.storm;
            let (lost, back) = (
                st.lost.load(Ordering::Relaxed),
                st.back.load(Ordering::Relaxed),
            );
            let last = *st.last_back.lock().unwrap_or_else(PoisonError::into_inner);
            if lost > 0 && back >= lost && last.is_some_and(|t| t.elapsed() >= SETTLE) {
                break;
            }
        }
        shared.stop.store(true, Ordering::SeqCst);
    }
    for t in tasks {
        t.await.context("appliance task")?;
    }
    report.run_secs = started.elapsed().as_secs_f64();
    let u_end = usage_of(&s.gateway_pids);

    report.batches_sent = shared.batches_sent.load(Ordering::Relaxed);
    report.batches_acked = shared.batches_acked.load(Ordering::Relaxed);
    report.records_acked = shared.records_acked.load(Ordering::Relaxed);
    report.duplicates = shared.duplicates.load(Ordering::Relaxed);
    report.busy_answers = shared.busy.load(Ordering::Relaxed);
    report.polls_answered = shared.polls.load(Ordering::Relaxed);
    report.reconnects = shared.reconnects.load(Ordering::Relaxed);
    report.batches_per_sec = report.batches_acked as f64 / report.run_secs.max(f64::MIN_POSITIVE);
    report.records_per_sec = report.records_acked as f64 / report.run_secs.max(f64::MIN_POSITIVE);
    report.errors = shared
        .errors
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let lat = std::mem::take(
        &mut *shared
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    if phases.keeps_samples() {
        report.latency_samples_ms.clone_from(&lat.samples);
    }
    report.ingest_latency = LatencySummary::of(lat);
    fill_gateway_usage(
        &mut report,
        &s.gateway_pids,
        [&u_start, &u_enrolled, &u_connected, &u_end],
    );
    if s.storm {
        let st = &shared.storm;
        let first = st.first_refusal.get().copied();
        let first_back = st.first_back.get().copied();
        let last_back = *st.last_back.lock().unwrap_or_else(PoisonError::into_inner);
        let lost = st.lost.load(Ordering::Relaxed);
        let back = st.back.load(Ordering::Relaxed);
        let span = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) if b >= a => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        let from_back = span(first_back, last_back);
        report.storm = Some(StormReport {
            complete: lost > 0 && back >= lost,
            lost,
            back,
            secs_from_first_refusal: span(first, last_back),
            secs_from_first_back: from_back,
            handshakes_per_sec: st.handshakes.load(Ordering::Relaxed) as f64
                / from_back.max(f64::MIN_POSITIVE),
            failed_attempts: st.failed_attempts.load(Ordering::Relaxed),
            never_lost: s.appliances.saturating_sub(lost),
        });
    }
    Ok(report)
}

/// The gateways' figures from their usage at the start, after enrolment, once connected
/// and at the end of the run.
#[allow(clippy::cast_precision_loss)]
fn fill_gateway_usage(report: &mut LoadReport, pids: &[u32], u: [&[ProcUsage]; 4]) {
    let [u_start, u_enrolled, u_connected, u_end] = u;
    for (i, pid) in pids.iter().enumerate() {
        let (a, e, c, z) = (u_start[i], u_enrolled[i], u_connected[i], u_end[i]);
        report.gateway_usage.push(GatewayUsage {
            pid: *pid,
            rss_start_kib: a.rss_kib,
            rss_connected_kib: c.rss_kib,
            rss_end_kib: z.rss_kib,
            rss_peak_kib: z.hwm_kib,
            cpu_secs: z.cpu_secs - c.cpu_secs,
            cpu_percent_of_one_core: (z.cpu_secs - c.cpu_secs) / report.run_secs * 100.0,
            enrol_cpu_secs: e.cpu_secs - a.cpu_secs,
        });
    }
    if !pids.is_empty() {
        let grown: i64 = (0..pids.len())
            .map(|i| {
                i64::try_from(u_connected[i].rss_kib).unwrap_or(0)
                    - i64::try_from(u_enrolled[i].rss_kib).unwrap_or(0)
            })
            .sum();
        report.gateway_kib_per_connection = Some(grown as f64 / report.appliances as f64);
    }
}

impl LoadReport {
    /// The report for people.
    #[must_use]
    pub fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "appliances {} against {} from {} in {} process(es) (payload {}: {} B zstd with \
             inventory, {} B without)",
            self.appliances,
            self.gateways.join(", "),
            if self.sources.is_empty() {
                "the default source address".to_string()
            } else {
                self.sources.join(", ")
            },
            self.workers,
            self.payload,
            self.batch_bytes_with_inventory,
            self.batch_bytes_metrics_only
        );
        let _ = writeln!(
            o,
            "enrolment: {:.2} s = {:.0}/s; first connections {:.2} s",
            self.enrol_secs, self.enrol_per_sec, self.connect_secs
        );
        let _ = writeln!(
            o,
            "ran {:.1} s: {} batches acknowledged ({} records, {} duplicates) of {} sent = \
             {:.1} batches/s, {:.1} records/s",
            self.run_secs,
            self.batches_acked,
            self.records_acked,
            self.duplicates,
            self.batches_sent,
            self.batches_per_sec,
            self.records_per_sec
        );
        let _ = writeln!(
            o,
            "ingest latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; 503 answers {}; \
             long-polls answered {}; reconnects {}",
            self.ingest_latency.p50_ms,
            self.ingest_latency.p99_ms,
            self.ingest_latency.max_ms,
            self.busy_answers,
            self.polls_answered,
            self.reconnects
        );
        if self.errors.is_empty() {
            let _ = writeln!(o, "errors: none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(o, "errors: {}", list.join(", "));
        }
        for g in &self.gateway_usage {
            let _ = writeln!(
                o,
                "gateway pid {}: RSS {} KiB at start, {} KiB connected, {} KiB at end \
                 (peak {} KiB); CPU {:.2} s over the run = {:.1}% of one core; enrolment \
                 CPU {:.2} s",
                g.pid,
                g.rss_start_kib,
                g.rss_connected_kib,
                g.rss_end_kib,
                g.rss_peak_kib,
                g.cpu_secs,
                g.cpu_percent_of_one_core,
                g.enrol_cpu_secs
            );
        }
        if let Some(k) = self.gateway_kib_per_connection {
            let _ = writeln!(o, "gateway memory per connected appliance: {k:.1} KiB");
        }
        if let Some(st) = &self.storm {
            let _ = writeln!(
                o,
                "storm: {} of {} lost connections back ({}); {:.2} s from the first refusal, \
                 {:.2} s from the first appliance back = {:.0} handshakes/s; {} failed attempts; \
                 {} never lost theirs",
                st.back,
                st.lost,
                if st.complete {
                    "complete"
                } else {
                    "INCOMPLETE"
                },
                st.secs_from_first_refusal,
                st.secs_from_first_back,
                st.handshakes_per_sec,
                st.failed_attempts,
                st.never_lost
            );
        }
        o
    }
}

/// A worker's share of the fleet, sent by the parent as one JSON line on its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Gateways.
    pub gateways: Vec<SocketAddr>,
    /// The Outpost CA (PEM).
    pub ca_pem: String,
    /// The auto-approve token.
    pub token: String,
    /// Appliances of this worker.
    pub appliances: usize,
    /// Index of its first appliance in the fleet.
    pub first_index: usize,
    /// See [`LoadSettings`].
    pub interval: Duration,
    /// See [`LoadSettings`].
    pub duration: Duration,
    /// See [`LoadSettings`].
    pub enrol_concurrency: usize,
    /// See [`LoadSettings`].
    pub poll_wait: Duration,
    /// See [`LoadSettings`].
    pub inventory_every: u32,
    /// See [`LoadSettings`].
    pub backoff_max: Duration,
    /// See [`LoadSettings`].
    pub seed: u64,
    /// See [`LoadSettings`].
    pub sources: Vec<IpAddr>,
    /// The payload's inventory.
    pub inventory: HostInventory,
    /// The payload's metrics.
    pub metrics: HostMetrics,
    /// `real` or `synthetic`.
    pub payload_source: String,
}

impl WorkerSpec {
    fn settings(self) -> LoadSettings {
        LoadSettings {
            gateways: self.gateways,
            ca_pem: self.ca_pem,
            token: self.token,
            appliances: self.appliances,
            interval: self.interval,
            duration: self.duration,
            enrol_concurrency: self.enrol_concurrency,
            poll_wait: self.poll_wait,
            inventory_every: self.inventory_every,
            backoff_max: self.backoff_max,
            gateway_pids: Vec::new(),
            storm: false,
            ready_file: None,
            seed: self.seed,
            payload: Payload {
                inventory: self.inventory,
                metrics: self.metrics,
                source: if self.payload_source == "real" {
                    "real"
                } else {
                    "synthetic"
                },
            },
            sources: self.sources,
            first_index: self.first_index,
        }
    }
}

/// What a worker says on stdout at each phase, and hears back on stdin to go on.
const WORKER_PHASES: [(Phase, &str, &str); 2] = [
    (Phase::Enrolled, "enrolled", "connect"),
    (Phase::Connected, "connected", "go"),
];

/// A worker's side of the phases: report on stdout, wait for the parent's word on stdin.
struct WorkerPhases {
    stdin: tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>,
}

async fn say(line: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut out = tokio::io::stdout();
    out.write_all(format!("{line}\n").as_bytes())
        .await
        .context("write to the parent")?;
    out.flush().await.context("write to the parent")
}

impl Phases for WorkerPhases {
    async fn reached(&mut self, phase: Phase) -> anyhow::Result<()> {
        let (_, said, expected) = WORKER_PHASES
            .iter()
            .find(|(p, _, _)| *p == phase)
            .context("unknown phase")?;
        say(said).await?;
        let heard = self
            .stdin
            .next_line()
            .await
            .context("read from the parent")?
            .context("the parent closed stdin")?;
        anyhow::ensure!(
            heard.trim() == *expected,
            "the parent said {heard:?}, expected {expected:?}"
        );
        Ok(())
    }

    fn keeps_samples(&self) -> bool {
        true
    }
}

/// The worker's side of [`run_workers`] (`outpost-loadgen --worker`): reads its
/// [`WorkerSpec`] from stdin, runs its share phase by phase, prints its report as one JSON
/// line on stdout.
///
/// # Errors
/// A bad spec, a failed run, or the parent gone.
pub async fn run_worker() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let line = stdin
        .next_line()
        .await
        .context("read the worker spec")?
        .context("no worker spec on stdin")?;
    let spec: WorkerSpec = serde_json::from_str(&line).context("parse the worker spec")?;
    let report = run_phased(spec.settings(), &mut WorkerPhases { stdin }).await?;
    say(&serde_json::to_string(&report)?).await
}

/// One worker process as the parent sees it.
struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    index: usize,
}

impl Worker {
    async fn expect(&mut self, what: &str, within: Duration) -> anyhow::Result<String> {
        let line = tokio::time::timeout(within, self.stdout.next_line())
            .await
            .with_context(|| format!("worker {} did not say {what} within {within:?}", self.index))?
            .with_context(|| format!("read from worker {}", self.index))?
            .with_context(|| format!("worker {} ended before {what}", self.index))?;
        Ok(line)
    }

    async fn tell(&mut self, line: &str) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .with_context(|| format!("write to worker {}", self.index))?;
        self.stdin
            .flush()
            .await
            .with_context(|| format!("write to worker {}", self.index))
    }
}

/// Runs the fleet of `s` split over `workers` processes of `exe` (`outpost-loadgen`, run
/// with `--worker`), measures the gateways itself at the same phases as [`run`] does, and
/// adds the workers' reports up. The workers are killed if this returns early.
///
/// # Errors
/// Storm mode (one process only), a worker that fails or falls silent past its bound.
#[allow(clippy::too_many_lines, clippy::cast_precision_loss)]
pub async fn run_workers(
    s: LoadSettings,
    workers: usize,
    exe: &std::path::Path,
) -> anyhow::Result<LoadReport> {
    use tokio::io::AsyncBufReadExt;
    anyhow::ensure!(!s.storm, "storm mode runs in one process; drop --workers");
    anyhow::ensure!(!s.gateways.is_empty(), "no gateway to load");
    anyhow::ensure!(s.appliances > 0, "no appliances to simulate");
    let k = workers.clamp(1, s.appliances);
    // Enrolment runs at a few hundred per second; allow far more.
    let setup_bound = Duration::from_secs(300)
        + Duration::from_millis(50) * u32::try_from(s.appliances).unwrap_or(u32::MAX);
    let run_bound = s.duration + Duration::from_secs(300);
    let u_start = usage_of(&s.gateway_pids);
    let started = Instant::now();
    let mut ws = Vec::with_capacity(k);
    let mut first = s.first_index;
    for index in 0..k {
        let share = s.appliances / k + usize::from(index < s.appliances % k);
        let spec = WorkerSpec {
            gateways: s.gateways.clone(),
            ca_pem: s.ca_pem.clone(),
            token: s.token.clone(),
            appliances: share,
            first_index: first,
            interval: s.interval,
            duration: s.duration,
            enrol_concurrency: s.enrol_concurrency.div_ceil(k).max(1),
            poll_wait: s.poll_wait,
            inventory_every: s.inventory_every,
            backoff_max: s.backoff_max,
            seed: s.seed,
            sources: s.sources.clone(),
            inventory: s.payload.inventory.clone(),
            metrics: s.payload.metrics.clone(),
            payload_source: s.payload.source.to_string(),
        };
        first += share;
        let mut child = tokio::process::Command::new(exe)
            .arg("--worker")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start worker {index}: {}", exe.display()))?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let mut w = Worker {
            child,
            stdin,
            stdout: tokio::io::BufReader::new(stdout).lines(),
            index,
        };
        w.tell(&serde_json::to_string(&spec)?).await?;
        ws.push(w);
    }
    for w in &mut ws {
        let l = w.expect("enrolled", setup_bound).await?;
        anyhow::ensure!(l == "enrolled", "worker {} said {l:?}", w.index);
    }
    let enrol_secs = started.elapsed().as_secs_f64();
    let u_enrolled = usage_of(&s.gateway_pids);
    let connecting = Instant::now();
    for w in &mut ws {
        w.tell("connect").await?;
    }
    for w in &mut ws {
        let l = w.expect("connected", setup_bound).await?;
        anyhow::ensure!(l == "connected", "worker {} said {l:?}", w.index);
    }
    let connect_secs = connecting.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let u_connected = usage_of(&s.gateway_pids);
    for w in &mut ws {
        w.tell("go").await?;
    }
    let mut parts = Vec::with_capacity(k);
    for w in &mut ws {
        let l = w.expect("its report", run_bound).await?;
        let r: LoadReport =
            serde_json::from_str(&l).with_context(|| format!("worker {}'s report", w.index))?;
        parts.push(r);
    }
    for w in &mut ws {
        let st = tokio::time::timeout(Duration::from_secs(30), w.child.wait())
            .await
            .with_context(|| format!("worker {} did not exit", w.index))??;
        anyhow::ensure!(st.success(), "worker {} failed: {st}", w.index);
    }
    let u_end = usage_of(&s.gateway_pids);

    let mut report = LoadReport {
        appliances: s.appliances,
        gateways: s.gateways.iter().map(ToString::to_string).collect(),
        sources: s.sources.iter().map(ToString::to_string).collect(),
        workers: k,
        payload: s.payload.source.to_string(),
        enrol_secs,
        enrol_per_sec: s.appliances as f64 / enrol_secs.max(f64::MIN_POSITIVE),
        connect_secs,
        ..LoadReport::default()
    };
    let mut lat = Latency::default();
    for p in parts {
        report.batch_bytes_with_inventory = p.batch_bytes_with_inventory;
        report.batch_bytes_metrics_only = p.batch_bytes_metrics_only;
        report.run_secs = report.run_secs.max(p.run_secs);
        report.batches_sent += p.batches_sent;
        report.batches_acked += p.batches_acked;
        report.records_acked += p.records_acked;
        report.duplicates += p.duplicates;
        report.busy_answers += p.busy_answers;
        report.polls_answered += p.polls_answered;
        report.reconnects += p.reconnects;
        for (k, v) in p.errors {
            *report.errors.entry(k).or_insert(0) += v;
        }
        lat.samples.extend(p.latency_samples_ms);
    }
    report.batches_per_sec = report.batches_acked as f64 / report.run_secs.max(f64::MIN_POSITIVE);
    report.records_per_sec = report.records_acked as f64 / report.run_secs.max(f64::MIN_POSITIVE);
    report.ingest_latency = LatencySummary::of(lat);
    fill_gateway_usage(
        &mut report,
        &s.gateway_pids,
        [&u_start, &u_enrolled, &u_connected, &u_end],
    );
    Ok(report)
}
