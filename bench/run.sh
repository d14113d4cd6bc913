#!/usr/bin/env bash
# make bench: build release binaries and run every benchmark, writing bench/REPORT.md.
# Sized for a 2-core machine and a few minutes (ingest ~1 min, spool ~30 s with a 1 GiB
# replay, end to end ~1 min). Override sizes through OUTPOST_BENCH_ARGS, e.g.
# OUTPOST_BENCH_ARGS="--appliances 500 --batches 40 --e2e-records 100000 --only ingest,e2e".
# PostgreSQL: $OUTPOST_TEST_POSTGRES, else postgres://postgres@127.0.0.1:5432/test; when it is
# unreachable the report says SKIP with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
cargo build --release -p outpost-collector --example spool_bench
# shellcheck disable=SC2086
target/release/outpost-bench ${OUTPOST_BENCH_ARGS:-} --out bench/REPORT.md
bench/footprint.sh "${OUTPOST_FOOTPRINT_SECS:-60}"
# Collector footprint (issue 4): writes bench/FOOTPRINT.md, appended to REPORT.md.
{ echo; sed 's/^#/##/' bench/FOOTPRINT.md; } >>bench/REPORT.md
# Staged updates (issue 5): writes bench/UPDATES.md; its sections go into REPORT.md too.
bench/updates.sh
{ echo; sed 's/^#/##/' bench/UPDATES.md; } >>bench/REPORT.md
# Image build (issue 6) vs mmdebstrap + genimage: writes bench/IMAGE.md, appends it to REPORT.md.
bench/image.sh
# Scale (issue 7): outpost-loadgen against one gateway, a restart storm and a pool; writes
# bench/SCALE.md, added to REPORT.md. Sizes: OUTPOST_SCALE_APPLIANCES, OUTPOST_SCALE_SECS.
bench/scale.sh
{ echo; sed 's/^#/##/' bench/SCALE.md; } >>bench/REPORT.md
