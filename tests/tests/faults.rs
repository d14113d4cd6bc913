//! Nothing lost: faults on the real binaries, on loopback, each bounded.
//!
//! Every test ends with the same proof (see `outpost_tests::faults`): the collector is
//! drained (restarted with a long interval until the store settles, then stopped with an
//! empty spool), so everything it ever collected is either stored or counted; the stored
//! record ids are unique and, with the counted losses added back, exactly `1..=max`; batches
//! are contiguous; every look at the store during the run agreed with every later one
//! (a record once stored never changes, disappears or repeats); and every record seen in
//! the box's spool during the run is stored under its rid with the same kind and
//! collection time (a rid never names two records).
//!
//! The spool tests read and damage the collector's segment files with
//! `outpost_tests::spool`, an independent reader of the documented layout, so the
//! expected loss is known exactly before the collector restarts.
//!
//! Fault timings come from a seeded RNG whose seed is printed; set `OUTPOST_FAULT_SEED` to
//! replay a run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_tests::faults::{
    check_batches, drain_collector, metrics_batch, stop_cleanly, stored_records,
    stored_records_of_kind, summarize, Ledger, RecordSet, SeededRng, SpoolWitness, StoredRecord,
};
use outpost_tests::fixtures::{approved_appliance, ENROLL_TIMEOUT, POLL};
use outpost_tests::gateway::count;
use outpost_tests::spool::{self, Frame};
use outpost_tests::{now_ms, wait_for, ApplianceClient, Collector, Gateway, Workdir};

/// Bound on waits for records to show up in the store.
const STORE_TIMEOUT: Duration = Duration::from_secs(60);

/// A gateway on SQLite, a collector enrolled with it, and the ledger of what the store
/// showed. Fields drop in order: the collector and gateway are killed before the
/// directory goes.
struct Rig {
    collector: Collector,
    gw: Gateway,
    id: String,
    ledger: Ledger,
    witness: SpoolWitness,
    _wd: Workdir,
}

/// Starts a gateway and a collector with `interval`, a one-second backoff cap and the
/// `extra` collector keys; waits for its enrolment and first stored record.
fn rig(label: &str, interval: &str, extra: &[(&str, toml::Value)]) -> anyhow::Result<Rig> {
    let wd = Workdir::new(label)?;
    let gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let token = gw.token_create("acme-corp", true, None, None)?;
    let mut collector = Collector::configure(&wd.join("collector"), &gw, &token, interval)?;
    collector.set_config("backoff_max", "1s")?;
    for (k, v) in extra {
        collector.set_config(k, v.clone())?;
    }
    collector.start()?;
    let id = collector.enrollment_id(ENROLL_TIMEOUT)?;
    let mut rig = Rig {
        collector,
        gw,
        id,
        ledger: Ledger::new(),
        witness: SpoolWitness::new(),
        _wd: wd,
    };
    rig.wait_records("the first record to be stored", |r| !r.is_empty())?;
    Ok(rig)
}

impl Rig {
    /// Polls the store (through the ledger) until `pred` holds for the stored records.
    fn wait_records(
        &mut self,
        what: &str,
        pred: impl Fn(&[StoredRecord]) -> bool,
    ) -> anyhow::Result<Vec<StoredRecord>> {
        let (gw, id, ledger) = (&self.gw, &self.id, &mut self.ledger);
        let r = wait_for(what, STORE_TIMEOUT, POLL, || {
            let recs = stored_records(gw, id)?;
            ledger
                .observe(&recs)
                .map_err(|e| outpost_tests::wait::abort(format!("{e:#}")))?;
            Ok(pred(&recs).then_some(recs))
        });
        r.map_err(|e| {
            e.context(format!(
                "collector log tail:\n{}",
                self.collector.log_tail(30)
            ))
        })
    }

    /// One look at the store through the ledger.
    fn look(&mut self) -> anyhow::Result<usize> {
        self.ledger.look(&self.gw, &self.id)
    }

    /// One look at the collector's spool on disk through the witness.
    fn look_at_spool(&mut self) -> anyhow::Result<usize> {
        self.witness.look(self.collector.state_dir())
    }

    /// Drains the collector and checks that every rid `1..=max` is stored exactly once and
    /// batches are contiguous. Returns the checked set.
    fn drain_and_check_exactly_once(&mut self) -> anyhow::Result<RecordSet> {
        let recs = drain_collector(&mut self.collector, &self.gw, &self.id, &mut self.ledger)?;
        let set = RecordSet::check(&recs)?;
        set.require_gapless()?;
        self.witness.require_stored(&set)?;
        let show = check_batches(&self.gw, &self.id, &set)?;
        assert_eq!(
            count(&show, "dropped_records"),
            0,
            "records were dropped although the spool never filled: {show}"
        );
        eprintln!(
            "{} records stored exactly once (rids 1..={}, {} batches, {} looks at the store, {} records seen in the spool)",
            set.len(),
            set.max_rid,
            count(&show, "last_seq"),
            self.ledger.looks(),
            self.witness.len()
        );
        Ok(set)
    }
}

#[test]
fn collector_killed_at_random_points_stores_every_record_exactly_once() -> anyhow::Result<()> {
    let mut rng = SeededRng::from_env_or_clock(
        "collector_killed_at_random_points_stores_every_record_exactly_once",
    );
    let mut rig = rig("kill-collector", "200ms", &[])?;
    for round in 1..=6 {
        let delay = if round % 2 == 0 {
            // Even rounds: a backlog first, so the kill lands while it is caught up
            // (a batch of several records in flight, perhaps stored but not yet acked).
            let away = rng.millis(500, 1500);
            rig.gw.stop()?;
            std::thread::sleep(away);
            rig.gw.restart()?;
            let delay = rng.millis(0, 1200);
            eprintln!(
                "round {round}: gateway away {away:?}; kill -9 the collector {delay:?} after it is back"
            );
            delay
        } else {
            let delay = rng.millis(100, 1500);
            eprintln!("round {round}: kill -9 the collector {delay:?} after its start");
            delay
        };
        std::thread::sleep(delay);
        rig.collector.kill9()?;
        let spooled = rig.look_at_spool()?;
        let stored = rig.look()?;
        eprintln!("round {round}: {stored} records stored, {spooled} in the spool");
        rig.collector.start()?;
    }
    let before = rig.look()?;
    rig.wait_records("records collected after the last kill to be stored", |r| {
        r.len() > before
    })?;
    let set = rig.drain_and_check_exactly_once()?;
    assert!(
        set.count_kind("metrics") >= 5,
        "too few metrics records to prove anything: {}",
        set.count_kind("metrics")
    );
    Ok(())
}

#[test]
fn gateway_killed_mid_ingest_stores_every_record_exactly_once() -> anyhow::Result<()> {
    let mut rng =
        SeededRng::from_env_or_clock("gateway_killed_mid_ingest_stores_every_record_exactly_once");
    let mut rig = rig("kill-gateway", "100ms", &[])?;
    for round in 1..=4 {
        // A backlog: the gateway is away while the collector keeps collecting.
        let away = rng.millis(800, 2000);
        rig.gw.stop()?;
        std::thread::sleep(away);
        rig.look_at_spool()?;
        rig.gw.restart()?;
        // The collector reconnects (backoff capped at 1 s), sends its backlog in batches of
        // several records, then a new record every 100 ms: kill the gateway at a random
        // point of that.
        let delay = rng.millis(100, 1600);
        eprintln!("round {round}: gateway away {away:?}, back for {delay:?}, then kill -9");
        std::thread::sleep(delay);
        rig.gw.kill9()?;
        rig.look_at_spool()?;
        let stored = rig.look()?;
        eprintln!("round {round}: {stored} records stored");
        rig.gw.restart()?;
    }
    let set = rig.drain_and_check_exactly_once()?;
    let mut per_batch: BTreeMap<u64, usize> = BTreeMap::new();
    for r in set.by_rid.values() {
        *per_batch.entry(r.seq).or_default() += 1;
    }
    let largest = per_batch.values().max().copied().unwrap_or(0);
    assert!(
        largest >= 5,
        "the largest batch carried {largest} records: no backlog was sent while the gateway was killed"
    );
    Ok(())
}

#[test]
fn records_collected_while_the_gateway_is_down_all_arrive_in_order() -> anyhow::Result<()> {
    let mut rig = rig("gateway-down", "200ms", &[])?;
    let st = rig.gw.stop()?;
    assert!(st.success(), "gateway exited with {st} on SIGTERM");
    let down_at = now_ms();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(1));
        rig.look_at_spool()?;
    }
    let up_at = now_ms();
    rig.gw.restart()?;

    // The same collector process (not restarted) must catch up by itself. Once a record
    // collected after the gateway came back is stored, everything before it must be too:
    // the spool is sent oldest first.
    let recs = rig.wait_records(
        "a record collected after the gateway came back to be stored",
        |r| {
            r.iter()
                .any(|x| x.collected_at_ms().is_some_and(|t| t > up_at))
        },
    )?;
    let set = RecordSet::check(&recs)?;
    set.require_gapless().map_err(|e| {
        e.context("a record collected after the outage was stored before older ones")
    })?;
    let during: Vec<&StoredRecord> = set
        .by_rid
        .values()
        .filter(|r| {
            r.kind == "metrics"
                && r.collected_at_ms()
                    .is_some_and(|t| t > down_at && t < up_at)
        })
        .collect();
    assert!(
        during.len() >= 10,
        "only {} metrics records collected during the 4 s outage at a 200 ms interval were stored",
        during.len()
    );
    eprintln!(
        "{} metrics records collected during the outage arrived",
        during.len()
    );
    rig.drain_and_check_exactly_once()?;
    Ok(())
}

/// What one test appliance saw while sending in a loop.
#[derive(Debug, Default)]
struct SendLog {
    /// Sequences acknowledged (fresh or duplicate).
    acked: Vec<u64>,
    /// Answers that must never happen (e.g. a sequence gap after a restart: an
    /// acknowledged batch was lost).
    violations: Vec<String>,
}

/// Records per batch of the load test appliances.
const LOAD_BATCH_RECORDS: u64 = 50;

/// Sends batches `1, 2, …` of [`LOAD_BATCH_RECORDS`] records in a loop until `stop`,
/// retrying the same batch while the gateway is away; logs every acknowledgement.
async fn send_in_a_loop(app: ApplianceClient, log: Arc<Mutex<SendLog>>, stop: Arc<AtomicBool>) {
    let mut seq = 1;
    while !stop.load(Ordering::SeqCst) {
        let batch = metrics_batch(seq, (seq - 1) * LOAD_BATCH_RECORDS + 1, LOAD_BATCH_RECORDS);
        match app.ingest(&batch).await {
            Ok(r) if r.status == 200 => match r.ack() {
                Ok(ack) if ack.acked_seq >= seq => {
                    log.lock().unwrap().acked.push(seq);
                    seq += 1;
                }
                Ok(ack) => log.lock().unwrap().violations.push(format!(
                    "seq {seq} answered with acked_seq {} (lower)",
                    ack.acked_seq
                )),
                Err(e) => log.lock().unwrap().violations.push(format!("{e:#}")),
            },
            Ok(r) if r.status == 503 => tokio::time::sleep(Duration::from_millis(50)).await,
            Ok(r) => {
                log.lock()
                    .unwrap()
                    .violations
                    .push(format!("seq {seq}: {}", r.describe()));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // The gateway is away: the connection failed or was closed.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn acked(log: &Mutex<SendLog>) -> usize {
    log.lock().unwrap().acked.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_gateway_under_load_keeps_every_acknowledged_batch() -> anyhow::Result<()> {
    let wd = Workdir::new("sigterm-load")?;
    let mut gw = Gateway::start_new(&wd.subdir("gw")?)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let app = approved_appliance(&gw, "acme-corp").await?;
        ids.push(app.id().expect("enrolled").to_string());
        let log = Arc::new(Mutex::new(SendLog::default()));
        let task = tokio::spawn(send_in_a_loop(app, Arc::clone(&log), Arc::clone(&stop)));
        senders.push((log, task));
    }
    let wait_acks = |min: usize, what: &str| {
        let logs: Vec<_> = senders.iter().map(|(l, _)| Arc::clone(l)).collect();
        wait_for(what, STORE_TIMEOUT, Duration::from_millis(20), move || {
            Ok(logs.iter().all(|l| acked(l) >= min).then_some(()))
        })
    };
    tokio::task::block_in_place(|| {
        wait_acks(20, "every appliance to have 20 batches acknowledged")
    })?;

    // SIGTERM while all three are sending.
    let st = tokio::task::block_in_place(|| gw.stop())?;
    assert!(st.success(), "the gateway exited with {st} on SIGTERM");
    let at_stop: Vec<usize> = senders.iter().map(|(l, _)| acked(l)).collect();
    eprintln!("acknowledged before SIGTERM: {at_stop:?}");
    tokio::task::block_in_place(|| gw.restart())?;
    let min_after = at_stop.iter().max().copied().unwrap_or(0) + 5;
    tokio::task::block_in_place(|| {
        wait_acks(min_after, "every appliance to go on after the restart")
    })?;
    stop.store(true, Ordering::SeqCst);

    for ((log, task), id) in senders.into_iter().zip(&ids) {
        task.await?;
        let log = log.lock().unwrap();
        assert!(
            log.violations.is_empty(),
            "appliance {id}: {}",
            log.violations.join("; ")
        );
        let recs = tokio::task::block_in_place(|| stored_records(&gw, id))?;
        let set = RecordSet::check(&recs)?;
        set.require_gapless()?;
        let show = tokio::task::block_in_place(|| check_batches(&gw, id, &set))?;
        let stored_seqs: BTreeSet<u64> = set.by_rid.values().map(|r| r.seq).collect();
        let lost: Vec<u64> = log
            .acked
            .iter()
            .copied()
            .filter(|s| !stored_seqs.contains(s))
            .collect();
        assert!(
            lost.is_empty(),
            "appliance {id}: acknowledged batches missing from the store: {}",
            summarize(&lost)
        );
        let last_acked = log.acked.last().copied().unwrap_or(0);
        assert_eq!(
            count(&show, "last_seq"),
            last_acked,
            "appliance {id}: last_seq is not the last acknowledged batch: {show}"
        );
        assert_eq!(
            set.len() as u64,
            last_acked * LOAD_BATCH_RECORDS,
            "appliance {id}: records stored"
        );
    }
    Ok(())
}

/// Stops the gateway, lets the collector spool for `away`, then stops the collector
/// (cleanly) so its spool can be read and damaged. Returns the ledger's in-flight rid
/// range (empty when none).
fn spool_while_the_gateway_is_away(
    rig: &mut Rig,
    away: Duration,
) -> anyhow::Result<Option<std::ops::RangeInclusive<u64>>> {
    let st = rig.gw.stop()?;
    assert!(st.success(), "gateway exited with {st} on SIGTERM");
    std::thread::sleep(away);
    stop_cleanly(&mut rig.collector, "to read its spool")?;
    Ok(spool::in_flight(&spool::ledger(rig.collector.state_dir())?))
}

/// Starts the collector on a damaged spool (gateway still away): it must keep running and
/// count the damage (`spool_corrupt_records` in its ledger) without crashing.
fn start_on_damaged_spool(rig: &mut Rig, expect_corrupt: u64) -> anyhow::Result<()> {
    rig.collector.start()?;
    let state_dir = rig.collector.state_dir().to_path_buf();
    let counted = wait_for(
        "the collector to count the damaged record",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            if !rig.collector.is_running()? {
                return Err(outpost_tests::wait::abort(format!(
                    "the collector exited on a damaged spool; log tail:\n{}",
                    rig.collector.log_tail(30)
                )));
            }
            let n = spool::ledger_count(&spool::ledger(&state_dir)?, "spool_corrupt_records");
            Ok((n > 0).then_some(n))
        },
    )?;
    assert_eq!(
        counted, expect_corrupt,
        "spool_corrupt_records in the collector's ledger"
    );
    // No crash loop: still collecting a while later.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        rig.collector.is_running()?,
        "the collector died on a damaged spool; log tail:\n{}",
        rig.collector.log_tail(30)
    );
    Ok(())
}

/// Stops the gateway, lets the collector spool, stops it, flips bytes in the middle of its
/// samples segment hitting `hit` consecutive records (1: inside one payload; 2: across
/// the end of one record and the header of the next), restarts everything and checks that
/// exactly the hit records are lost, counted as such, and everything else arrives once.
fn check_damage_in_the_middle_of_a_segment(label: &str, hit: usize) -> anyhow::Result<()> {
    let mut rig = rig(label, "100ms", &[])?;
    let in_flight = spool_while_the_gateway_is_away(&mut rig, Duration::from_secs(2))?;
    let state_dir = rig.collector.state_dir().to_path_buf();
    let unsent = spool::unsent_frames(&state_dir)?;
    // Samples records in the middle of their segment, not in the in-flight batch, each
    // followed by another record of the same segment.
    let samples: Vec<&Frame> = unsent
        .iter()
        .filter(|f| f.path.parent().is_some_and(|d| d.ends_with(spool::SAMPLES)))
        .collect();
    let candidates: Vec<(&Frame, &Frame)> = samples
        .windows(2)
        .filter(|w| w[0].path == w[1].path)
        .filter(|w| !spool::is_in_flight(in_flight.as_ref(), w[0].rid))
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        candidates.len() >= 4,
        "too few records spooled in 2 s to damage one in the middle: {unsent:?}"
    );
    let (victim, next) = candidates[candidates.len() / 2];
    let lost: Vec<u64> = if hit == 1 {
        spool::flip_bytes(
            &victim.path,
            victim.payload_offset() + u64::from(victim.len / 2),
            8,
        )?;
        vec![victim.rid]
    } else {
        // The last 4 bytes of one record and the magic and CRC of the next.
        spool::flip_bytes(&victim.path, next.offset - 4, 12)?;
        vec![victim.rid, next.rid]
    };
    eprintln!(
        "flipped bytes hitting rids {lost:?} at {} in {}",
        victim.offset,
        victim.path.display()
    );

    start_on_damaged_spool(&mut rig, lost.len() as u64)?;
    rig.gw.restart()?;
    let recs = drain_collector(&mut rig.collector, &rig.gw, &rig.id, &mut rig.ledger)?;
    let set = RecordSet::check(&recs)?;
    assert_eq!(set.missing, lost, "only the damaged records may be missing");
    let show = check_batches(&rig.gw, &rig.id, &set)?;
    assert_eq!(
        count(&show, "spool_corrupt_records"),
        lost.len() as u64,
        "the gateway's spool_corrupt_records (counted once across restarts): {show}"
    );
    for f in unsent.iter().filter(|f| !lost.contains(&f.rid)) {
        assert!(
            set.by_rid
                .get(&f.rid)
                .is_some_and(|r| r.kind == f.kind && r.collected_at_ms() == f.collected_at_ms),
            "spooled rid {} ({}) did not arrive intact",
            f.rid,
            f.kind
        );
    }
    Ok(())
}

#[test]
fn flipped_bytes_in_a_spool_record_lose_only_that_record_and_are_counted() -> anyhow::Result<()> {
    check_damage_in_the_middle_of_a_segment("spool-flip", 1)
}

#[test]
fn damage_across_two_spool_records_loses_exactly_those_two_and_counts_two() -> anyhow::Result<()> {
    check_damage_in_the_middle_of_a_segment("spool-flip2", 2)
}

#[test]
fn torn_spool_tail_loses_only_the_torn_record_and_is_counted() -> anyhow::Result<()> {
    let mut rig = rig("spool-torn", "100ms", &[])?;
    let in_flight = spool_while_the_gateway_is_away(&mut rig, Duration::from_secs(2))?;
    let state_dir = rig.collector.state_dir().to_path_buf();
    let unsent = spool::unsent_frames(&state_dir)?;
    let newest = spool::segments(&state_dir, spool::SAMPLES)?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no samples segment in {}", state_dir.display()))?;
    let torn = spool::frames(&state_dir, spool::SAMPLES)?
        .into_iter()
        .rfind(|f| f.path == newest)
        .ok_or_else(|| anyhow::anyhow!("no frame in {}", newest.display()))?;
    assert!(
        !spool::is_in_flight(in_flight.as_ref(), torn.rid),
        "the newest record is in the in-flight batch {in_flight:?}; cannot tear it"
    );
    // Cut the last record in half, as a power cut during its append would.
    spool::truncate(&newest, torn.payload_offset() + u64::from(torn.len / 2))?;
    eprintln!(
        "cut rid {} ({}) in half at the end of {}",
        torn.rid,
        torn.kind,
        newest.display()
    );

    let restarted_at = now_ms();
    start_on_damaged_spool(&mut rig, 1)?;
    rig.gw.restart()?;
    let recs = drain_collector(&mut rig.collector, &rig.gw, &rig.id, &mut rig.ledger)?;
    let set = RecordSet::check(&recs)?;
    // The torn record is lost; its id is either a gap or taken by a record collected
    // after the restart (the collector numbers on from what the disk holds).
    match set.by_rid.get(&torn.rid) {
        None => assert_eq!(
            set.missing,
            vec![torn.rid],
            "only the torn record may be missing"
        ),
        Some(r) => {
            set.require_gapless()?;
            assert!(
                r.collected_at_ms().is_some_and(|t| t >= restarted_at),
                "rid {} was torn on disk, yet a record collected before the restart arrived under it: {r:?}",
                torn.rid
            );
        }
    }
    let show = check_batches(&rig.gw, &rig.id, &set)?;
    assert_eq!(
        count(&show, "spool_corrupt_records"),
        1,
        "the gateway's spool_corrupt_records (counted once across restarts): {show}"
    );
    for f in unsent.iter().filter(|f| f.rid != torn.rid) {
        assert!(
            set.by_rid
                .get(&f.rid)
                .is_some_and(|r| r.kind == f.kind && r.collected_at_ms() == f.collected_at_ms),
            "spooled rid {} ({}) did not arrive intact",
            f.rid,
            f.kind
        );
    }
    Ok(())
}

#[test]
fn spool_cap_drops_oldest_metrics_first_counts_them_exactly_and_loses_nothing_else(
) -> anyhow::Result<()> {
    let mut rig = rig(
        "spool-cap",
        "100ms",
        &[("spool_max_bytes", toml::Value::Integer(32 * 1024))],
    )?;
    let state_dir = rig.collector.state_dir().to_path_buf();
    let st = rig.gw.stop()?;
    assert!(st.success(), "gateway exited with {st} on SIGTERM");

    // An inventory change while the gateway is away: the box is made to forget which
    // inventory the gateway holds, so its next collection spools an inventory record.
    stop_cleanly(&mut rig.collector, "to forget the acknowledged inventory")?;
    let mut ledger = spool::ledger(&state_dir)?;
    if let Some(o) = ledger.as_object_mut() {
        o.remove("acked_inventory_hash");
    }
    std::fs::write(state_dir.join("state.json"), serde_json::to_vec(&ledger)?)?;
    rig.collector.start()?;

    // Watch the spool overflow: remember which log every record was seen in.
    let mut seen_in: BTreeMap<u64, &'static str> = BTreeMap::new();
    // Every in-flight batch seen while the spool overflowed: the segment holding the
    // in-flight batch at the moment of an eviction is kept, whatever batch is in flight
    // when the collector stops.
    let mut in_flight_seen: Vec<std::ops::RangeInclusive<u64>> = Vec::new();
    wait_for(
        "the spool to overflow and drop 20 records",
        Duration::from_secs(60),
        Duration::from_millis(40),
        || {
            for log in [spool::SAMPLES, spool::CHANGES] {
                for f in spool::frames(&state_dir, log)? {
                    seen_in.insert(f.rid, log);
                }
            }
            let ledger = spool::ledger(&state_dir)?;
            if let Some(r) = spool::in_flight(&ledger) {
                if !in_flight_seen.contains(&r) {
                    in_flight_seen.push(r);
                }
            }
            let dropped = spool::ledger_count(&ledger, "dropped_records");
            Ok((dropped >= 20).then_some(()))
        },
    )
    .map_err(|e| {
        e.context(format!(
            "collector log tail:\n{}",
            rig.collector.log_tail(20)
        ))
    })?;
    stop_cleanly(&mut rig.collector, "with a full spool")?;
    let on_disk = spool::unsent_frames(&state_dir)?;
    let in_flight = spool::in_flight(&spool::ledger(&state_dir)?);
    if let Some(r) = &in_flight {
        if !in_flight_seen.contains(r) {
            in_flight_seen.push(r.clone());
        }
    }
    let inventory: Vec<u64> = on_disk
        .iter()
        .filter(|f| f.kind == "inventory")
        .map(|f| f.rid)
        .collect();
    assert!(
        !inventory.is_empty(),
        "no inventory record in the full spool; frames: {on_disk:?}"
    );

    rig.gw.restart()?;
    let recs = drain_collector(&mut rig.collector, &rig.gw, &rig.id, &mut rig.ledger)?;
    let set = RecordSet::check(&recs)?;
    let dropped = &set.missing;
    let show = check_batches(&rig.gw, &rig.id, &set)?;
    let final_ledger = spool::ledger(&state_dir)?;
    eprintln!(
        "{} records stored, {} dropped (rids {}), highest rid {}",
        set.len(),
        dropped.len(),
        summarize(dropped),
        set.max_rid
    );
    // The count is exact: stored + dropped == every rid ever given.
    assert!(
        !dropped.is_empty(),
        "nothing was dropped: the test did not overflow the spool"
    );
    assert_eq!(
        count(&show, "dropped_records"),
        dropped.len() as u64,
        "dropped_records at the gateway vs rids 1..={} not stored: {show}",
        set.max_rid
    );
    assert_eq!(
        spool::ledger_count(&final_ledger, "dropped_records"),
        dropped.len() as u64,
        "dropped_records in the collector's ledger"
    );
    // Nothing else is lost: every record the full spool held arrived, with its kind.
    for f in &on_disk {
        assert!(
            set.by_rid
                .get(&f.rid)
                .is_some_and(|r| r.kind == f.kind && r.collected_at_ms() == f.collected_at_ms),
            "spooled rid {} ({}) did not arrive",
            f.rid,
            f.kind
        );
    }
    // Only samples were dropped: every dropped record seen on disk was in the samples log.
    let seen_dropped: Vec<(u64, &str)> = dropped
        .iter()
        .filter_map(|r| seen_in.get(r).map(|l| (*r, *l)))
        .collect();
    assert!(
        !seen_dropped.is_empty(),
        "none of the dropped records was seen on disk before it went"
    );
    assert!(
        seen_dropped.iter().all(|(_, l)| *l == spool::SAMPLES),
        "records other than metrics samples were dropped: {seen_dropped:?}"
    );
    // Oldest first: every dropped record is older than every sample the full spool still
    // held, apart from the segment holding the in-flight batch (never evicted: the cap
    // drops whole segments).
    let newest_dropped = dropped.iter().max().copied().unwrap_or(0);
    let pinned: BTreeSet<&std::path::Path> = on_disk
        .iter()
        .filter(|f| in_flight_seen.iter().any(|r| r.contains(&f.rid)))
        .map(|f| f.path.as_path())
        .collect();
    let oldest_kept = on_disk
        .iter()
        .filter(|f| f.path.parent().is_some_and(|d| d.ends_with(spool::SAMPLES)))
        .filter(|f| !pinned.contains(f.path.as_path()))
        .map(|f| f.rid)
        .min()
        .unwrap_or(u64::MAX);
    assert!(
        newest_dropped < oldest_kept,
        "rid {newest_dropped} was dropped but the older sample rid {oldest_kept} was kept"
    );
    // Inventory last: the inventory record is older than dropped samples and survived.
    assert!(
        inventory.iter().any(|r| *r < newest_dropped),
        "the spooled inventory (rids {inventory:?}) is not older than any dropped sample \
         (newest dropped {newest_dropped}): the cap's priority was not exercised"
    );
    let stored_inventory: BTreeSet<u64> =
        stored_records_of_kind(&rig.gw, &rig.id, Some("inventory"))?
            .iter()
            .map(|r| r.rid)
            .collect();
    for r in &inventory {
        assert!(
            stored_inventory.contains(r),
            "inventory rid {r} was not stored (stored inventory: {stored_inventory:?})"
        );
    }
    assert_eq!(
        stored_inventory.len(),
        set.count_kind("inventory"),
        "`appliances records --kind inventory` disagrees with the full listing"
    );
    Ok(())
}

#[test]
fn corrupt_spool_ledger_is_set_aside_and_nothing_is_lost_or_repeated() -> anyhow::Result<()> {
    let mut rig = rig("ledger-corrupt", "100ms", &[])?;
    // Some records acknowledged, some waiting: the gateway goes away for a while.
    rig.wait_records("10 records to be stored", |r| r.len() >= 10)?;
    let st = rig.gw.stop()?;
    assert!(st.success(), "gateway exited with {st} on SIGTERM");
    std::thread::sleep(Duration::from_millis(1500));
    stop_cleanly(&mut rig.collector, "to damage its ledger")?;
    rig.look_at_spool()?;
    let state = rig.collector.state_dir().join("state.json");
    let len = std::fs::metadata(&state)?.len();
    spool::flip_bytes(&state, len / 2, 4)?;
    eprintln!("flipped 4 bytes in the middle of {}", state.display());

    // The collector starts on a fresh ledger (the old one set aside), keeps numbering
    // records after those on disk, and the gateway's answers put the sequence right.
    rig.collector.start()?;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            rig.collector.is_running()?,
            "the collector died on a corrupt ledger; log tail:\n{}",
            rig.collector.log_tail(30)
        );
        rig.look_at_spool()?;
    }
    let aside = std::fs::read_dir(rig.collector.state_dir())?
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        });
    assert!(aside, "the corrupt ledger was not set aside");
    rig.gw.restart()?;
    let before = rig.look()?;
    rig.wait_records("records to arrive after the restart", |r| r.len() > before)?;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        rig.look_at_spool()?;
    }
    rig.drain_and_check_exactly_once()?;
    Ok(())
}
