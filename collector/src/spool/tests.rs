//! Tests of the spool against real files in temporary directories.

use super::*;
use outpost_proto::{HostInventory, HostMetrics};

fn metrics(n: i64) -> Record {
    Record::Metrics {
        collected_at_ms: n,
        metrics: HostMetrics::default(),
    }
}

/// An inventory record of roughly `pad` bytes.
fn inventory(n: i64, pad: usize) -> Record {
    Record::Inventory {
        collected_at_ms: n,
        hash: format!("h{n}"),
        inventory: HostInventory {
            hostname: "x".repeat(pad),
            ..HostInventory::default()
        },
    }
}

fn frame_len(r: &Record) -> u64 {
    (frame::HEADER_LEN + serde_json::to_vec(r).unwrap().len()) as u64
}

fn cfg(max_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        max_bytes,
        fsync: FsyncPolicy::Batch,
    }
}

fn open(dir: &Path) -> Spool {
    Spool::open(dir, SpoolConfig::default()).unwrap()
}

/// Acknowledges `batch` as a gateway that stored it.
fn store(spool: &mut Spool, batch: &IngestBatch) -> AckOutcome {
    spool
        .acknowledge(&IngestAck {
            acked_seq: batch.seq,
            duplicate: false,
            last_rid: batch.records.last().map_or(0, |e| e.rid),
        })
        .unwrap()
}

/// Sends everything waiting to a perfect gateway; returns `(seq, rid)` of each record.
fn drain(spool: &mut Spool, limits: BatchLimits) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    while let Some(b) = spool.next_batch(limits).unwrap() {
        out.extend(b.records.iter().map(|e| (b.seq, e.rid)));
        store(spool, &b);
    }
    out
}

fn rids(sent: &[(u64, u64)]) -> Vec<u64> {
    sent.iter().map(|x| x.1).collect()
}

fn segments(dir: &Path, class: Class) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(SPOOL_DIR).join(class.dir_name()))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn append_replay_and_trim() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let a = s.append(vec![inventory(1, 10), metrics(1)]).unwrap();
    assert_eq!((a.first_rid, a.last_rid, a.dropped), (1, 2, 0));
    s.append(vec![metrics(2), metrics(3)]).unwrap();
    assert_eq!(s.stats().records, 4);
    drop(s);

    // Replay after a restart: same records, same ids, in order across both logs.
    let mut s = open(dir.path());
    assert_eq!(s.stats().records, 4);
    assert_eq!(s.stats().next_rid, 5);
    let b = s.next_batch(BatchLimits::default()).unwrap().unwrap();
    assert_eq!(b.seq, 1);
    assert_eq!(
        b.records.iter().map(|e| e.rid).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(b.records[0].record.kind(), "inventory");
    assert_eq!(b.records[3].record, metrics(3));
    assert!(matches!(
        store(&mut s, &b),
        AckOutcome::Completed {
            seq: 1,
            records: 4,
            ..
        }
    ));
    assert_eq!(s.stats().records, 0);
    assert_eq!(s.next_batch(BatchLimits::default()).unwrap(), None);
    // Nothing is sent again after a restart.
    drop(s);
    let mut s = open(dir.path());
    assert_eq!(s.stats().records, 0);
    assert_eq!(s.next_batch(BatchLimits::default()).unwrap(), None);
    assert_eq!(s.ledger().last_acked_seq, 1);
    assert_eq!(s.ledger().acked_inventory_hash.as_deref(), Some("h1"));
}

#[test]
fn acknowledged_segments_are_deleted_but_the_one_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments: 4 KiB each.
    let mut s = Spool::open(dir.path(), cfg(32 * 1024)).unwrap();
    let per = s.config().segment_bytes() / frame_len(&metrics(1000)) + 1;
    for i in 0..(per * 3) {
        s.append(vec![metrics(1000 + i64::try_from(i).unwrap())])
            .unwrap();
    }
    assert!(segments(dir.path(), Class::Samples).len() >= 3);
    let sent = drain(&mut s, BatchLimits::default());
    assert_eq!(rids(&sent), (1..=per * 3).collect::<Vec<_>>());
    assert_eq!(segments(dir.path(), Class::Samples).len(), 1);
    assert_eq!(s.stats().records, 0);
    // Appends carry on in the kept segment or a new one; ids carry on.
    let a = s.append(vec![metrics(1)]).unwrap();
    assert_eq!(a.first_rid, per * 3 + 1);
}

#[test]
fn batches_respect_record_and_byte_caps() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.append((0..25).map(metrics).collect()).unwrap();
    let by_count = BatchLimits {
        max_records: 10,
        max_bytes: 1 << 20,
    };
    let sent = drain(&mut s, by_count);
    let per_seq = |sent: &[(u64, u64)]| {
        let mut n = std::collections::BTreeMap::new();
        for (seq, _) in sent {
            *n.entry(*seq).or_insert(0) += 1;
        }
        n.into_values().collect::<Vec<u32>>()
    };
    assert_eq!(per_seq(&sent), [10, 10, 5]);
    s.append((0..10).map(metrics).collect()).unwrap();
    let fl = usize::try_from(frame_len(&metrics(0))).unwrap();
    let by_bytes = BatchLimits {
        max_records: 500,
        max_bytes: fl * 3,
    };
    let sent = drain(&mut s, by_bytes);
    assert_eq!(per_seq(&sent), [3, 3, 3, 1]);
    // One record larger than the byte cap still goes, alone.
    s.append(vec![inventory(1, 5000), metrics(1)]).unwrap();
    let sent = drain(&mut s, by_bytes);
    assert_eq!(per_seq(&sent), [1, 1]);
}

#[test]
fn rid_increases_across_reopen_and_empty_spools() {
    let dir = tempfile::tempdir().unwrap();
    let mut last = 0;
    for round in 0..5 {
        let mut s = open(dir.path());
        let a = s.append(vec![metrics(round), metrics(round)]).unwrap();
        assert_eq!(a.first_rid, last + 1, "round {round}");
        last = a.last_rid;
        if round % 2 == 0 {
            // Sent and trimmed: the spool is empty, the ledger keeps the count.
            drain(&mut s, BatchLimits::default());
        }
    }
    assert_eq!(last, 10);
    // Even with every segment gone the ledger carries the next id.
    for class in Class::ALL {
        for p in segments(dir.path(), class) {
            std::fs::remove_file(p).unwrap();
        }
    }
    let mut s = open(dir.path());
    assert!(s.append(vec![metrics(9)]).unwrap().first_rid > 8);
}

#[test]
fn in_flight_batch_is_resent_with_the_same_seq_and_records_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let limits = BatchLimits {
        max_records: 3,
        max_bytes: 1 << 20,
    };
    let mut s = open(dir.path());
    s.append(vec![inventory(1, 10), metrics(1), metrics(2), metrics(3)])
        .unwrap();
    let first = s.next_batch(limits).unwrap().unwrap();
    assert_eq!(first.seq, 1);
    // Asking again before an answer gives the same batch.
    assert_eq!(s.next_batch(limits).unwrap().unwrap(), first);
    drop(s); // crash: the gateway may or may not have stored it

    let mut s = open(dir.path());
    s.append(vec![metrics(4)]).unwrap();
    let again = s.next_batch(limits).unwrap().unwrap();
    assert_eq!(again, first, "a resend must carry the same seq and records");
    assert_eq!(s.stats().in_flight.unwrap().last_rid, 3);
    // The gateway had stored it: a duplicate answer completes it.
    let out = s
        .acknowledge(&IngestAck {
            acked_seq: 1,
            duplicate: true,
            last_rid: 3,
        })
        .unwrap();
    assert!(matches!(out, AckOutcome::Completed { seq: 1, .. }));
    let next = s.next_batch(limits).unwrap().unwrap();
    assert_eq!(next.seq, 2);
    assert_eq!(
        next.records.iter().map(|e| e.rid).collect::<Vec<_>>(),
        [4, 5]
    );
}

#[test]
fn gap_renumbers_the_in_flight_batch_durably() {
    let dir = tempfile::tempdir().unwrap();
    Ledger {
        last_acked_seq: 9,
        acked_inventory_hash: Some("old".into()),
        ..Ledger::default()
    }
    .write(dir.path())
    .unwrap();
    let mut s = open(dir.path());
    s.append(vec![metrics(1), metrics(2)]).unwrap();
    let b = s.next_batch(BatchLimits::default()).unwrap().unwrap();
    assert_eq!(b.seq, 10);
    // The gateway lost batches 4..=9 (restored from a backup): it expects 4.
    assert_eq!(s.resequence(4).unwrap(), Some((10, 4)));
    assert_eq!(s.resequence(4).unwrap(), None);
    assert_eq!(s.ledger().last_acked_seq, 3);
    assert_eq!(
        s.ledger().acked_inventory_hash,
        None,
        "inventory must be resent"
    );
    drop(s);
    let mut s = open(dir.path());
    let b2 = s.next_batch(BatchLimits::default()).unwrap().unwrap();
    assert_eq!(b2.seq, 4);
    assert_eq!(b2.records, b.records);
    store(&mut s, &b2);
    assert_eq!(s.next_batch(BatchLimits::default()).unwrap(), None);
}

#[test]
fn acknowledgement_below_the_batch_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.append(vec![metrics(1)]).unwrap();
    assert_eq!(
        s.acknowledge(&IngestAck {
            acked_seq: 1,
            duplicate: false,
            last_rid: 0
        })
        .unwrap(),
        AckOutcome::NoBatch
    );
    s.next_batch(BatchLimits::default()).unwrap();
    s.ledger.in_flight.as_mut().unwrap().seq = 5;
    assert_eq!(
        s.acknowledge(&IngestAck {
            acked_seq: 4,
            duplicate: false,
            last_rid: 0
        })
        .unwrap(),
        AckOutcome::Behind
    );
    assert_eq!(s.stats().records, 1);
}

#[test]
fn torn_tail_is_cut_counted_once_and_the_rest_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.append((1..=5).map(metrics).collect()).unwrap();
    drop(s);
    // Power cut in the middle of the last record.
    let seg = segments(dir.path(), Class::Samples).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 10).unwrap();
    drop(f);

    let mut s = open(dir.path());
    let st = s.stats();
    assert_eq!((st.records, st.spool_corrupt_records), (4, 1));
    // The tail is cut: the file ends after the last good frame.
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        len - frame_len(&metrics(5))
    );
    // The lost record's id is not given again.
    assert_eq!(s.append(vec![metrics(6)]).unwrap().first_rid, 6);
    drop(s);
    // Counted once, however often the box restarts.
    let mut s = open(dir.path());
    assert_eq!(s.stats().spool_corrupt_records, 1);
    let sent = drain(&mut s, BatchLimits::default());
    assert_eq!(rids(&sent), [1, 2, 3, 4, 6]);
    drop(s);
    assert_eq!(open(dir.path()).stats().spool_corrupt_records, 1);
}

#[test]
fn every_cut_point_of_the_last_record_is_handled() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.append((1..=3).map(metrics).collect()).unwrap();
    drop(s);
    let seg = segments(dir.path(), Class::Samples).pop().unwrap();
    let full = std::fs::read(&seg).unwrap();
    let fl = usize::try_from(frame_len(&metrics(3))).unwrap();
    let copy = tempfile::tempdir().unwrap();
    for cut in (full.len() - fl + 1)..full.len() {
        let d = copy.path().join(format!("cut{cut}"));
        let sd = d.join(SPOOL_DIR).join(Class::Samples.dir_name());
        std::fs::create_dir_all(&sd).unwrap();
        std::fs::write(sd.join(seg.file_name().unwrap()), &full[..cut]).unwrap();
        let mut s = open(&d);
        assert_eq!(s.stats().spool_corrupt_records, 1, "cut at {cut}");
        assert_eq!(
            rids(&drain(&mut s, BatchLimits::default())),
            [1, 2],
            "cut at {cut}"
        );
        assert_eq!(
            s.append(vec![metrics(4)]).unwrap().first_rid,
            4,
            "cut at {cut}"
        );
    }
}

#[test]
fn a_flipped_byte_in_the_middle_loses_one_record_and_the_rest_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.append((1..=9).map(metrics).collect()).unwrap();
    drop(s);
    let seg = segments(dir.path(), Class::Samples).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let fl = usize::try_from(frame_len(&metrics(1))).unwrap();
    // A byte in the payload of the 4th record (rid 4).
    bytes[3 * fl + frame::HEADER_LEN + 5] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();

    let mut s = open(dir.path());
    assert_eq!(s.stats().spool_corrupt_records, 1);
    assert_eq!(s.stats().records, 8);
    assert_eq!(s.append(vec![metrics(10)]).unwrap().first_rid, 10);
    drop(s);
    let mut s = open(dir.path());
    assert_eq!(s.stats().spool_corrupt_records, 1, "counted once");
    let sent = drain(&mut s, BatchLimits::default());
    assert_eq!(rids(&sent), [1, 2, 3, 5, 6, 7, 8, 9, 10]);
    assert_eq!(s.stats().spool_corrupt_records, 1);
}

#[test]
fn a_damaged_length_field_is_resynced_past() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.append((1..=6).map(metrics).collect()).unwrap();
    drop(s);
    let seg = segments(dir.path(), Class::Samples).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let fl = usize::try_from(frame_len(&metrics(1))).unwrap();
    // The length of record 2 claims far more than the file holds.
    bytes[fl + 11] = 0x7f;
    std::fs::write(&seg, &bytes).unwrap();
    let mut s = open(dir.path());
    assert_eq!(s.stats().spool_corrupt_records, 1);
    assert_eq!(
        rids(&drain(&mut s, BatchLimits::default())),
        [1, 3, 4, 5, 6]
    );
}

#[test]
fn a_wiped_range_counts_every_record_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.append((1..=10).map(metrics).collect()).unwrap();
    drop(s);
    let seg = segments(dir.path(), Class::Samples).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let fl = usize::try_from(frame_len(&metrics(1))).unwrap();
    // Zero records 3, 4 and 5 and a bit of 6.
    for b in &mut bytes[2 * fl..5 * fl + 7] {
        *b = 0;
    }
    std::fs::write(&seg, &bytes).unwrap();
    let mut s = open(dir.path());
    assert_eq!(s.stats().spool_corrupt_records, 4);
    assert_eq!(
        rids(&drain(&mut s, BatchLimits::default())),
        [1, 2, 7, 8, 9, 10]
    );
}

#[test]
fn damage_found_when_reading_back_is_counted_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.append((1..=4).map(metrics).collect()).unwrap();
    // The file changes under the running collector.
    let seg = segments(dir.path(), Class::Samples).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let fl = usize::try_from(frame_len(&metrics(1))).unwrap();
    bytes[fl + frame::HEADER_LEN + 2] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    let sent = drain(&mut s, BatchLimits::default());
    assert_eq!(rids(&sent), [1, 3, 4]);
    assert_eq!(s.stats().spool_corrupt_records, 1);
    drop(s);
    // Not counted again at the next start.
    assert_eq!(open(dir.path()).stats().spool_corrupt_records, 1);
}

#[test]
fn garbage_and_strangers_in_the_spool_never_stop_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.append(vec![metrics(1)]).unwrap();
    drop(s);
    let sd = dir.path().join(SPOOL_DIR).join(Class::Samples.dir_name());
    // A stranger, a temp file and a segment that is pure garbage before the real one.
    std::fs::write(sd.join("notes.txt"), "hello").unwrap();
    std::fs::write(sd.join(".00000000000000000009.seg.tmp"), "x").unwrap();
    std::fs::write(sd.join(segment::file_name(0)), vec![0xAB; 300]).unwrap();
    let mut s = open(dir.path());
    assert_eq!(rids(&drain(&mut s, BatchLimits::default())), [1]);
    assert!(s.stats().spool_corrupt_records <= 1);
}

#[test]
fn a_corrupt_ledger_is_set_aside_and_the_spool_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.append((1..=3).map(metrics).collect()).unwrap();
    drop(s);
    std::fs::write(dir.path().join(STATE_FILE), "{ not json").unwrap();
    let mut s = open(dir.path());
    assert_eq!(s.stats().records, 3);
    assert_eq!(rids(&drain(&mut s, BatchLimits::default())), [1, 2, 3]);
    let aside: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
}

#[test]
fn the_cap_drops_the_oldest_metric_segments_first_and_counts_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 16 * 1024;
    let mut s = Spool::open(dir.path(), cfg(cap)).unwrap();
    let seg = s.config().segment_bytes();
    assert_eq!(seg, MIN_SEGMENT_BYTES);
    let fl = frame_len(&metrics(1_000_000));
    let per_segment = seg / fl; // frames that fit one segment
    s.append(vec![inventory(1, 100)]).unwrap(); // rid 1, the changes log
    let mut n = 0u64;
    let first_drop = loop {
        n += 1;
        let a = s
            .append(vec![metrics(1_000_000 + i64::try_from(n).unwrap())])
            .unwrap();
        if a.dropped > 0 {
            break a.dropped;
        }
        assert!(n < 1000, "the cap never bit");
    };
    // Exactly the oldest full segment of metric samples went.
    assert_eq!(first_drop, per_segment);
    assert!(s.stats().bytes <= cap);
    // Keep collecting long past the cap.
    for i in 0..200 {
        s.append(vec![metrics(2_000_000 + i)]).unwrap();
        assert!(s.stats().bytes <= cap);
    }
    let total = s.stats().next_rid - 1;
    let dropped = s.stats().dropped_records;
    assert_eq!(dropped % per_segment, 0);
    let sent = drain(&mut s, BatchLimits::default());
    let got = rids(&sent);
    // The inventory survived; the metrics that arrived are the newest, contiguous.
    assert_eq!(got[0], 1);
    assert_eq!(got[1..], (dropped + 2..=total).collect::<Vec<_>>());
    assert_eq!(
        got.len() as u64 + dropped,
        total,
        "every record sent or counted"
    );
    drop(s);
    let s = Spool::open(dir.path(), cfg(cap)).unwrap();
    assert_eq!(
        s.stats().dropped_records,
        dropped,
        "the count survives restarts"
    );
}

#[test]
fn inventory_goes_only_after_every_metric_sample() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 16 * 1024;
    let mut s = Spool::open(dir.path(), cfg(cap)).unwrap();
    s.append(vec![metrics(1), metrics(2), metrics(3)]).unwrap(); // rids 1..=3
    let mut first_inventory_drop = None;
    for i in 0..40 {
        let before = s.stats().dropped_records;
        let a = s.append(vec![inventory(100 + i, 900)]).unwrap(); // rids 4..
        if a.dropped > 0 && first_inventory_drop.is_none() {
            // The first eviction takes the metric samples, whatever their age.
            assert_eq!(before, 0);
            first_inventory_drop = Some(a.first_rid);
        }
    }
    assert!(first_inventory_drop.is_some(), "the cap never bit");
    let total = s.stats().next_rid - 1;
    let dropped = s.stats().dropped_records;
    let got = rids(&drain(&mut s, BatchLimits::default()));
    assert!(
        !got.iter().any(|r| *r <= 3),
        "a metric sample outlived inventory: {got:?}"
    );
    // The survivors are the newest inventory records, contiguous.
    assert_eq!(
        got,
        (total - got.len() as u64 + 1..=total).collect::<Vec<_>>()
    );
    assert_eq!(got.len() as u64 + dropped, total);
    assert!(
        dropped > 3,
        "inventory had to go too once no sample was left"
    );
}

#[test]
fn the_in_flight_batch_is_never_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 16 * 1024;
    let mut s = Spool::open(dir.path(), cfg(cap)).unwrap();
    for i in 0..20 {
        s.append(vec![metrics(1_000_000 + i)]).unwrap();
    }
    let in_flight = s
        .next_batch(BatchLimits {
            max_records: 5,
            max_bytes: 1 << 20,
        })
        .unwrap()
        .unwrap();
    for i in 0..300 {
        s.append(vec![metrics(2_000_000 + i)]).unwrap();
    }
    assert!(s.stats().dropped_records > 0);
    // After a restart too, the batch comes back whole.
    drop(s);
    let mut s = Spool::open(dir.path(), cfg(cap)).unwrap();
    let again = s.next_batch(BatchLimits::default()).unwrap().unwrap();
    assert_eq!(again, in_flight);
    store(&mut s, &again);
    let total = s.stats().next_rid - 1;
    let dropped = s.stats().dropped_records;
    let rest = rids(&drain(&mut s, BatchLimits::default()));
    assert_eq!(5 + rest.len() as u64 + dropped, total);
    // The rest of the pinned segment survived with it; then come the newest records.
    assert_eq!(rest.first().copied(), Some(6));
    assert!(rest.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn a_lower_cap_at_start_evicts_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), cfg(1 << 20)).unwrap();
    for i in 0..300 {
        s.append(vec![metrics(1_000_000 + i)]).unwrap();
    }
    drop(s);
    let s = Spool::open(dir.path(), cfg(16 * 1024)).unwrap();
    let st = s.stats();
    assert!(st.bytes <= 16 * 1024, "{st:?}");
    assert_eq!(st.records + st.dropped_records, 300);
}

#[test]
fn fsync_policies_all_replay() {
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Batch, FsyncPolicy::Never] {
        let dir = tempfile::tempdir().unwrap();
        let c = SpoolConfig {
            max_bytes: 64 * 1024,
            fsync,
        };
        let mut s = Spool::open(dir.path(), c).unwrap();
        for i in 0..100 {
            s.append(vec![metrics(i), metrics(i)]).unwrap();
        }
        drop(s);
        let mut s = Spool::open(dir.path(), c).unwrap();
        let st = s.stats();
        assert_eq!(st.records + st.dropped_records, 200, "{fsync:?}");
        assert_eq!(
            drain(&mut s, BatchLimits::default()).len() as u64,
            st.records,
            "{fsync:?}"
        );
    }
    assert_eq!(FsyncPolicy::parse("batch"), Some(FsyncPolicy::Batch));
    assert_eq!(
        FsyncPolicy::parse(FsyncPolicy::Never.as_str()),
        Some(FsyncPolicy::Never)
    );
    assert_eq!(FsyncPolicy::parse("Batch"), None);
}

#[test]
fn inspect_reads_without_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.append((1..=4).map(metrics).collect()).unwrap();
    let b = s
        .next_batch(BatchLimits {
            max_records: 2,
            max_bytes: 1 << 20,
        })
        .unwrap()
        .unwrap();
    store(&mut s, &b);
    let live = s.stats();
    let seen = Spool::inspect(dir.path()).unwrap();
    assert_eq!(seen.records, 2);
    assert_eq!(seen.bytes, live.bytes);
    assert_eq!(seen.next_rid, 5);
    assert_eq!(seen.acked_rid, 2);
    assert_eq!(seen.last_acked_seq, 1);
    // A missing spool is empty, not an error.
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(Spool::inspect(empty.path()).unwrap().records, 0);
}

/// A small deterministic generator, so the property test needs no extra crate.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Random runs of appends, batches, answers (stored, lost, duplicate), restarts and a
/// small cap: every record id ever given is stored exactly once or counted as dropped,
/// ids increase, and batches never change under a resend.
#[test]
fn every_record_is_stored_once_or_counted_whatever_happens() {
    for seed in 1..=12u64 {
        let dir = tempfile::tempdir().unwrap();
        // No fsync: the logic under test does not depend on it, and it keeps this fast.
        let c = SpoolConfig {
            max_bytes: 24 * 1024,
            fsync: FsyncPolicy::Never,
        };
        let limits = BatchLimits {
            max_records: 7,
            max_bytes: 1 << 20,
        };
        let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut s = Spool::open(dir.path(), c).unwrap();
        // The gateway: stored (seq → batch) and the rids it holds.
        let mut stored_seqs: std::collections::BTreeMap<u64, IngestBatch> = Default::default();
        let mut stored_rids: Vec<u64> = Vec::new();
        let mut last_given = 0u64;
        for step in 0..400 {
            match rng.below(10) {
                0..=3 => {
                    let n = 1 + rng.below(3);
                    let recs = (0..n)
                        .map(|i| {
                            if rng.below(5) == 0 {
                                inventory(i64::try_from(step * 10 + i).unwrap(), 50)
                            } else {
                                metrics(i64::try_from(step * 10 + i).unwrap())
                            }
                        })
                        .collect();
                    let a = s.append(recs).unwrap();
                    assert_eq!(a.first_rid, last_given + 1, "seed {seed} step {step}");
                    last_given = a.last_rid;
                }
                4..=7 => {
                    let Some(b) = s.next_batch(limits).unwrap() else {
                        continue;
                    };
                    let gateway_last = stored_seqs.keys().next_back().copied().unwrap_or(0);
                    let ack = if let Some(prev) = stored_seqs.get(&b.seq) {
                        assert_eq!(prev, &*b, "seed {seed}: resend of {} changed", b.seq);
                        IngestAck {
                            acked_seq: gateway_last,
                            duplicate: true,
                            last_rid: stored_rids.last().copied().unwrap_or(0),
                        }
                    } else {
                        assert_eq!(b.seq, gateway_last + 1, "seed {seed}: gap");
                        stored_seqs.insert(b.seq, (*b).clone());
                        stored_rids.extend(b.records.iter().map(|e| e.rid));
                        IngestAck {
                            acked_seq: b.seq,
                            duplicate: false,
                            last_rid: stored_rids.last().copied().unwrap_or(0),
                        }
                    };
                    // Sometimes the answer is lost on the way back.
                    if rng.below(4) != 0 {
                        s.acknowledge(&ack).unwrap();
                    }
                }
                _ => {
                    drop(s);
                    s = Spool::open(dir.path(), c).unwrap();
                }
            }
        }
        // Let it drain.
        while let Some(b) = s.next_batch(limits).unwrap() {
            let gateway_last = stored_seqs.keys().next_back().copied().unwrap_or(0);
            if let std::collections::btree_map::Entry::Vacant(v) = stored_seqs.entry(b.seq) {
                stored_rids.extend(b.records.iter().map(|e| e.rid));
                v.insert((*b).clone());
            }
            s.acknowledge(&IngestAck {
                acked_seq: gateway_last.max(b.seq),
                duplicate: false,
                last_rid: stored_rids.last().copied().unwrap_or(0),
            })
            .unwrap();
        }
        let mut sorted = stored_rids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            stored_rids.len(),
            "seed {seed}: a record stored twice"
        );
        assert_eq!(sorted, stored_rids, "seed {seed}: records out of order");
        let st = s.stats();
        assert_eq!(st.records, 0);
        assert_eq!(
            stored_rids.len() as u64 + st.dropped_records,
            last_given,
            "seed {seed}: stored + dropped must be every id given"
        );
    }
}
