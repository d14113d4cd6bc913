#!/usr/bin/env bash
# make bench: build release binaries and run every benchmark, writing bench/REPORT.md.
# Sized for a 2-core machine and a few minutes. Override sizes through OUTPOST_BENCH_ARGS,
# e.g. OUTPOST_BENCH_ARGS="--appliances 500 --batches 40".
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
# shellcheck disable=SC2086
target/release/outpost-bench ${OUTPOST_BENCH_ARGS:-} --out bench/REPORT.md
