//! Collection: every interval the host is sampled, the records are planned and written to
//! the spool — before anything is sent.
//!
//! One collection is an `Inventory` record when the inventory differs from the newest one
//! the gateway has or will get from the spool, always a `Metrics` record, and an `Agent`
//! record with the collector's own health (uplink gateway, reconnects, spool depth and
//! bytes, dropped and corrupt counts, send latency), so the centre sees how the box's
//! uplink is doing with the data itself.
//!
//! The same collection discovers the KVM/QEMU guests ([`discover_vms`], a cheap check
//! first) and judges health: host and guest samples go to the [`HealthEngine`], whose state
//! changes and alerts are spooled as `health` and `alert` records. Guests travel as a
//! `vm_inventory` delta when the list changed ([`VmTracker`]; the first discovery after a
//! start is a full list) and a `vm_metrics` sample while there are any. Health is judged
//! here, before and whatever the uplink does, so it stays right while no gateway answers.
//!
//! The engine says what else to read ([`HealthEngine::wanted`]): the systemd units of the
//! packs' service discoveries ([`ServiceSource`]) and the certificate files of their
//! certificate discoveries, plus the collector's own certificate ([`sample_certificates`]).
//! Whether the delivered packs are in force and the override conflicts the engine found
//! travel as a `pack_status` record whenever they change ([`PackStatusTracker`]), and once
//! after every start. The values the packs' collect rules picked are taken from the engine
//! every round and travel as one `collected` record (spooled as samples: dropped first
//! when the spool is full).
//!
//! After a round that changed a state or an alert, the engine's judgement is written to
//! `health.json` in the state directory ([`crate::state::write_health`]) before the round's
//! records are spooled, and taken back at start, so a restarted collector resolves the
//! alerts it raised before under their ids and raises nothing twice. (Written before the
//! records: a crash in between loses at most the round's changes, never duplicates an
//! alert.)

use std::sync::Arc;
use std::time::Duration;

use std::path::{Path, PathBuf};

use outpost_proto::vm::{diff_vms, VmInventory};
use outpost_proto::{content_hash, AgentMetrics, HostInventory, HostMetrics, Record};
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn};

use crate::health::engine::HealthEvent;
use crate::health::report::{plan_collected_record, plan_health_records};
use crate::health::{CertificateStatus, HealthEngine, Samples, ServiceStatus, Wanted};
use crate::shutdown::Shutdown;
use crate::sources::cert::sample_certificates;
use crate::sources::service::ServiceSource;
use crate::sources::vm::{discover_vms, DiscoveredVm, LIBVIRT_RUN, PROC_ROOT};
use crate::sources::HostSource;
use crate::spool::SpoolStats;
use crate::uplink::{now_ms, with_spool, SharedSpool, UplinkError, UplinkSnapshot, UplinkStats};
use outpost_proto::health::PackStatus;

/// The health engine, shared by the collecting task (which feeds it) and config sync
/// (which gives it new packs).
pub type SharedHealth = Arc<std::sync::Mutex<HealthEngine>>;

/// Builds the host records of one collection. An `Inventory` record is included only when
/// the inventory's hash differs from `known_hash`, the newest inventory the gateway has
/// acknowledged or will receive from the spool; a `Metrics` record always is.
#[must_use]
pub fn plan_records(
    inventory: HostInventory,
    metrics: HostMetrics,
    collected_at_ms: i64,
    known_hash: Option<&str>,
) -> Vec<Record> {
    let hash = content_hash(&inventory);
    let mut records = Vec::with_capacity(3);
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

/// The guest list the gateway has or will get from the spool, to send only its changes.
#[derive(Debug, Clone, Default)]
pub struct VmTracker {
    /// `None` until the first discovery has been planned.
    known: Option<Vec<VmInventory>>,
}

impl VmTracker {
    /// A tracker that has sent nothing yet: its first plan is a full list.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The VM records of one discovery: a `vm_inventory` record with the full list the
    /// first time (even an empty one, so the gateway forgets guests that went away while
    /// the collector was down), afterwards only when the list changed; a `vm_metrics`
    /// record whenever there are guests.
    pub fn plan_records(&mut self, vms: &[DiscoveredVm], collected_at_ms: i64) -> Vec<Record> {
        let now: Vec<VmInventory> = vms.iter().map(|v| v.inventory.clone()).collect();
        let mut records = Vec::with_capacity(2);
        match &self.known {
            None => records.push(Record::VmInventory {
                collected_at_ms,
                full: true,
                delta: diff_vms(&[], &now),
            }),
            Some(before) => {
                let delta = diff_vms(before, &now);
                if !delta.is_empty() {
                    records.push(Record::VmInventory {
                        collected_at_ms,
                        full: false,
                        delta,
                    });
                }
            }
        }
        self.known = Some(now);
        if !vms.is_empty() {
            records.push(Record::VmMetrics {
                collected_at_ms,
                vms: vms.iter().map(|v| v.metrics.clone()).collect(),
            });
        }
        records
    }
}

/// Sends the pack status when it differs from the one sent last.
#[derive(Debug, Clone, Default)]
pub struct PackStatusTracker {
    sent: Option<PackStatus>,
}

impl PackStatusTracker {
    /// A tracker that has sent nothing: its first plan is a record.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A `pack_status` record when `now` differs from the status sent last.
    pub fn plan_record(&mut self, now: PackStatus, collected_at_ms: i64) -> Option<Record> {
        if self.sent.as_ref() == Some(&now) {
            return None;
        }
        self.sent = Some(now.clone());
        Some(Record::PackStatus {
            collected_at_ms,
            status: now,
        })
    }
}

/// Everything one collection saw on the box.
#[derive(Debug, Clone, Default)]
pub struct BoxSample {
    /// The host.
    pub inventory: HostInventory,
    /// Its metrics.
    pub metrics: HostMetrics,
    /// KVM/QEMU guests.
    pub vms: Vec<DiscoveredVm>,
    /// The systemd units the packs list.
    pub services: Vec<ServiceStatus>,
    /// The certificates the packs list, and the collector's own.
    pub certificates: Vec<CertificateStatus>,
}

/// One health round over a collection: the box goes in, the records of what changed come
/// out (none when nothing did), then a `collected` record with the values the collect
/// rules picked (drained from the engine). Override conflicts are logged (and reported by
/// the `pack_status` record).
pub fn judge_health(
    engine: &mut HealthEngine,
    sample: &BoxSample,
    collected_at_ms: i64,
) -> Vec<Record> {
    let mut samples = Samples::from_host(&sample.inventory, &sample.metrics);
    samples.add_vms(&sample.vms);
    samples.add_services(&sample.services);
    samples.add_certificates(&sample.certificates);
    let events = engine.observe(&samples, collected_at_ms);
    for event in &events {
        match event {
            HealthEvent::OverrideConflicts { conflicts } if !conflicts.is_empty() => {
                warn!(
                    count = conflicts.len(),
                    "health packs: override conflicts (ties broken deterministically): {}",
                    serde_json::to_string(conflicts).unwrap_or_default()
                );
            }
            HealthEvent::AlertRaised { alert } => info!(
                rule = %alert.rule,
                object = %alert.object,
                severity = alert.severity.as_str(),
                "alert raised: {}",
                alert.message
            ),
            HealthEvent::AlertResolved { alert, reason, .. } => info!(
                rule = %alert.rule,
                object = %alert.object,
                ?reason,
                "alert resolved"
            ),
            _ => {}
        }
    }
    let mut records = plan_health_records(&events, collected_at_ms);
    records.extend(plan_collected_record(
        &engine.take_collected(),
        collected_at_ms,
    ));
    records
}

/// Whether a round's records changed the engine's judgement (a state or an alert), so its
/// snapshot is worth writing.
#[must_use]
pub fn judgement_changed(records: &[Record]) -> bool {
    records
        .iter()
        .any(|r| matches!(r, Record::Health { .. } | Record::Alert { .. }))
}

/// The sources one collection reads, with what they keep between collections.
pub struct BoxSources {
    host: HostSource,
    services: ServiceSource,
    own_certificate: Option<PathBuf>,
}

impl BoxSources {
    /// Sources for a collector whose own certificate is `own_certificate` (blocking: the
    /// host source takes a first sample).
    #[must_use]
    pub fn new(own_certificate: Option<PathBuf>) -> Self {
        Self {
            host: HostSource::new(),
            services: ServiceSource::new(),
            own_certificate,
        }
    }

    /// Host sample, guest discovery, and the units and certificates `wanted` lists
    /// (blocking).
    pub fn sample(&mut self, wanted: &Wanted) -> BoxSample {
        let (inventory, metrics) = self.host.collect();
        BoxSample {
            inventory,
            metrics,
            vms: discover_vms(Path::new(PROC_ROOT), Path::new(LIBVIRT_RUN)),
            services: self.services.sample(&wanted.services),
            certificates: sample_certificates(
                self.own_certificate.as_deref(),
                &wanted.certificate_paths,
            ),
        }
    }
}

/// The self-metrics record of one collection, from the spool's and the uplink's counters.
#[must_use]
pub fn agent_record(spool: &SpoolStats, uplink: &UplinkSnapshot, collected_at_ms: i64) -> Record {
    Record::Agent {
        collected_at_ms,
        agent: AgentMetrics {
            current_gateway: uplink.current_gateway.clone(),
            reconnects: uplink.reconnects,
            spool_depth: spool.records,
            spool_bytes: spool.bytes,
            dropped_records: spool.dropped_records,
            spool_corrupt_records: spool.spool_corrupt_records,
            send_latency_ms: uplink.send_latency_ms,
        },
    }
}

/// The collecting task: samples every interval (the gateway may change it through
/// `interval`), spools the records, wakes the sender. Stops between collections on
/// shutdown. `own_certificate` is the collector's `cert.pem`, watched for expiry; the
/// engine's judgement is kept in `state_dir` when given.
///
/// # Errors
/// [`UplinkError::Task`] when sampling panicked.
#[allow(clippy::too_many_arguments)] // one task, wired once in agent.rs
pub async fn collect_loop(
    own_certificate: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    spool: SharedSpool,
    health: SharedHealth,
    uplink: Arc<UplinkStats>,
    wake_sender: Arc<Notify>,
    mut interval: watch::Receiver<Duration>,
    mut shutdown: Shutdown,
) -> Result<(), UplinkError> {
    let mut source = tokio::task::spawn_blocking(move || BoxSources::new(own_certificate))
        .await
        .map_err(|e| UplinkError::Task(e.to_string()))?;
    // CPU use needs two samples some time apart.
    if shutdown.sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL).await {
        return Ok(());
    }
    let mut period = *interval.borrow_and_update();
    let mut ticker = new_ticker(period);
    let mut vm_tracker = VmTracker::new();
    let mut pack_status = PackStatusTracker::new();
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
        let wanted = health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .wanted();
        let (src, sample) = tokio::task::spawn_blocking(move || {
            let sample = source.sample(&wanted);
            (source, sample)
        })
        .await
        .map_err(|e| UplinkError::Task(e.to_string()))?;
        source = src;
        let at = now_ms();
        let mut box_records = vm_tracker.plan_records(&sample.vms, at);
        let snapshot = {
            let mut engine = health
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let judged = judge_health(&mut engine, &sample, at);
            let snapshot = judgement_changed(&judged).then(|| engine.snapshot());
            box_records.extend(judged);
            box_records.extend(pack_status.plan_record(engine.pack_status(), at));
            snapshot
        };
        let keep_health = state_dir.clone().zip(snapshot);
        let BoxSample {
            inventory, metrics, ..
        } = sample;
        let snapshot = uplink.snapshot();
        let appended = with_spool(&spool, move |s| {
            if let Some((dir, snapshot)) = keep_health {
                if let Err(e) = crate::state::write_health(&dir, &snapshot) {
                    warn!("health judgement not kept for the next start: {e}");
                }
            }
            let mut records = plan_records(inventory, metrics, at, s.known_inventory_hash());
            records.extend(box_records);
            records.push(agent_record(&s.stats(), &snapshot, at));
            let with_inventory = records
                .iter()
                .any(|r| matches!(r, Record::Inventory { .. }));
            s.append(records).map(|a| (a, with_inventory))
        })
        .await?;
        match appended {
            Ok((a, with_inventory)) => {
                debug!(
                    first_rid = a.first_rid,
                    last_rid = a.last_rid,
                    "records spooled"
                );
                if with_inventory {
                    info!(rid = a.first_rid, "inventory changed; spooled for sending");
                }
                wake_sender.notify_one();
            }
            Err(e) => error!("this collection is (partly) lost: {e}"),
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

#[cfg(test)]
mod tests {
    use super::*;

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
            other => panic!("{other:?}"),
        }
    }

    fn vm(name: &str, uuid: &str, vcpus: u32) -> DiscoveredVm {
        use outpost_proto::vm::{VmMetrics, VmOrigin, VmState};
        DiscoveredVm {
            inventory: VmInventory {
                name: name.into(),
                uuid: uuid.into(),
                source: VmOrigin::Qemu,
                vcpus,
                memory_bytes: 64 << 20,
                disks: Vec::new(),
                nics: Vec::new(),
            },
            metrics: VmMetrics {
                key: uuid.into(),
                state: VmState::Running,
                state_detail: "proc:S".into(),
                pid: Some(1),
                cpu_time_ms: 0,
                rss_bytes: 0,
                io_read_bytes: None,
                io_write_bytes: None,
                net_rx_bytes: None,
                net_tx_bytes: None,
                cgroup: None,
            },
        }
    }

    #[test]
    fn vm_inventory_is_full_first_then_only_deltas() {
        let mut t = VmTracker::new();
        // First discovery: a full list, even when empty.
        let r = t.plan_records(&[], 1);
        assert_eq!(kinds(&r), ["vm_inventory"]);
        assert!(matches!(&r[0], Record::VmInventory { full: true, delta, .. } if delta.is_empty()));
        // Nothing changed: nothing travels.
        assert!(t.plan_records(&[], 2).is_empty());
        let a = vm("a", "u-a", 1);
        let r = t.plan_records(std::slice::from_ref(&a), 3);
        assert_eq!(kinds(&r), ["vm_inventory", "vm_metrics"]);
        match &r[0] {
            Record::VmInventory { full, delta, .. } => {
                assert!(!full);
                assert_eq!(delta.added, vec![a.inventory.clone()]);
            }
            other => panic!("{other:?}"),
        }
        // Unchanged guest: metrics only.
        assert_eq!(
            kinds(&t.plan_records(std::slice::from_ref(&a), 4)),
            ["vm_metrics"]
        );
        // Gone: the removal, no metrics.
        let r = t.plan_records(&[], 5);
        assert_eq!(kinds(&r), ["vm_inventory"]);
        assert!(matches!(&r[0], Record::VmInventory { delta, .. } if delta.removed.len() == 1));
        // A restarted collector starts over with a full list.
        let r = VmTracker::new().plan_records(std::slice::from_ref(&a), 6);
        assert!(
            matches!(&r[0], Record::VmInventory { full: true, delta, .. } if delta.added.len() == 1)
        );
    }

    #[test]
    fn health_is_judged_and_only_changes_travel() {
        let mut engine = HealthEngine::new(crate::health::default_pack_set());
        let sample = BoxSample {
            inventory: inv("box"),
            vms: vec![vm("guest", "u-g", 1)],
            ..BoxSample::default()
        };
        let first = judge_health(&mut engine, &sample, 1);
        assert!(
            first
                .iter()
                .any(|r| matches!(r, Record::Health { changes, .. }
                if changes.iter().any(|c| c.object == "host/box" && c.monitor == "health"))),
            "{first:?}"
        );
        // The same box again: at most the monitors whose windows filled change.
        let mut quiet = false;
        for at in 2..10 {
            let r = judge_health(&mut engine, &sample, at);
            if !judgement_changed(&r) {
                // Only the collect rules' values (sampled data) travel every round.
                assert!(
                    r.iter().all(|r| matches!(r, Record::Collected { .. })),
                    "{r:?}"
                );
                quiet = true;
                break;
            }
        }
        assert!(quiet, "an unchanged box settles and sends no changes");
        // The guest goes: its object is removed.
        let gone = judge_health(
            &mut engine,
            &BoxSample {
                vms: Vec::new(),
                ..sample.clone()
            },
            20,
        );
        assert!(
            gone.iter()
                .any(|r| matches!(r, Record::Health { removed, .. }
                if removed.iter().any(|o| o == "vm/guest"))),
            "{gone:?}"
        );
    }

    #[test]
    fn collect_rules_values_are_drained_every_round() {
        let mut engine = HealthEngine::new(crate::health::default_pack_set());
        let sample = BoxSample {
            inventory: inv("box"),
            metrics: HostMetrics {
                load_avg: [0.5, 0.25, 0.125],
                ..HostMetrics::default()
            },
            vms: vec![vm("guest", "u-g", 1)],
            ..BoxSample::default()
        };
        for at in 1..=3 {
            let r = judge_health(&mut engine, &sample, at);
            let values = r
                .iter()
                .find_map(|r| match r {
                    Record::Collected {
                        collected_at_ms,
                        values,
                    } => Some((*collected_at_ms, values.clone())),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no collected record in round {at}: {r:?}"));
            assert_eq!(values.0, at);
            assert!(
                values
                    .1
                    .iter()
                    .any(|v| v.object == "host/box" && v.metric == "load1" && v.at_ms == at),
                "{values:?}"
            );
            // Taken from the engine: nothing piles up between rounds.
            assert!(engine.take_collected().is_empty());
        }
    }

    #[test]
    fn pack_status_travels_once_per_change() {
        let mut t = PackStatusTracker::new();
        let engine = HealthEngine::new(crate::health::default_pack_set());
        let first = t.plan_record(engine.pack_status(), 1);
        assert!(
            matches!(&first, Some(Record::PackStatus { status, .. }) if status.applied && status.etag.is_none()),
            "{first:?}"
        );
        assert!(t.plan_record(engine.pack_status(), 2).is_none());
        let refused = PackStatus {
            etag: Some("\"e2\"".into()),
            packs: vec!["t.bad".into()],
            applied: false,
            error: Some("gateway:t.bad:7: unknown monitor type".into()),
            conflicts: Vec::new(),
        };
        let r = t.plan_record(refused.clone(), 3);
        assert!(matches!(r, Some(Record::PackStatus { status, .. }) if status == refused));
        assert!(t.plan_record(refused, 4).is_none());
    }

    #[test]
    fn agent_record_carries_spool_and_uplink_counters() {
        let spool = SpoolStats {
            records: 7,
            bytes: 4096,
            dropped_records: 3,
            spool_corrupt_records: 1,
            ..SpoolStats::default()
        };
        let uplink = UplinkSnapshot {
            current_gateway: "127.0.0.3:5723".into(),
            reconnects: 2,
            send_latency_ms: Some(15),
        };
        match agent_record(&spool, &uplink, 99) {
            Record::Agent {
                collected_at_ms,
                agent,
            } => {
                assert_eq!(collected_at_ms, 99);
                assert_eq!(
                    agent,
                    AgentMetrics {
                        current_gateway: "127.0.0.3:5723".into(),
                        reconnects: 2,
                        spool_depth: 7,
                        spool_bytes: 4096,
                        dropped_records: 3,
                        spool_corrupt_records: 1,
                        send_latency_ms: Some(15),
                    }
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
