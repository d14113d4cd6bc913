//! What the fault tests share: a seeded RNG for fault timing, the stored records of an
//! appliance (`appliances records ID --json`), a ledger that proves what was stored once is
//! never changed or repeated, the exactly-once check, and the drain that ends a fault test
//! with everything the collector ever collected either stored or accounted for.
//!
//! # The exactly-once check
//!
//! The collector numbers every record it collects with a per-appliance record id (`rid`:
//! 1, 2, 3, … without gaps unless the spool cap evicted some). So "every record exactly
//! once" is checkable from the store alone: the stored rids are unique and, with the
//! evicted (or corrupted) ones added back, are exactly `1..=max`. Batches are checked to be
//! contiguous (`batches == last_seq`) and records to follow collection order (rid order is
//! seq order is `collected_at` order).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use outpost_proto::{Envelope, HostMetrics, IngestBatch, Record};
use serde_json::Value;

use crate::collector::Collector;
use crate::gateway::{count, Gateway};
use crate::wait::wait_for;

/// Environment variable that fixes the fault seed, to replay a run.
pub const SEED_ENV: &str = "OUTPOST_FAULT_SEED";

/// A small deterministic RNG (splitmix64): fault timings come from it, so a failing run can
/// be replayed with its seed.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// An RNG starting at `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The seed from [`SEED_ENV`] when set, else one from the clock; printed (with how to
    /// replay it) so it shows in the output of a failing test.
    #[must_use]
    pub fn from_env_or_clock(test: &str) -> Self {
        let seed = std::env::var(SEED_ENV)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or_else(|| {
                let d = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                u64::try_from(d.as_nanos() & u128::from(u64::MAX)).unwrap_or(0)
                    ^ u64::from(std::process::id())
            });
        eprintln!("{test}: fault seed {seed} (replay with {SEED_ENV}={seed})");
        Self::new(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// A duration of `lo_ms..=hi_ms` milliseconds.
    pub fn millis(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(self.between(lo_ms, hi_ms))
    }
}

/// One row of `appliances records ID --json`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    /// Record id given by the collector.
    pub rid: u64,
    /// The batch that carried it.
    pub seq: u64,
    /// `inventory`, `metrics`, …
    pub kind: String,
    /// Collection time as printed (RFC 3339 text or unix milliseconds).
    pub collected_at: Value,
    /// `collected_at_ms` when printed too.
    pub collected_at_ms: Option<i64>,
}

impl StoredRecord {
    /// Collection time in unix milliseconds, when it can be read.
    #[must_use]
    pub fn collected_at_ms(&self) -> Option<i64> {
        self.collected_at_ms
            .or_else(|| collected_at_ms(&self.collected_at))
    }

    fn from_json(v: &Value) -> anyhow::Result<Self> {
        let num = |k: &str| {
            v[k].as_u64()
                .with_context(|| format!("record has no unsigned `{k}`: {v}"))
        };
        Ok(Self {
            rid: num("rid")?,
            seq: num("seq")?,
            kind: v["kind"]
                .as_str()
                .with_context(|| format!("record has no string `kind`: {v}"))?
                .to_string(),
            collected_at: v
                .get("collected_at")
                .cloned()
                .with_context(|| format!("record has no `collected_at`: {v}"))?,
            collected_at_ms: v["collected_at_ms"].as_i64(),
        })
    }
}

/// A batch of `n` metrics records with rids `first_rid..first_rid + n`, as a collector
/// would send under backlog (for test appliances that drive the wire themselves).
#[must_use]
pub fn metrics_batch(seq: u64, first_rid: u64, n: u64) -> IngestBatch {
    let now = crate::now_ms();
    let records = (0..n)
        .map(|i| Envelope {
            rid: first_rid + i,
            record: Record::Metrics {
                collected_at_ms: now,
                metrics: HostMetrics {
                    uptime_secs: first_rid + i,
                    load_avg: [0.5, 0.25, 0.125],
                    process_count: 42,
                    ..HostMetrics::default()
                },
            },
        })
        .collect();
    IngestBatch { seq, records }
}

/// Unix milliseconds of a `collected_at` printed as a number or as RFC 3339 text.
#[must_use]
pub fn collected_at_ms(v: &Value) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return Some(n);
    }
    let text = v.as_str()?;
    let utc = text
        .strip_suffix("+00:00")
        .map_or_else(|| text.to_string(), |t| format!("{t}Z"));
    let t = humantime::parse_rfc3339_weak(&utc).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// Every stored record of appliance `id`, as `appliances records ID --json` prints them
/// (a JSON array, or an object holding one under `records`).
///
/// # Errors
/// When the command fails or prints something else.
pub fn stored_records(gw: &Gateway, id: &str) -> anyhow::Result<Vec<StoredRecord>> {
    stored_records_of_kind(gw, id, None)
}

/// [`stored_records`], only those of `kind` when given (`--kind K`).
///
/// # Errors
/// As [`stored_records`].
pub fn stored_records_of_kind(
    gw: &Gateway,
    id: &str,
    kind: Option<&str>,
) -> anyhow::Result<Vec<StoredRecord>> {
    let mut args = vec!["appliances", "records", id, "--json", "--limit", "1000000"];
    if let Some(k) = kind {
        args.extend(["--kind", k]);
    }
    let out = gw.cli_ok(&args)?;
    let v: Value = serde_json::from_str(&out)
        .with_context(|| format!("appliances records --json printed: {out}"))?;
    let rows = match &v {
        Value::Array(a) => a,
        Value::Object(o) => o
            .get("records")
            .and_then(Value::as_array)
            .with_context(|| format!("appliances records --json: no array: {out}"))?,
        _ => bail!("appliances records --json printed neither an array nor an object: {out}"),
    };
    rows.iter().map(StoredRecord::from_json).collect()
}

/// Remembers every record seen in the store across a run and checks each new look
/// against it: a stored record never changes (same seq, kind, collection time), never
/// disappears, and no rid is stored twice.
#[derive(Debug, Default)]
pub struct Ledger {
    seen: BTreeMap<u64, StoredRecord>,
    looks: usize,
}

impl Ledger {
    /// An empty ledger.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks one look at the store against everything seen before, then remembers it.
    ///
    /// # Errors
    /// Naming the first rid that is repeated, changed or gone.
    pub fn observe(&mut self, look: &[StoredRecord]) -> anyhow::Result<()> {
        self.looks += 1;
        let mut now = BTreeMap::new();
        for r in look {
            if let Some(first) = now.insert(r.rid, r.clone()) {
                bail!(
                    "look {}: rid {} is stored twice: {first:?} and {r:?}",
                    self.looks,
                    r.rid
                );
            }
        }
        for (rid, before) in &self.seen {
            match now.get(rid) {
                None => bail!(
                    "look {}: rid {rid} was stored before ({before:?}) and is gone",
                    self.looks
                ),
                Some(r) if r != before => bail!(
                    "look {}: rid {rid} changed from {before:?} to {r:?}",
                    self.looks
                ),
                Some(_) => {}
            }
        }
        self.seen = now;
        Ok(())
    }

    /// Looks at the store of `gw` for `id` and checks it ([`Ledger::observe`]).
    ///
    /// # Errors
    /// When the store cannot be read or the look is inconsistent.
    pub fn look(&mut self, gw: &Gateway, id: &str) -> anyhow::Result<usize> {
        let recs = stored_records(gw, id)?;
        self.observe(&recs)?;
        Ok(recs.len())
    }

    /// How many looks were checked.
    #[must_use]
    pub fn looks(&self) -> usize {
        self.looks
    }
}

/// What the collector's spool held under each rid, across looks at its disk: the
/// content check of the exactly-once proof. A rid never names two different records on
/// the box, and the store holds, under each rid, the record the box spooled under it.
#[derive(Debug, Default)]
pub struct SpoolWitness {
    seen: BTreeMap<u64, (String, Option<i64>)>,
}

impl SpoolWitness {
    /// An empty witness.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads every whole frame in `state_dir`'s spool and remembers its kind and
    /// collection time. Returns how many frames it read.
    ///
    /// # Errors
    /// When the spool cannot be read, or a rid names a record different from the one it
    /// named before.
    pub fn look(&mut self, state_dir: &std::path::Path) -> anyhow::Result<usize> {
        let frames = crate::spool::all_frames(state_dir)?;
        for f in &frames {
            let content = (f.kind.clone(), f.collected_at_ms);
            match self.seen.get(&f.rid) {
                Some(before) if *before != content => bail!(
                    "rid {} names two records on the box: {before:?} and then {content:?}",
                    f.rid
                ),
                Some(_) => {}
                None => {
                    self.seen.insert(f.rid, content);
                }
            }
        }
        Ok(frames.len())
    }

    /// Records seen.
    #[must_use]
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none was seen.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Fails unless every record seen on the box is stored under its rid with the same
    /// kind and collection time.
    ///
    /// # Errors
    /// Naming the first difference.
    pub fn require_stored(&self, set: &RecordSet) -> anyhow::Result<()> {
        for (rid, (kind, at)) in &self.seen {
            let Some(r) = set.by_rid.get(rid) else {
                bail!("rid {rid} ({kind}) was spooled on the box and is not stored");
            };
            if r.kind != *kind || (at.is_some() && r.collected_at_ms() != *at) {
                bail!(
                    "rid {rid} was spooled as {kind} collected at {at:?} but stored as {} collected at {:?}",
                    r.kind,
                    r.collected_at_ms()
                );
            }
        }
        Ok(())
    }
}

/// What the store holds for one appliance, checked for uniqueness and order.
#[derive(Debug, Clone)]
pub struct RecordSet {
    /// Stored records by rid.
    pub by_rid: BTreeMap<u64, StoredRecord>,
    /// Highest stored rid (0 when none).
    pub max_rid: u64,
    /// Rids in `1..=max_rid` that are not stored.
    pub missing: Vec<u64>,
}

impl RecordSet {
    /// Checks `records`: no rid twice; in rid order, seq and `collected_at` never go
    /// backwards (records are stored in the order they were collected).
    ///
    /// # Errors
    /// Naming the first violation.
    pub fn check(records: &[StoredRecord]) -> anyhow::Result<Self> {
        let mut by_rid = BTreeMap::new();
        for r in records {
            if r.rid == 0 {
                bail!("rid 0 stored (rids start at 1): {r:?}");
            }
            if let Some(first) = by_rid.insert(r.rid, r.clone()) {
                bail!("rid {} stored twice: {first:?} and {r:?}", r.rid);
            }
        }
        let mut prev: Option<&StoredRecord> = None;
        for r in by_rid.values() {
            if let Some(p) = prev {
                if r.seq < p.seq {
                    bail!("rid {} is in batch {} but the earlier rid {} is in the later batch {}: records out of order", r.rid, r.seq, p.rid, p.seq);
                }
                if let (Some(a), Some(b)) = (p.collected_at_ms(), r.collected_at_ms()) {
                    if b < a {
                        bail!("rid {} was collected at {b} ms, before rid {} ({a} ms): records out of collection order", r.rid, p.rid);
                    }
                }
            }
            prev = Some(r);
        }
        let max_rid = by_rid.keys().next_back().copied().unwrap_or(0);
        let missing = (1..=max_rid).filter(|r| !by_rid.contains_key(r)).collect();
        Ok(Self {
            by_rid,
            max_rid,
            missing,
        })
    }

    /// Number of stored records.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_rid.len()
    }

    /// Whether nothing is stored.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_rid.is_empty()
    }

    /// Fails unless the stored rids are exactly `1..=max_rid`.
    ///
    /// # Errors
    /// Listing the missing rids.
    pub fn require_gapless(&self) -> anyhow::Result<()> {
        if self.missing.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "{} of rids 1..={} are missing from the store: {}",
                self.missing.len(),
                self.max_rid,
                summarize(&self.missing)
            ))
        }
    }

    /// Count of stored records of `kind`.
    #[must_use]
    pub fn count_kind(&self, kind: &str) -> usize {
        self.by_rid.values().filter(|r| r.kind == kind).count()
    }
}

/// `1-5, 9, 12-14` for a sorted list of numbers.
#[must_use]
pub fn summarize(sorted: &[u64]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(", ")
}

/// Checks `appliances show` against the records listed: batches `1..=last_seq` all stored
/// (`batches == last_seq`), every record's batch within them, and the record counter equal
/// to the rows. Returns the show answer.
///
/// # Errors
/// Naming the mismatch.
pub fn check_batches(gw: &Gateway, id: &str, set: &RecordSet) -> anyhow::Result<Value> {
    let show = gw.show_json(id)?;
    let last_seq = count(&show, "last_seq");
    let batches = count(&show, "batches");
    let records = count(&show, "records");
    if batches != last_seq {
        bail!("{batches} batches stored but last_seq is {last_seq}: batches are not contiguous (show: {show})");
    }
    if let Some(r) = set.by_rid.values().find(|r| r.seq == 0 || r.seq > last_seq) {
        bail!("rid {} is in batch {} outside 1..={last_seq}", r.rid, r.seq);
    }
    let seqs: BTreeSet<u64> = set.by_rid.values().map(|r| r.seq).collect();
    if let Some(max) = seqs.iter().next_back() {
        if *max != last_seq {
            bail!("the newest record is in batch {max} but last_seq is {last_seq}");
        }
    }
    if records != set.len() as u64 {
        bail!(
            "appliances show counts {records} records but appliances records lists {}",
            set.len()
        );
    }
    Ok(show)
}

/// Polls the store until it stops changing: the same (record count, highest rid,
/// last_seq) for `quiet`. Each look goes through `ledger`. Returns the final records.
///
/// # Errors
/// On timeout, or when a look is inconsistent.
pub fn wait_store_quiet(
    gw: &Gateway,
    id: &str,
    ledger: &mut Ledger,
    quiet: Duration,
    timeout: Duration,
) -> anyhow::Result<Vec<StoredRecord>> {
    let mut last: Option<((usize, u64, u64), Instant)> = None;
    wait_for(
        "the store to stop changing",
        timeout,
        Duration::from_millis(300),
        || {
            let recs = stored_records(gw, id)?;
            ledger
                .observe(&recs)
                .map_err(|e| crate::wait::abort(format!("{e:#}")))?;
            let last_seq = count(&gw.show_json(id)?, "last_seq");
            let key = (
                recs.len(),
                recs.iter().map(|r| r.rid).max().unwrap_or(0),
                last_seq,
            );
            match last {
                Some((k, since)) if k == key => {
                    if since.elapsed() >= quiet {
                        return Ok(Some(recs));
                    }
                }
                _ => last = Some((key, Instant::now())),
            }
            Ok(None)
        },
    )
}

/// Ends a fault test so that "everything collected" is a known set: stops the collector
/// (SIGTERM, which must succeed), restarts it with a one-hour interval so it collects
/// nothing new while it sends its backlog, waits until the store stops changing, stops it
/// again and requires its spool to hold nothing unacknowledged (read from disk with
/// [`crate::spool`]). Returns the stored records.
///
/// # Errors
/// When the collector does not stop cleanly, the store never settles, or the spool still
/// holds records.
pub fn drain_collector(
    collector: &mut Collector,
    gw: &Gateway,
    id: &str,
    ledger: &mut Ledger,
) -> anyhow::Result<Vec<StoredRecord>> {
    if collector.is_running()? {
        stop_cleanly(collector, "before the drain")?;
    }
    collector.set_config("interval", "1h")?;
    let mut left = Vec::new();
    for round in 1..=3 {
        collector.start()?;
        let recs = wait_store_quiet(gw, id, ledger, Duration::from_secs(3), DRAIN_TIMEOUT)
            .map_err(|e| e.context(format!("collector log tail:\n{}", collector.log_tail(30))))?;
        stop_cleanly(collector, "after the drain")?;
        left = crate::spool::unsent_frames(collector.state_dir())?;
        if left.is_empty() {
            // The collector's own account agrees.
            let st = collector.status_json()?;
            if st["spool_depth"].as_u64() != Some(0) {
                bail!("the spool holds no unacknowledged frame but `status --json` says otherwise: {st}");
            }
            return Ok(recs);
        }
        eprintln!(
            "drain round {round}: {} records still spooled (rids {}); once more",
            left.len(),
            summarize(&left.iter().map(|f| f.rid).collect::<Vec<_>>())
        );
    }
    bail!(
        "after three drains the collector's spool still holds {} unacknowledged records (rids {})",
        left.len(),
        summarize(&left.iter().map(|f| f.rid).collect::<Vec<_>>())
    )
}

/// SIGTERM; the collector must exit 0.
///
/// # Errors
/// When it is not running, had to be killed or exited otherwise.
pub fn stop_cleanly(collector: &mut Collector, when: &str) -> anyhow::Result<()> {
    let st = collector
        .stop()
        .with_context(|| format!("stopping the collector {when}"))?;
    if !st.success() {
        bail!(
            "the collector exited with {st} on SIGTERM {when}; log tail:\n{}",
            collector.log_tail(30)
        );
    }
    Ok(())
}

/// Bound on one drain of the collector's backlog.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(rid: u64, seq: u64, at: i64) -> StoredRecord {
        StoredRecord {
            rid,
            seq,
            kind: "metrics".into(),
            collected_at: Value::from(at),
            collected_at_ms: None,
        }
    }

    #[test]
    fn seeded_rng_replays_and_stays_in_range() {
        let mut a = SeededRng::new(7);
        let mut b = SeededRng::new(7);
        for _ in 0..100 {
            let x = a.between(10, 20);
            assert_eq!(x, b.between(10, 20));
            assert!((10..=20).contains(&x));
        }
    }

    #[test]
    fn record_set_finds_gaps_and_repeats() {
        let set = RecordSet::check(&[rec(1, 1, 10), rec(2, 1, 10), rec(4, 2, 20)]).unwrap();
        assert_eq!(set.missing, vec![3]);
        assert!(set.require_gapless().is_err());
        assert!(RecordSet::check(&[rec(1, 1, 10), rec(1, 2, 20)]).is_err());
        assert!(RecordSet::check(&[rec(1, 2, 10), rec(2, 1, 20)]).is_err());
        assert!(RecordSet::check(&[rec(1, 1, 20), rec(2, 1, 10)]).is_err());
    }

    #[test]
    fn ledger_refuses_changed_or_vanished_records() {
        let mut l = Ledger::new();
        l.observe(&[rec(1, 1, 10)]).unwrap();
        l.observe(&[rec(1, 1, 10), rec(2, 2, 20)]).unwrap();
        assert!(l.clone_for_test().observe(&[rec(2, 2, 20)]).is_err());
        assert!(l
            .clone_for_test()
            .observe(&[rec(1, 1, 11), rec(2, 2, 20)])
            .is_err());
    }

    impl Ledger {
        fn clone_for_test(&self) -> Self {
            Self {
                seen: self.seen.clone(),
                looks: self.looks,
            }
        }
    }

    #[test]
    fn collected_at_reads_numbers_and_rfc3339() {
        assert_eq!(collected_at_ms(&Value::from(1234)), Some(1234));
        assert_eq!(
            collected_at_ms(&Value::from("1970-01-01T00:00:01.5Z")),
            Some(1500)
        );
        assert_eq!(
            collected_at_ms(&Value::from("1970-01-01T00:00:02+00:00")),
            Some(2000)
        );
    }

    #[test]
    fn summarize_folds_runs() {
        assert_eq!(summarize(&[1, 2, 3, 5, 7, 8]), "1-3, 5, 7-8");
    }
}
