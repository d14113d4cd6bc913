#!/usr/bin/env bash
# Issue 7 benchmarks (make bench): how far one gateway goes, with outpost-loadgen.
#
#   1. one gateway on SQLite, N simulated appliances (own key, certificate and TLS connection
#      each, a command long-poll open, a batch every interval with jitter) for SECS seconds:
#      ingest rate, latency, errors, the gateway's RSS and CPU, its memory per connection;
#   1b. the same gateway saturated: N more appliances sending every second for SECS/3 s (the
#      ingest ceiling of one SQLite writer, and what the overload limit sheds);
#   2. a reconnect storm: N more appliances connected, the gateway restarted (SIGTERM, then
#      serve again on the same address); time until every appliance is back, handshakes/s;
#   3. a pool of two gateways (127.0.0.2, 127.0.0.3) on one PostgreSQL database (a throwaway
#      database on $OUTPOST_TEST_POSTGRES, dropped afterwards) under the same load as 1;
#   4. optional, large (OUTPOST_SCALE_LARGE=N, e.g. 18000): a fresh gateway on SQLite with N
#      appliances every interval for OUTPOST_SCALE_LARGE_SECS (120), the load generator split
#      over OUTPOST_SCALE_LARGE_WORKERS processes (2) and OUTPOST_SCALE_LARGE_SOURCES source
#      addresses (4: 127.0.0.2…): the largest fleet one gateway process holds under this
#      machine's open-file limit. Adds several minutes (enrolment runs at a few hundred/s).
#
# Writes bench/SCALE.md (or $OUT) with the figures and the command lines; bench/run.sh adds
# it to bench/REPORT.md. Sizes: OUTPOST_SCALE_APPLIANCES (2000), OUTPOST_SCALE_SECS (120),
# OUTPOST_SCALE_INTERVAL (30s). Loopback only; every wait is bounded; everything started here
# is stopped on exit. PROFILE=debug gives a quick smoke run (figures meaningless).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[bench/scale] %s\n' "$*" >&2; }
OUT=${OUT:-bench/SCALE.md}
N=${OUTPOST_SCALE_APPLIANCES:-2000}
SECS=${OUTPOST_SCALE_SECS:-120}
LARGE=${OUTPOST_SCALE_LARGE:-0}
LARGE_SECS=${OUTPOST_SCALE_LARGE_SECS:-120}
LARGE_WORKERS=${OUTPOST_SCALE_LARGE_WORKERS:-2}
LARGE_SOURCES=${OUTPOST_SCALE_LARGE_SOURCES:-4}
INTERVAL=${OUTPOST_SCALE_INTERVAL:-30s}
PG=${OUTPOST_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}
PROFILE=${PROFILE:-release}
BIN=target/$PROFILE
if [ "${SKIP_BUILD:-0}" != 1 ]; then
	if [ "$PROFILE" = release ]; then
		cargo build --release -p outpost-gateway -p outpost-tests -p outpost-collector --bins
	else
		cargo build -p outpost-gateway -p outpost-tests -p outpost-collector --bins
	fi
fi
GW=$BIN/outpost-gateway
LG=$BIN/outpost-loadgen
# One descriptor per connection on both sides.
ulimit -n "$(ulimit -Hn)" || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/outpost-scale.XXXXXX")
PIDS=()
DB=""
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	if [ -n "$DB" ]; then psql -q "$PG" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT

# serve DIR LISTEN: starts a gateway, waits (bounded) for its address; sets SERVE_PID, SERVE_ADDR.
serve() {
	local dir=$1 listen=$2
	rm -f "$dir/addr"
	OUTPOST_LOG=warn "$GW" serve --config "$dir/gateway.toml" --listen "$listen" \
		--addr-file "$dir/addr" >>"$dir/serve.log" 2>&1 &
	SERVE_PID=$!
	PIDS+=("$SERVE_PID")
	for _ in $(seq 1 300); do
		if [ -s "$dir/addr" ]; then
			SERVE_ADDR=$(cat "$dir/addr")
			return 0
		fi
		kill -0 "$SERVE_PID" 2>/dev/null || { tail -20 "$dir/serve.log" >&2; return 1; }
		sleep 0.1
	done
	log "gateway in $dir did not start"
	return 1
}

# stop PID: SIGTERM, bounded wait (the gateway drains for up to 20 s), then SIGKILL.
stop() {
	local pid=$1
	kill -TERM "$pid" 2>/dev/null || return 0
	for _ in $(seq 1 300); do
		kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

token() { OUTPOST_LOG=warn "$GW" token create --config "$1/gateway.toml" --customer bench --auto-approve --uses "$2" --ttl 2h; }

CMDS=()
# run_lg NAME ARGS...: runs the load generator (bounded), keeps its JSON report in $WORK/NAME.json.
run_lg() {
	local name=$1
	shift
	local shown="target/$PROFILE/outpost-loadgen $*"
	CMDS+=("$name: \`${shown//$WORK/\$WORK}\`")
	log "$name: $shown"
	timeout --kill-after=10 $((SECS * 3 + 900)) "$LG" "$@" --json >"$WORK/$name.json"
	jq -r '"  \(.batches_acked) batches acknowledged, p99 \(.ingest_latency.p99_ms) ms, errors \(.errors)"' "$WORK/$name.json" >&2
}

# 1. One gateway, SQLite.
mkdir -p "$WORK/sqlite"
"$GW" init --dir "$WORK/sqlite" --san 127.0.0.1 --san localhost >/dev/null
token "$WORK/sqlite" "$((3 * N))" >"$WORK/sqlite/token"
serve "$WORK/sqlite" 127.0.0.1:0
SQ_ADDR=$SERVE_ADDR
SQ_PID=$SERVE_PID
run_lg sqlite --gateway "$SQ_ADDR" --ca "$WORK/sqlite/ca.pem" --token-file "$WORK/sqlite/token" \
	--appliances "$N" --interval "$INTERVAL" --duration "${SECS}s" --gateway-pid "$SQ_PID"

# 1b. The same gateway saturated: N more appliances every second (the ingest ceiling, shedding).
SAT_SECS=$(((SECS + 2) / 3))
run_lg saturated --gateway "$SQ_ADDR" --ca "$WORK/sqlite/ca.pem" --token-file "$WORK/sqlite/token" \
	--appliances "$N" --interval 1s --duration "${SAT_SECS}s" --gateway-pid "$SQ_PID"

# 2. Reconnect storm on the same gateway: N more appliances, then a restart.
rm -f "$WORK/ready"
CMDS+=("storm: \`target/$PROFILE/outpost-loadgen --gateway ADDR --ca ca.pem --token-file token --appliances $N --interval $INTERVAL --duration 300s --storm --ready-file ready\`, then \`kill -TERM\` the gateway and \`outpost-gateway serve\` again on the same address")
log "storm: $N appliances, then a gateway restart"
timeout --kill-after=10 400 "$LG" --gateway "$SQ_ADDR" --ca "$WORK/sqlite/ca.pem" \
	--token-file "$WORK/sqlite/token" --appliances "$N" --interval "$INTERVAL" --duration 300s \
	--storm --ready-file "$WORK/ready" --json >"$WORK/storm.json" &
STORM_PID=$!
PIDS+=("$STORM_PID")
for _ in $(seq 1 6000); do
	[ -s "$WORK/ready" ] && break
	kill -0 "$STORM_PID" 2>/dev/null || break
	sleep 0.1
done
[ -s "$WORK/ready" ] || { log "the storm load generator never got ready"; exit 1; }
stop "$SQ_PID"
serve "$WORK/sqlite" "$SQ_ADDR"
SQ_PID=$SERVE_PID
wait "$STORM_PID"
STORM_RSS=$(awk '/VmRSS/ {print $2}' "/proc/$SQ_PID/status")
jq -r '"  storm: \(.storm)"' "$WORK/storm.json" >&2
stop "$SQ_PID"

# 3. A pool of two gateways on PostgreSQL.
POOL=skip
DB=outpost_scale_$$_$RANDOM
if psql -q "$PG" -c "CREATE DATABASE $DB" >/dev/null 2>&1; then
	PGDB=${PG%/*}/$DB
	mkdir -p "$WORK/gw1" "$WORK/gw2"
	"$GW" init --dir "$WORK/gw1" --san 127.0.0.2 --san 127.0.0.3 --san 127.0.0.1 --san localhost >/dev/null
	sed -i "s|^store = .*|store = \"$PGDB\"|" "$WORK/gw1/gateway.toml"
	for f in gateway.toml ca.pem ca-key.pem server.pem server-key.pem; do cp -p "$WORK/gw1/$f" "$WORK/gw2/$f"; done
	serve "$WORK/gw1" 127.0.0.2:0
	A1=$SERVE_ADDR P1=$SERVE_PID
	serve "$WORK/gw2" 127.0.0.3:0
	A2=$SERVE_ADDR P2=$SERVE_PID
	token "$WORK/gw1" "$N" >"$WORK/gw1/token"
	run_lg pool --gateway "$A1,$A2" --ca "$WORK/gw1/ca.pem" --token-file "$WORK/gw1/token" \
		--appliances "$N" --interval "$INTERVAL" --duration "${SECS}s" --gateway-pid "$P1,$P2"
	stop "$P1"
	stop "$P2"
	POOL=ok
else
	DB=""
	log "SKIP: PostgreSQL at ${PG%%@*}@… is unreachable"
fi

# 4. Optional: the largest fleet this machine lets one gateway hold.
if [ "$LARGE" -gt 0 ]; then
	mkdir -p "$WORK/large"
	"$GW" init --dir "$WORK/large" --san 127.0.0.1 --san localhost >/dev/null
	token "$WORK/large" "$LARGE" >"$WORK/large/token"
	serve "$WORK/large" 127.0.0.1:0
	LA_PID=$SERVE_PID
	run_lg large --gateway "$SERVE_ADDR" --ca "$WORK/large/ca.pem" --token-file "$WORK/large/token" \
		--appliances "$LARGE" --interval "$INTERVAL" --duration "${LARGE_SECS}s" --enrol-concurrency 64 \
		--workers "$LARGE_WORKERS" --sources "$LARGE_SOURCES" --gateway-pid "$LA_PID"
	LARGE_NOFILE=$(awk '/Max open files/ {print $4 " soft / " $5 " hard"}' "/proc/$LA_PID/limits")
	stop "$LA_PID"
fi

# The report.
j() { jq -r "$2" "$WORK/$1.json"; }
row() { # NAME: one table row of a steady-state run
	local n=$1
	echo "| $n | $(j "$n" '.appliances') | $(j "$n" '"\(.enrol_secs*100|round/100) s (\(.enrol_per_sec|round)/s)"') | $(j "$n" '"\(.batches_acked) / \(.batches_sent)"') | $(j "$n" '"\(.batches_per_sec*10|round/10)"') | $(j "$n" '"\(.ingest_latency.p50_ms*10|round/10) / \(.ingest_latency.p99_ms*10|round/10) / \(.ingest_latency.max_ms*10|round/10)"') | $(j "$n" '[.errors|to_entries[]|"\(.key) \(.value)"]|join(", ")|if .=="" then "none" else . end') | $(j "$n" '.reconnects') | $(j "$n" '[.gateway_usage[]|"\(.rss_connected_kib) / \(.rss_peak_kib)"]|join(" + ")') | $(j "$n" '[.gateway_usage[]|"\(.cpu_percent_of_one_core*10|round/10)"]|join(" + ")') | $(j "$n" '.gateway_kib_per_connection*10|round/10') |"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "n/a" }'; }
{
	echo "# Scale: outpost-loadgen against one gateway, a restart, and a pool"
	echo
	echo "Written by \`bench/scale.sh\` on $(date -u +%Y-%m-%dT%H:%M:%SZ) ($PROFILE build)."
	echo "Machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%d MiB", $2/1024}' /proc/meminfo), $(uname -sr); shared (the load generator runs on the same cores), so figures vary between runs."
	echo "$N simulated appliances per stage, each with its own P-256 key, certificate and TLS 1.3 connection (HTTP/2), a command"
	echo "long-poll open, a zstd JSON batch (metrics + agent record, inventory at first and in ~1 of 20) every $INTERVAL with a random"
	echo "offset; payload $(j sqlite '.payload') ($(j sqlite '.batch_bytes_with_inventory') B with inventory, $(j sqlite '.batch_bytes_metrics_only') B without, compressed). Open files: $(ulimit -n)."
	echo
	echo "| stage | appliances | enrolment | batches acked / sent | batches/s | latency p50 / p99 / max (ms) | errors | reconnects | gateway RSS connected / peak (KiB) | gateway CPU (% of one core) | gateway KiB per connection |"
	echo "|---|---:|---|---|---:|---|---|---:|---|---|---:|"
	row sqlite
	row saturated
	[ "$POOL" = ok ] && row pool
	[ "$LARGE" -gt 0 ] && row large
	echo
	echo "Reconnect storm (SQLite gateway restarted with $N appliances connected, its store also holding the $((2 * N)) of the earlier stages):"
	echo
	echo "| lost | back | never lost | from first refusal | from first appliance back | handshakes/s | failed attempts | gateway RSS after |"
	echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
	echo "| $(j storm '.storm.lost') | $(j storm '.storm.back') | $(j storm '.storm.never_lost') | $(j storm '.storm.secs_from_first_refusal*100|round/100') s | $(j storm '.storm.secs_from_first_back*100|round/100') s | $(j storm '.storm.handshakes_per_sec|round') | $(j storm '.storm.failed_attempts') | $STORM_RSS KiB |"
	echo
	if [ "$POOL" = ok ]; then
		echo "| ratio (same run) | value |"
		echo "|---|---:|"
		echo "| p99 latency, pool on PostgreSQL / one gateway on SQLite | $(ratio "$(j pool '.ingest_latency.p99_ms')" "$(j sqlite '.ingest_latency.p99_ms')") |"
		echo "| gateway CPU per batch, pool (both) / SQLite | $(ratio "$(j pool '([.gateway_usage[].cpu_secs]|add) / (.batches_acked|if .==0 then 1 else . end)')" "$(j sqlite '([.gateway_usage[].cpu_secs]|add) / (.batches_acked|if .==0 then 1 else . end)')") |"
		echo "| enrolments/s, pool / SQLite | $(ratio "$(j pool '.enrol_per_sec')" "$(j sqlite '.enrol_per_sec')") |"
		echo
	else
		echo "SKIP: pool on PostgreSQL: ${PG%%@*}@… unreachable."
		echo
	fi
	if [ "$LARGE" -gt 0 ]; then
		echo "Large stage: $LARGE appliances from $(j large '.workers') load-generator processes and source addresses $(j large '.sources|join(", ")'); the gateway's open files: $LARGE_NOFILE."
		echo
		echo "| ratio (same run) | value |"
		echo "|---|---:|"
		echo "| gateway CPU per batch, large / sqlite stage | $(ratio "$(j large '([.gateway_usage[].cpu_secs]|add) / (.batches_acked|if .==0 then 1 else . end)')" "$(j sqlite '([.gateway_usage[].cpu_secs]|add) / (.batches_acked|if .==0 then 1 else . end)')") |"
		echo "| gateway KiB per connection, large / sqlite stage | $(ratio "$(j large '.gateway_kib_per_connection')" "$(j sqlite '.gateway_kib_per_connection')") |"
		echo "| gateway CPU ms per batch, large stage | $(j large '(([.gateway_usage[].cpu_secs]|add) / (.batches_acked|if .==0 then 1 else . end) * 1000 * 100 | round) / 100') |"
		echo "| extrapolated: cores for 50,000 appliances every $INTERVAL at that cost | $(j large "(([.gateway_usage[].cpu_secs]|add) / (.batches_acked|if .==0 then 1 else . end)) * 50000 / $(echo "$INTERVAL" | tr -dc 0-9) * 100 | round / 100") |"
		echo "| extrapolated: gateway memory for 50,000 connections at that KiB each, MiB | $(j large '.gateway_kib_per_connection * 50000 / 1024 | round') |"
		echo
	fi
	echo "Command lines (\$WORK is a temporary directory; the gateways were made with \`outpost-gateway init\` and an"
	echo "auto-approve token from \`outpost-gateway token create --auto-approve --uses …\`):"
	echo
	for c in "${CMDS[@]}"; do echo "* $c"; done
	echo
	echo "What bounds these figures and how they grow with N: \`docs/scale.md\`."
} >"$OUT"
cat "$OUT"
