//! The send path: collect → outbox → `POST /v1/ingest` → trim.
//!
//! Every interval the collector samples the host and writes one batch to the outbox
//! *before* anything is sent: an `Inventory` record when the inventory differs from the
//! newest one the gateway has or will get, and always a `Metrics` record. Sequence numbers
//! continue from the highest of the acknowledged sequence and the outbox.
//!
//! A separate task sends the outbox oldest first over mTLS, so collection never waits for
//! the network. On an acknowledgement `state.json` is updated first and the acknowledged
//! files removed second (a crash in between leaves files that are trimmed on the next
//! start, never a sequence that could be reused). A `409 sequence_gap` renumbers the waiting
//! batches from the sequence the gateway expects. A 403 (revoked or unknown certificate)
//! is logged as an error and retried every interval while batches keep being spooled.
//! Network errors and 5xx answers fail over to the next gateway and back off with full
//! jitter.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outpost_proto::{
    content_hash, paths, HostInventory, HostMetrics, IngestAck, IngestBatch, Record,
};
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::failover::{AfterFailure, GatewayRing};
use crate::http::{error_chain, url, ErrorReply};
use crate::outbox::{Outbox, OutboxError};
use crate::shutdown::Shutdown;
use crate::sources::HostSource;
use crate::state::{StateError, UplinkState, OUTBOX_DIR};

/// An uplink operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UplinkError {
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// `state.json` failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A blocking task died.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Builds the records of one collection. An `Inventory` record is included only when the
/// inventory's hash differs from `known_hash`, the newest inventory the gateway has
/// acknowledged or will receive from the outbox; a `Metrics` record always is.
#[must_use]
pub fn plan_records(
    inventory: HostInventory,
    metrics: HostMetrics,
    collected_at_ms: i64,
    known_hash: Option<&str>,
) -> Vec<Record> {
    let hash = content_hash(&inventory);
    let mut records = Vec::with_capacity(2);
    if known_hash != Some(hash.as_str()) {
        records.push(Record::Inventory {
            collected_at_ms,
            hash,
            inventory,
        });
    }
    records.push(Record::Metrics {
        collected_at_ms,
        metrics,
    });
    records
}

/// The outbox plus `state.json`: everything the uplink keeps on disk.
#[derive(Debug)]
pub struct Queue {
    state_dir: std::path::PathBuf,
    outbox: Outbox,
    state: UplinkState,
    max_batches: usize,
}

/// What [`Queue::append`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Sequence given to the new batch.
    pub seq: u64,
    /// Whether it carries an inventory record.
    pub with_inventory: bool,
    /// Oldest batches dropped to respect the cap.
    pub dropped: usize,
}

/// What the queue did with an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// Batches removed from the outbox.
    pub removed: usize,
}

impl Queue {
    /// Opens the queue in `state_dir`, removing batches already acknowledged (left by a
    /// crash between the state update and the trim).
    ///
    /// # Errors
    /// [`UplinkError`] when `state.json` or the outbox cannot be read.
    pub fn open(state_dir: &std::path::Path, max_batches: usize) -> Result<Self, UplinkError> {
        let state = UplinkState::load(state_dir)?;
        let mut outbox = Outbox::open(&state_dir.join(OUTBOX_DIR))?;
        outbox.remove_through(state.last_acked_seq)?;
        Ok(Self {
            state_dir: state_dir.to_path_buf(),
            outbox,
            state,
            max_batches: max_batches.max(1),
        })
    }

    /// The acknowledged state.
    #[must_use]
    pub fn state(&self) -> &UplinkState {
        &self.state
    }

    /// The outbox.
    #[must_use]
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Hash of the newest inventory the gateway has or will get.
    #[must_use]
    pub fn known_inventory_hash(&self) -> Option<&str> {
        self.outbox
            .latest_inventory_hash()
            .or(self.state.acked_inventory_hash.as_deref())
    }

    /// The sequence the next batch gets.
    #[must_use]
    pub fn next_seq(&self) -> u64 {
        self.outbox
            .last_seq()
            .unwrap_or(0)
            .max(self.state.last_acked_seq)
            .saturating_add(1)
    }

    /// Writes one collection as a new batch, then drops the oldest batches beyond the cap.
    ///
    /// # Errors
    /// [`UplinkError::Outbox`] when the batch cannot be written.
    pub fn append(
        &mut self,
        inventory: HostInventory,
        metrics: HostMetrics,
        collected_at_ms: i64,
    ) -> Result<Appended, UplinkError> {
        let records = plan_records(
            inventory,
            metrics,
            collected_at_ms,
            self.known_inventory_hash(),
        );
        let with_inventory = records
            .iter()
            .any(|r| matches!(r, Record::Inventory { .. }));
        let batch = IngestBatch {
            seq: self.next_seq(),
            records,
        };
        self.outbox.write(&batch)?;
        let dropped = self.outbox.trim_to(self.max_batches)?;
        Ok(Appended {
            seq: batch.seq,
            with_inventory,
            dropped,
        })
    }

    /// The oldest waiting batch and its bytes.
    ///
    /// # Errors
    /// [`UplinkError::Outbox`] when the file cannot be read.
    pub fn next_batch(&self) -> Result<Option<(u64, Vec<u8>)>, UplinkError> {
        let Some(seq) = self.outbox.first_seq() else {
            return Ok(None);
        };
        Ok(Some((seq, self.outbox.read(seq)?)))
    }

    /// Applies an acknowledgement: `state.json` first, then the trim.
    ///
    /// # Errors
    /// [`UplinkError`] when the state or outbox cannot be written.
    pub fn acknowledge(&mut self, acked_seq: u64) -> Result<Acked, UplinkError> {
        let mut next = self.state.clone();
        next.last_acked_seq = acked_seq;
        let acked_inventory = self
            .outbox
            .seqs()
            .into_iter()
            .take_while(|s| *s <= acked_seq)
            .filter_map(|s| self.outbox.meta(s).and_then(|m| m.inventory_hash.clone()))
            .last();
        if let Some(h) = acked_inventory {
            next.acked_inventory_hash = Some(h);
        }
        if next != self.state {
            next.write(&self.state_dir)?;
            self.state = next;
        }
        let removed = self.outbox.remove_through(acked_seq)?.len();
        Ok(Acked { removed })
    }

    /// Applies a `sequence_gap` answer: the gateway holds everything below `expected`
    /// and nothing from it on, so the waiting batches are renumbered from `expected`.
    /// When the gateway is behind what we thought acknowledged (it lost data), the
    /// acknowledged inventory is forgotten so the next collection sends it again.
    ///
    /// # Errors
    /// [`UplinkError`] when the state or outbox cannot be written.
    pub fn resequence(&mut self, expected: u64) -> Result<(), UplinkError> {
        let gateway_last = expected.saturating_sub(1);
        let mut next = self.state.clone();
        if gateway_last < next.last_acked_seq {
            next.acked_inventory_hash = None;
        }
        next.last_acked_seq = gateway_last;
        if next != self.state {
            // State first: a crash before the renumbering leaves a gap that is found again.
            next.write(&self.state_dir)?;
            self.state = next;
        }
        self.outbox.renumber_from(expected.max(1))?;
        Ok(())
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
    /// Network error, timeout, 5xx or an unreadable answer.
    Unreachable(String),
}

/// The edge the sender talks through: the real one is HTTPS, tests use a fake.
pub trait IngestTransport: Send + Sync + 'static {
    /// Posts one batch body (zstd JSON) to `gateway`.
    fn send(&self, gateway: &str, body: Vec<u8>) -> impl Future<Output = SendResult> + Send;
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
            .body(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return SendResult::Unreachable(error_chain(&e)),
        };
        let status = resp.status().as_u16();
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return SendResult::Unreachable(error_chain(&e)),
        };
        classify_ingest_answer(status, &bytes)
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

/// The queue shared by the collecting and the sending task.
pub type SharedQueue = Arc<Mutex<Queue>>;

/// Runs `f` on the queue on the blocking pool (it does file I/O and fsyncs).
///
/// # Errors
/// [`UplinkError::Task`] when the blocking task panicked.
pub async fn with_queue<T, F>(queue: &SharedQueue, f: F) -> Result<T, UplinkError>
where
    T: Send + 'static,
    F: FnOnce(&mut Queue) -> T + Send + 'static,
{
    let q = Arc::clone(queue);
    tokio::task::spawn_blocking(move || {
        let mut guard = q.lock().unwrap_or_else(PoisonError::into_inner);
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

/// The collecting task: samples every interval (the gateway may change it through
/// `interval`), writes a batch, wakes the sender. Stops between collections on shutdown.
///
/// # Errors
/// [`UplinkError::Task`] when sampling panicked.
pub async fn collect_loop(
    queue: SharedQueue,
    wake_sender: Arc<Notify>,
    mut interval: watch::Receiver<Duration>,
    mut shutdown: Shutdown,
) -> Result<(), UplinkError> {
    let mut source = tokio::task::spawn_blocking(HostSource::new)
        .await
        .map_err(|e| UplinkError::Task(e.to_string()))?;
    // CPU use needs two samples some time apart.
    if shutdown.sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL).await {
        return Ok(());
    }
    let mut period = *interval.borrow_and_update();
    let mut ticker = new_ticker(period);
    // Once the config task is gone the interval can no longer change.
    let mut interval_open = true;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = interval.changed(), if interval_open => {
                if changed.is_ok() {
                    let p = *interval.borrow_and_update();
                    if p != period {
                        period = p;
                        ticker = new_ticker_after(period);
                    }
                } else {
                    interval_open = false;
                }
                continue;
            }
            () = shutdown.wait() => return Ok(()),
        }
        let (src, (inventory, metrics)) = tokio::task::spawn_blocking(move || {
            let sample = source.collect();
            (source, sample)
        })
        .await
        .map_err(|e| UplinkError::Task(e.to_string()))?;
        source = src;
        let at = now_ms();
        match with_queue(&queue, move |q| q.append(inventory, metrics, at)).await? {
            Ok(a) => {
                debug!(seq = a.seq, inventory = a.with_inventory, "batch written");
                if a.with_inventory {
                    info!(seq = a.seq, "inventory changed; queued for sending");
                }
                if a.dropped > 0 {
                    warn!(
                        dropped = a.dropped,
                        "outbox is full: dropped the {} oldest batch(es) unsent", a.dropped
                    );
                }
                wake_sender.notify_one();
            }
            Err(e) => error!("this collection is lost: {e}"),
        }
    }
}

fn new_ticker(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

fn new_ticker_after(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Everything the sending task needs.
pub struct Sender<T: IngestTransport> {
    /// The queue shared with the collector.
    pub queue: SharedQueue,
    /// Woken when a batch is written.
    pub wake: Arc<Notify>,
    /// The transport.
    pub transport: T,
    /// Gateways in order.
    pub ring: GatewayRing,
    /// The collection interval (retry period while forbidden).
    pub interval: watch::Receiver<Duration>,
    /// Appliance id, for messages.
    pub appliance_id: String,
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
    /// Sends the oldest waiting batch once and applies the answer.
    ///
    /// # Errors
    /// [`UplinkError`] when the queue cannot be read or updated.
    pub async fn step(&mut self, backoff: &mut Backoff) -> Result<Next, UplinkError> {
        self.ring.maybe_fail_back(Instant::now());
        let Some((seq, body)) = with_queue(&self.queue, |q| q.next_batch()).await?? else {
            return Ok(Next::Idle);
        };
        let gateway = self.ring.current().to_string();
        let result = self.transport.send(&gateway, body).await;
        match result {
            SendResult::Acked(ack) => {
                self.ring.on_success(Instant::now());
                if backoff.attempts() > 0 {
                    info!(gateway = %gateway, "gateway reachable again; sending the outbox");
                }
                backoff.reset();
                let acked = ack.acked_seq;
                let done = with_queue(&self.queue, move |q| q.acknowledge(acked)).await??;
                debug!(seq, acked_seq = acked, duplicate = ack.duplicate, removed = done.removed, gateway = %gateway, "batch acknowledged");
                if acked < seq {
                    warn!(seq, acked_seq = acked, gateway = %gateway, "gateway acknowledged less than it was sent; retrying later");
                    return Ok(Next::Wait(backoff.next_random_delay()));
                }
                Ok(Next::Continue)
            }
            SendResult::Gap { expected, reply } => {
                self.ring.on_success(Instant::now());
                let pending = with_queue(&self.queue, |q| q.outbox().len()).await?;
                warn!(
                    gateway = %gateway,
                    seq,
                    expected_seq = expected,
                    "gateway expects sequence {expected}, not {seq} ({}); renumbering {pending} waiting batch(es)",
                    reply.message
                );
                if expected == seq {
                    // Nothing to renumber; the gateway is confused. Do not spin.
                    return Ok(Next::Wait(backoff.next_random_delay()));
                }
                with_queue(&self.queue, move |q| q.resequence(expected)).await??;
                Ok(Next::Continue)
            }
            SendResult::Forbidden(reply) => {
                self.ring.on_success(Instant::now());
                let pending = with_queue(&self.queue, |q| q.outbox().len()).await?;
                error!(
                    appliance = %self.appliance_id,
                    gateway = %gateway,
                    "gateway refuses appliance {} (revoked, or unknown to this gateway): {}; \
                     keeping {pending} batch(es) and retrying every interval",
                    self.appliance_id,
                    reply.message
                );
                Ok(Next::Wait(*self.interval.borrow()))
            }
            SendResult::Rejected(reply) => {
                self.ring.on_success(Instant::now());
                error!(gateway = %gateway, seq, "gateway refused batch {seq}: {reply}; keeping it and retrying");
                Ok(Next::Wait(backoff.next_random_delay()))
            }
            SendResult::Unreachable(why) => {
                warn!(gateway = %gateway, seq, "sending batch {seq} failed: {why}");
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

    /// The sending task: sends until the outbox is empty, then waits for the collector;
    /// stops at the next wait on shutdown (an interrupted request is simply resent later).
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut backoff = Backoff::default();
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
    use std::collections::VecDeque;

    fn inv(name: &str) -> HostInventory {
        HostInventory {
            hostname: name.into(),
            ..HostInventory::default()
        }
    }

    fn kinds(records: &[Record]) -> Vec<&'static str> {
        records.iter().map(Record::kind).collect()
    }

    #[test]
    fn inventory_only_when_changed() {
        let a = inv("a");
        let ha = content_hash(&a);
        let r = plan_records(a.clone(), HostMetrics::default(), 5, None);
        assert_eq!(kinds(&r), ["inventory", "metrics"]);
        let r = plan_records(a.clone(), HostMetrics::default(), 5, Some(&ha));
        assert_eq!(kinds(&r), ["metrics"]);
        let r = plan_records(inv("b"), HostMetrics::default(), 5, Some(&ha));
        assert_eq!(kinds(&r), ["inventory", "metrics"]);
        match &r[0] {
            Record::Inventory { hash, .. } => assert_eq!(hash, &content_hash(&inv("b"))),
            Record::Metrics { .. } => unreachable!(),
        }
    }

    #[test]
    fn queue_sends_inventory_once_then_after_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path(), 100).unwrap();
        let a1 = q.append(inv("a"), HostMetrics::default(), 1).unwrap();
        assert_eq!((a1.seq, a1.with_inventory), (1, true));
        // Still waiting in the outbox: not again.
        let a2 = q.append(inv("a"), HostMetrics::default(), 2).unwrap();
        assert_eq!((a2.seq, a2.with_inventory), (2, false));
        q.acknowledge(2).unwrap();
        assert_eq!(q.state().last_acked_seq, 2);
        assert_eq!(
            q.state().acked_inventory_hash.as_deref(),
            Some(content_hash(&inv("a")).as_str())
        );
        assert!(q.outbox().is_empty());
        // Acknowledged: not again, even after a restart.
        let mut q = Queue::open(dir.path(), 100).unwrap();
        let a3 = q.append(inv("a"), HostMetrics::default(), 3).unwrap();
        assert_eq!((a3.seq, a3.with_inventory), (3, false));
        // Changed, then changed back while the change is still waiting: both are sent.
        assert!(
            q.append(inv("b"), HostMetrics::default(), 4)
                .unwrap()
                .with_inventory
        );
        assert!(
            q.append(inv("a"), HostMetrics::default(), 5)
                .unwrap()
                .with_inventory
        );
    }

    #[test]
    fn dropped_inventory_is_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path(), 2).unwrap();
        assert!(
            q.append(inv("a"), HostMetrics::default(), 1)
                .unwrap()
                .with_inventory
        );
        assert!(
            !q.append(inv("a"), HostMetrics::default(), 2)
                .unwrap()
                .with_inventory
        );
        // The cap drops batch 1 (the one with the inventory) while writing batch 3; the
        // inventory comes back with batch 4.
        let a3 = q.append(inv("a"), HostMetrics::default(), 3).unwrap();
        assert_eq!(a3.dropped, 1);
        assert!(
            q.append(inv("a"), HostMetrics::default(), 4)
                .unwrap()
                .with_inventory
        );
    }

    #[test]
    fn seq_continues_after_restart_and_acked_leftovers_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path(), 100).unwrap();
        for t in 0..3 {
            q.append(inv("a"), HostMetrics::default(), t).unwrap();
        }
        // Simulate a crash after state.json was written but before the trim.
        UplinkState {
            last_acked_seq: 2,
            acked_inventory_hash: None,
        }
        .write(dir.path())
        .unwrap();
        let q = Queue::open(dir.path(), 100).unwrap();
        assert_eq!(q.outbox().seqs(), vec![3]);
        assert_eq!(q.next_seq(), 4);
    }

    #[test]
    fn resequence_moves_batches_and_state_to_the_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path(), 100).unwrap();
        for t in 0..3 {
            q.append(inv("a"), HostMetrics::default(), t).unwrap();
        }
        q.acknowledge(1).unwrap();
        assert_eq!(q.outbox().seqs(), vec![2, 3]);
        // The gateway lost everything (e.g. a rebuilt store): it expects 1.
        q.resequence(1).unwrap();
        assert_eq!(q.outbox().seqs(), vec![1, 2]);
        assert_eq!(q.state().last_acked_seq, 0);
        assert_eq!(q.state().acked_inventory_hash, None);
        assert_eq!(q.next_seq(), 3);
        // The next collection carries the inventory again (batch 1 had it but was acked).
        assert!(
            q.append(inv("a"), HostMetrics::default(), 9)
                .unwrap()
                .with_inventory
        );
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(
            classify_ingest_answer(200, br#"{"acked_seq":3,"duplicate":false}"#),
            SendResult::Acked(IngestAck {
                acked_seq: 3,
                duplicate: false
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
            classify_ingest_answer(200, b"nope"),
            SendResult::Unreachable(_)
        ));
    }

    /// A gateway double: answers from a script and records what it was sent.
    #[derive(Clone, Default)]
    struct ScriptedGateway {
        answers: Arc<Mutex<VecDeque<SendResult>>>,
        sent: Arc<Mutex<Vec<(String, u64)>>>,
    }

    impl IngestTransport for ScriptedGateway {
        async fn send(&self, gateway: &str, body: Vec<u8>) -> SendResult {
            let batch = crate::outbox::decode_batch(&body, std::path::Path::new("body")).unwrap();
            self.sent
                .lock()
                .unwrap()
                .push((gateway.to_string(), batch.seq));
            self.answers
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(SendResult::Unreachable("script ended".into()))
        }
    }

    fn ack(n: u64) -> SendResult {
        SendResult::Acked(IngestAck {
            acked_seq: n,
            duplicate: false,
        })
    }

    fn sender(
        dir: &std::path::Path,
        script: Vec<SendResult>,
    ) -> (Sender<ScriptedGateway>, ScriptedGateway) {
        let gw = ScriptedGateway::default();
        gw.answers.lock().unwrap().extend(script);
        let q = Queue::open(dir, 100).unwrap();
        let (_tx, rx) = watch::channel(Duration::from_secs(10));
        let s = Sender {
            queue: Arc::new(Mutex::new(q)),
            wake: Arc::new(Notify::new()),
            transport: gw.clone(),
            ring: GatewayRing::new(vec!["a:1".into(), "b:1".into()]),
            interval: rx,
            appliance_id: "ap-test".into(),
        };
        (s, gw)
    }

    #[tokio::test]
    async fn sender_trims_on_ack_and_fails_over() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, gw) = sender(
            dir.path(),
            vec![ack(1), SendResult::Unreachable("down".into()), ack(2)],
        );
        for t in 0..2 {
            s.queue
                .lock()
                .unwrap()
                .append(inv("a"), HostMetrics::default(), t)
                .unwrap();
        }
        let mut b = Backoff::default();
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Idle);
        assert_eq!(
            *gw.sent.lock().unwrap(),
            vec![("a:1".into(), 1), ("a:1".into(), 2), ("b:1".into(), 2)]
        );
        assert_eq!(UplinkState::load(dir.path()).unwrap().last_acked_seq, 2);
    }

    #[tokio::test]
    async fn sender_renumbers_on_gap_and_waits_when_forbidden() {
        let dir = tempfile::tempdir().unwrap();
        UplinkState {
            last_acked_seq: 10,
            acked_inventory_hash: None,
        }
        .write(dir.path())
        .unwrap();
        let gap = classify_ingest_answer(
            409,
            br#"{"error":"sequence_gap","message":"expected 4","expected_seq":4}"#,
        );
        let forbidden = classify_ingest_answer(403, br#"{"error":"revoked","message":"revoked"}"#);
        let (mut s, gw) = sender(dir.path(), vec![gap, forbidden, ack(4)]);
        s.queue
            .lock()
            .unwrap()
            .append(inv("a"), HostMetrics::default(), 0)
            .unwrap();
        let mut b = Backoff::default();
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        assert_eq!(
            s.step(&mut b).await.unwrap(),
            Next::Wait(Duration::from_secs(10))
        );
        assert_eq!(s.step(&mut b).await.unwrap(), Next::Continue);
        assert_eq!(
            *gw.sent.lock().unwrap(),
            vec![("a:1".into(), 11), ("a:1".into(), 4), ("a:1".into(), 4)]
        );
        let q = s.queue.lock().unwrap();
        assert!(q.outbox().is_empty());
        assert_eq!(q.state().last_acked_seq, 4);
        assert_eq!(q.next_seq(), 5);
    }
}
