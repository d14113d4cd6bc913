//! Collection: every interval the host is sampled, the records are planned and written to
//! the spool — before anything is sent.
//!
//! One collection is an `Inventory` record when the inventory differs from the newest one
//! the gateway has or will get from the spool, always a `Metrics` record, and an `Agent`
//! record with the collector's own health (uplink gateway, reconnects, spool depth and
//! bytes, dropped and corrupt counts, send latency), so the centre sees how the box's
//! uplink is doing with the data itself.

use std::sync::Arc;
use std::time::Duration;

use outpost_proto::{content_hash, AgentMetrics, HostInventory, HostMetrics, Record};
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info};

use crate::shutdown::Shutdown;
use crate::sources::HostSource;
use crate::spool::SpoolStats;
use crate::uplink::{now_ms, with_spool, SharedSpool, UplinkError, UplinkSnapshot, UplinkStats};

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
/// shutdown.
///
/// # Errors
/// [`UplinkError::Task`] when sampling panicked.
pub async fn collect_loop(
    spool: SharedSpool,
    uplink: Arc<UplinkStats>,
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
        let snapshot = uplink.snapshot();
        let appended = with_spool(&spool, move |s| {
            let mut records = plan_records(inventory, metrics, at, s.known_inventory_hash());
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
