#!/usr/bin/env bash
# Collector footprint (issue 4's benchmark): on a host running 4 tiny QEMU guests, run one
# after another for the same time at a 10 s interval
#   * outpost-collector (release build, built-in default pack, against a real gateway on
#     loopback),
#   * collectd (collectd-core; cpu, memory, df, interface, load, processes, virt when its
#     plugin loads, csv into a temp dir),
#   * prometheus-node-exporter (scraped every 10 s by curl on loopback),
# and sample each one's RSS (VmRSS) and CPU time (utime+stime from /proc/PID/stat) to write
# bench/FOOTPRINT.md: peak and mean RSS, CPU % of one core, binary size, and the ratios.
#
# Usage: bench/footprint.sh [SECONDS_PER_AGENT]   (default 60; FOOTPRINT_OUT overrides the
# report path). Needs qemu-system-x86_64, collectd, prometheus-node-exporter, curl; a missing
# agent is reported as SKIP in the table. Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-60}"
INTERVAL=10
GUESTS=4
OUT="${FOOTPRINT_OUT:-bench/FOOTPRINT.md}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/outpost-footprint.XXXXXX")"
PIDS=()

cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	sleep 1
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT

have() { command -v "$1" >/dev/null 2>&1; }
# collectd lives in /usr/sbin, which is not on every PATH.
find_bin() { if have "$1"; then command -v "$1"; elif [ -x "/usr/sbin/$1" ]; then echo "/usr/sbin/$1"; fi; }

cargo build --release -p outpost-gateway -p outpost-collector >&2
GW=target/release/outpost-gateway
COL=target/release/outpost-collector

# ---- 4 guests: TCG, no disk, 48 MiB, bounded lifetime ----
if have qemu-system-x86_64; then
	for i in $(seq 1 "$GUESTS"); do
		timeout $((SECS * 3 + 120)) qemu-system-x86_64 -name "guest=footprint-$i" \
			-uuid "$(cat /proc/sys/kernel/random/uuid)" -machine pc -accel tcg -m 48 -smp 1 \
			-nodefaults -nographic -display none -monitor none -serial none -no-reboot \
			>/dev/null 2>&1 &
		PIDS+=($!)
	done
	GUEST_NOTE="$GUESTS QEMU guests (TCG, no disk, 48 MiB each)"
else
	GUEST_NOTE="no guests: qemu-system-x86_64 not found (SKIP)"
fi
sleep 3

# ---- sampling ----
CLK_TCK=$(getconf CLK_TCK)
# cpu_ticks PID: utime+stime (fields 14 and 15; the command name may hold spaces).
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# measure NAME PID: samples every second for SECS; prints "peak_kib mean_kib cpu_percent".
measure() {
	local pid=$2 start_ticks end_ticks peak=0 sum=0 n=0 r
	start_ticks=$(cpu_ticks "$pid")
	local t0 t1
	t0=$(date +%s.%N)
	for _ in $(seq 1 "$SECS"); do
		sleep 1
		[ -r "/proc/$pid/status" ] || break
		r=$(rss_kib "$pid")
		sum=$((sum + r)); n=$((n + 1))
		if [ "$r" -gt "$peak" ]; then peak=$r; fi
	done
	end_ticks=$(cpu_ticks "$pid" 2>/dev/null || echo "$start_ticks")
	t1=$(date +%s.%N)
	awk -v p="$peak" -v s="$sum" -v n="$n" -v a="$start_ticks" -v b="$end_ticks" \
		-v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
		'BEGIN { printf "%d %d %.2f\n", p, (n ? s / n : 0), 100 * (b - a) / hz / (t1 - t0) }'
}

size_kib() { du -kL "$1" | cut -f1; }
ROWS=()
CMDS=()

# ---- outpost-collector against a real gateway ----
"$GW" init --dir "$WORK/gw" --san 127.0.0.1 >/dev/null
"$GW" serve --config "$WORK/gw/gateway.toml" --listen 127.0.0.1:0 --addr-file "$WORK/gw/addr" \
	>"$WORK/gw.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$WORK/gw/addr" ] && break; sleep 0.1; done
ADDR=$(cat "$WORK/gw/addr")
TOKEN=$("$GW" token create --customer footprint --auto-approve --config "$WORK/gw/gateway.toml")
mkdir -p "$WORK/col"
cat >"$WORK/col/collector.toml" <<EOF
gateways = ["$ADDR"]
ca_cert = "$WORK/gw/ca.pem"
state_dir = "$WORK/col/state"
bootstrap_token = "$TOKEN"
interval = "${INTERVAL}s"
EOF
"$COL" run --config "$WORK/col/collector.toml" >"$WORK/col.log" 2>&1 &
COL_PID=$!
PIDS+=("$COL_PID")
# Measure once enrolled and collecting (the first interval has passed).
for _ in $(seq 1 300); do [ -s "$WORK/col/state/cert.pem" ] && break; sleep 0.1; done
sleep 2
read -r peak mean cpu < <(measure outpost-collector "$COL_PID")
ROWS+=("outpost-collector|$peak|$mean|$cpu|$(size_kib "$COL")")
CMDS+=("outpost-collector: \`target/release/outpost-collector run --config collector.toml\` (interval = \"${INTERVAL}s\", built-in default pack, gateway \`outpost-gateway serve --listen 127.0.0.1:0\`)")
kill "$COL_PID" 2>/dev/null || true

# ---- collectd ----
COLLECTD=$(find_bin collectd)
if [ -n "$COLLECTD" ]; then
	mkdir -p "$WORK/collectd/csv"
	PLUGINDIR=$(dirname "$(find /usr/lib -name cpu.so -path '*collectd*' 2>/dev/null | head -1)")
	{
		echo "Hostname \"footprint\""
		echo "FQDNLookup false"
		echo "Interval $INTERVAL"
		echo "BaseDir \"$WORK/collectd\""
		echo "PIDFile \"$WORK/collectd/collectd.pid\""
		echo "PluginDir \"$PLUGINDIR\""
		echo "TypesDB \"/usr/share/collectd/types.db\""
		for p in cpu memory df interface load processes; do echo "LoadPlugin $p"; done
		if [ -e "$PLUGINDIR/virt.so" ] && [ -S /run/libvirt/libvirt-sock-ro ]; then
			echo "LoadPlugin virt"
			echo "<Plugin virt>"
			echo "  Connection \"qemu:///system\""
			echo "</Plugin>"
		fi
		echo "LoadPlugin csv"
		echo "<Plugin csv>"
		echo "  DataDir \"$WORK/collectd/csv\""
		echo "</Plugin>"
	} >"$WORK/collectd/collectd.conf"
	"$COLLECTD" -f -C "$WORK/collectd/collectd.conf" >"$WORK/collectd.log" 2>&1 &
	CD_PID=$!
	PIDS+=("$CD_PID")
	sleep 2
	read -r peak mean cpu < <(measure collectd "$CD_PID")
	ROWS+=("collectd|$peak|$mean|$cpu|$(size_kib "$COLLECTD")")
	VIRT=$(grep -c "LoadPlugin virt" "$WORK/collectd/collectd.conf" || true)
	CMDS+=("collectd: \`collectd -f -C collectd.conf\` (Interval $INTERVAL; cpu, memory, df, interface, load, processes$([ "$VIRT" -gt 0 ] && echo ', virt' || echo '; virt not loaded: no libvirtd running'), csv)")
	kill "$CD_PID" 2>/dev/null || true
else
	ROWS+=("collectd|SKIP: collectd not found (make deps installs collectd-core)||||")
fi

# ---- prometheus-node-exporter, scraped every 10 s ----
NE=$(find_bin prometheus-node-exporter)
if [ -n "$NE" ] && have curl; then
	PORT=$((20000 + RANDOM % 20000))
	"$NE" --web.listen-address="127.0.0.1:$PORT" >"$WORK/ne.log" 2>&1 &
	NE_PID=$!
	PIDS+=("$NE_PID")
	sleep 2
	(while kill -0 "$NE_PID" 2>/dev/null; do
		curl -s -o /dev/null "http://127.0.0.1:$PORT/metrics" || true
		sleep "$INTERVAL"
	done) &
	PIDS+=($!)
	read -r peak mean cpu < <(measure node-exporter "$NE_PID")
	ROWS+=("prometheus-node-exporter|$peak|$mean|$cpu|$(size_kib "$NE")")
	CMDS+=("prometheus-node-exporter: \`prometheus-node-exporter --web.listen-address=127.0.0.1:PORT\` (default collectors), scraped by \`curl http://127.0.0.1:PORT/metrics\` every ${INTERVAL} s")
	kill "$NE_PID" 2>/dev/null || true
else
	ROWS+=("prometheus-node-exporter|SKIP: prometheus-node-exporter or curl not found||||")
fi

# ---- report ----
ratio() { # ratio COLUMN NAME: outpost / NAME for that column, or -
	local a b
	a=$(printf '%s\n' "${ROWS[@]}" | awk -F'|' -v c="$1" '$1 == "outpost-collector" {print $c}')
	b=$(printf '%s\n' "${ROWS[@]}" | awk -F'|' -v c="$1" -v n="$2" '$1 == n {print $c}')
	awk -v a="$a" -v b="$b" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else printf "-" }'
}
{
	echo "# Collector footprint"
	echo
	echo "Written by \`bench/footprint.sh $SECS\` on $(date -u +%Y-%m-%dT%H:%M:%SZ)."
	echo "Machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%d MiB", $2/1024}' /proc/meminfo), $(uname -sr); shared, so figures vary between runs."
	echo "Host load during the run: $GUEST_NOTE. Each agent ran alone for ${SECS} s at a ${INTERVAL} s interval;"
	echo "RSS sampled every second (VmRSS), CPU from utime+stime in /proc/PID/stat over the run."
	echo
	echo "| agent | peak RSS (KiB) | mean RSS (KiB) | CPU (% of one core) | binary (KiB) |"
	echo "|---|---:|---:|---:|---:|"
	for r in "${ROWS[@]}"; do
		IFS='|' read -r n p m c s <<<"$r"
		echo "| $n | $p | $m | $c | $s |"
	done
	echo
	echo "| ratio | peak RSS | mean RSS | CPU | binary |"
	echo "|---|---:|---:|---:|---:|"
	for other in collectd prometheus-node-exporter; do
		echo "| outpost / $other | $(ratio 2 "$other") | $(ratio 3 "$other") | $(ratio 4 "$other") | $(ratio 5 "$other") |"
	done
	echo
	echo "Command lines:"
	echo
	for c in "${CMDS[@]}"; do echo "* $c"; done
	echo
	echo "What each does at that interval differs: the collector also discovers the guests,"
	echo "judges health with the default pack (host, file systems, NICs, guests, services,"
	echo "certificates), spools to disk and forwards over mTLS; collectd writes CSV locally;"
	echo "node-exporter only answers scrapes. The binary column is the file size (collectd's"
	echo "plugins are separate files and not counted)."
} >"$OUT"
cat "$OUT"
