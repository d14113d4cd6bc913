#!/usr/bin/env bash
# Collector footprint (issue 4's benchmark): on a host running 4 tiny QEMU guests, run side
# by side, at the same time and at a 10 s interval
#   * outpost-collector (release build, built-in default pack, against a real gateway on
#     loopback),
#   * collectd (collectd-core; cpu, memory, df, interface, load, processes, virt, csv into a
#     temp dir),
#   * prometheus-node-exporter (scraped every 10 s by curl on loopback),
# and sample all three every second over the same window — RSS (VmRSS, and its anonymous
# part RssAnon) and CPU time (utime+stime from /proc/PID/stat) — to write
# bench/FOOTPRINT.md: peak and mean RSS, CPU % of one core, binary size, and the ratios.
#
# The guests are libvirt domains when libvirtd answers (a running one or, as root, a private
# virtlogd + libvirtd started in the foreground for the run, as tests/tests/libvirt.rs does),
# so that collectd's virt plugin has them to read; otherwise bare QEMU processes, and the
# report says why virt was not loaded.
#
# Usage: bench/footprint.sh [SECONDS]   (default 60; FOOTPRINT_OUT overrides the report
# path). Needs qemu-system-x86_64, collectd, prometheus-node-exporter, curl; libvirt-daemon
# and libvirt-clients for the virt plugin. A missing agent is reported as SKIP in the table.
# Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-60}"
INTERVAL=10
GUESTS=4
GUEST_MIB=48
OUT="${FOOTPRINT_OUT:-bench/FOOTPRINT.md}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/outpost-footprint.XXXXXX")"
PIDS=()
DOMAINS=()
DAEMONS=()

cleanup() {
	for d in "${DOMAINS[@]}"; do timeout 60 virsh -c qemu:///system destroy "$d" >/dev/null 2>&1 || true; done
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	sleep 1
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	# libvirtd before virtlogd; SIGTERM first so they remove their sockets.
	for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
		kill "${DAEMONS[$i]}" 2>/dev/null || true
		for _ in $(seq 1 50); do kill -0 "${DAEMONS[$i]}" 2>/dev/null || break; sleep 0.2; done
		kill -9 "${DAEMONS[$i]}" 2>/dev/null || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT

have() { command -v "$1" >/dev/null 2>&1; }
# collectd and libvirtd live in /usr/sbin, which is not on every PATH.
find_bin() { if have "$1"; then command -v "$1"; elif [ -x "/usr/sbin/$1" ]; then echo "/usr/sbin/$1"; fi; }

cargo build --release -p outpost-gateway -p outpost-collector >&2
GW=target/release/outpost-gateway
COL=target/release/outpost-collector

# ---- libvirt: the running libvirtd, or a private one when root ----
virsh_ok() { timeout 20 virsh -c qemu:///system version >/dev/null 2>&1; }
LIBVIRTD=$(find_bin libvirtd)
VIRTLOGD=$(find_bin virtlogd)
LIBVIRT=0
if ! have virsh || [ -z "$LIBVIRTD" ] || [ -z "$VIRTLOGD" ]; then
	LIBVIRT_NOTE="libvirt-daemon or libvirt-clients not installed"
elif [ -S /run/libvirt/libvirt-sock ] && virsh_ok; then
	LIBVIRT=1
	LIBVIRT_NOTE="the libvirtd already running"
elif [ "$(id -u)" != 0 ]; then
	LIBVIRT_NOTE="no libvirtd running, and starting one needs root"
else
	"$VIRTLOGD" --pid-file "$WORK/virtlogd.pid" >"$WORK/virtlogd.log" 2>&1 &
	DAEMONS+=($!)
	"$LIBVIRTD" --pid-file "$WORK/libvirtd.pid" >"$WORK/libvirtd.log" 2>&1 &
	DAEMONS+=($!)
	for _ in $(seq 1 60); do
		if virsh_ok; then LIBVIRT=1; break; fi
		sleep 1
	done
	if [ "$LIBVIRT" = 1 ]; then
		LIBVIRT_NOTE="a private libvirtd started for the run"
	else
		LIBVIRT_NOTE="libvirtd did not come up here: $(tail -1 "$WORK/libvirtd.log" | cut -c1-160)"
	fi
fi

# ---- 4 guests: TCG, no disk, 48 MiB; libvirt domains when libvirt answers ----
domain_xml() { # domain_xml NAME
	printf '%s\n' "<domain type='qemu'>" "  <name>$1</name>" \
		"  <memory unit='MiB'>$GUEST_MIB</memory>" "  <vcpu>1</vcpu>" \
		"  <os><type arch='x86_64' machine='pc'>hvm</type></os>" \
		"  <on_poweroff>destroy</on_poweroff>" "  <on_reboot>destroy</on_reboot>" \
		"  <on_crash>destroy</on_crash>" \
		"  <devices><emulator>$(command -v qemu-system-x86_64)</emulator></devices>" "</domain>"
}
if ! have qemu-system-x86_64; then
	GUEST_NOTE="no guests: qemu-system-x86_64 not found (SKIP)"
	LIBVIRT=0
	LIBVIRT_NOTE="no QEMU to run guests"
elif [ "$LIBVIRT" = 1 ]; then
	for i in $(seq 1 "$GUESTS"); do
		name="footprint-$$-$i"
		domain_xml "$name" >"$WORK/$name.xml"
		# The first start probes QEMU's capabilities, which is slow on a busy box.
		if timeout 240 virsh -c qemu:///system create "$WORK/$name.xml" >"$WORK/virsh.log" 2>&1; then
			DOMAINS+=("$name")
		else
			LIBVIRT=0
			LIBVIRT_NOTE="virsh create failed: $(tail -1 "$WORK/virsh.log" | cut -c1-160)"
			break
		fi
	done
	GUEST_NOTE="$GUESTS libvirt domains (QEMU TCG, no disk, $GUEST_MIB MiB each; $LIBVIRT_NOTE)"
fi
if have qemu-system-x86_64 && [ "$LIBVIRT" = 0 ]; then
	for d in "${DOMAINS[@]}"; do timeout 60 virsh -c qemu:///system destroy "$d" >/dev/null 2>&1 || true; done
	DOMAINS=()
	for i in $(seq 1 "$GUESTS"); do
		timeout $((SECS + 300)) qemu-system-x86_64 -name "guest=footprint-$i" \
			-uuid "$(cat /proc/sys/kernel/random/uuid)" -machine pc -accel tcg -m "$GUEST_MIB" -smp 1 \
			-nodefaults -nographic -display none -monitor none -serial none -no-reboot \
			>/dev/null 2>&1 &
		PIDS+=($!)
	done
	GUEST_NOTE="$GUESTS bare QEMU guests (TCG, no disk, $GUEST_MIB MiB each)"
fi
sleep 3

size_kib() { du -kL "$1" | cut -f1; }
NAMES=()    # agents that run, in table order
declare -A PID_OF SIZE_OF
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
PIDS+=($!)
NAMES+=(outpost-collector)
PID_OF[outpost-collector]=$!
SIZE_OF[outpost-collector]=$(size_kib "$COL")
CMDS+=("outpost-collector: \`target/release/outpost-collector run --config collector.toml\` (interval = \"${INTERVAL}s\", built-in default pack, gateway \`outpost-gateway serve --listen 127.0.0.1:0\`)")

# ---- collectd: with virt when libvirt answers, and a second one without it ----
# write_collectd_conf DIR WITH_VIRT
write_collectd_conf() {
	mkdir -p "$1/csv"
	{
		echo "Hostname \"footprint\""
		echo "FQDNLookup false"
		echo "Interval $INTERVAL"
		echo "BaseDir \"$1\""
		echo "PIDFile \"$1/collectd.pid\""
		echo "PluginDir \"$PLUGINDIR\""
		echo "TypesDB \"/usr/share/collectd/types.db\""
		for p in cpu memory df interface load processes; do echo "LoadPlugin $p"; done
		if [ "$2" = 1 ]; then
			echo "LoadPlugin virt"
			echo "<Plugin virt>"
			echo "  Connection \"qemu:///system\""
			echo "</Plugin>"
		fi
		echo "LoadPlugin csv"
		echo "<Plugin csv>"
		echo "  DataDir \"$1/csv\""
		echo "</Plugin>"
	} >"$1/collectd.conf"
}
# start_collectd NAME DIR
start_collectd() {
	"$COLLECTD" -f -C "$2/collectd.conf" >"$2.log" 2>&1 &
	PIDS+=($!)
	NAMES+=("$1")
	PID_OF[$1]=$!
	SIZE_OF[$1]=$(size_kib "$COLLECTD")
}
COLLECTD=$(find_bin collectd)
VIRT=0
if [ -n "$COLLECTD" ]; then
	PLUGINDIR=$(dirname "$(find /usr/lib -name cpu.so -path '*collectd*' 2>/dev/null | head -1)")
	if [ "$LIBVIRT" = 1 ] && [ -e "$PLUGINDIR/virt.so" ]; then VIRT=1; fi
	write_collectd_conf "$WORK/collectd" "$VIRT"
	start_collectd collectd "$WORK/collectd"
	if [ "$VIRT" = 1 ]; then
		VIRT_DESC="virt (Connection qemu:///system, $LIBVIRT_NOTE)"
	elif [ -e "$PLUGINDIR/virt.so" ]; then
		VIRT_DESC="virt not loaded: $LIBVIRT_NOTE"
	else
		VIRT_DESC="virt not loaded: no virt.so in $PLUGINDIR"
	fi
	CMDS+=("collectd: \`collectd -f -C collectd.conf\` (Interval $INTERVAL; cpu, memory, df, interface, load, processes, $VIRT_DESC, csv)")
	if [ "$VIRT" = 1 ]; then
		# The same without virt, for what libvirt's client library adds to collectd.
		write_collectd_conf "$WORK/collectd-novirt" 0
		start_collectd "collectd without virt" "$WORK/collectd-novirt"
		CMDS+=("collectd without virt: the same config without the virt plugin, run alongside")
	fi
else
	ROWS+=("collectd|SKIP: collectd not found (make deps installs collectd-core)|||||")
fi

# ---- prometheus-node-exporter, scraped every 10 s ----
NE=$(find_bin prometheus-node-exporter)
if [ -n "$NE" ] && have curl; then
	PORT=$((20000 + RANDOM % 20000))
	"$NE" --web.listen-address="127.0.0.1:$PORT" >"$WORK/ne.log" 2>&1 &
	PIDS+=($!)
	NAMES+=(prometheus-node-exporter)
	PID_OF[prometheus-node-exporter]=$!
	SIZE_OF[prometheus-node-exporter]=$(size_kib "$NE")
	(while kill -0 "${PID_OF[prometheus-node-exporter]}" 2>/dev/null; do
		curl -s -o /dev/null "http://127.0.0.1:$PORT/metrics" || true
		sleep "$INTERVAL"
	done) &
	PIDS+=($!)
	CMDS+=("prometheus-node-exporter: \`prometheus-node-exporter --web.listen-address=127.0.0.1:PORT\` (default collectors), scraped by \`curl http://127.0.0.1:PORT/metrics\` every ${INTERVAL} s")
else
	ROWS+=("prometheus-node-exporter|SKIP: prometheus-node-exporter or curl not found|||||")
fi

# Measure once the collector is enrolled and collecting (the first interval has passed)
# and the others have run their first interval too.
for _ in $(seq 1 300); do [ -s "$WORK/col/state/cert.pem" ] && break; sleep 0.1; done
sleep "$INTERVAL"

# ---- sampling: all agents, every second, over the same window ----
CLK_TCK=$(getconf CLK_TCK)
# cpu_ticks PID: utime+stime (fields 14 and 15; the command name may hold spaces).
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

declare -A T0 T1 PEAK SUM ANON N
for a in "${NAMES[@]}"; do
	T0[$a]=$(cpu_ticks "${PID_OF[$a]}")
	PEAK[$a]=0 SUM[$a]=0 ANON[$a]=0 N[$a]=0
done
W0=$(date +%s.%N)
for _ in $(seq 1 "$SECS"); do
	sleep 1
	for a in "${NAMES[@]}"; do
		p=${PID_OF[$a]}
		[ -r "/proc/$p/status" ] || continue
		r=$(status_kib "$p" VmRSS)
		SUM[$a]=$((SUM[$a] + r))
		ANON[$a]=$((ANON[$a] + $(status_kib "$p" RssAnon)))
		N[$a]=$((N[$a] + 1))
		if [ "$r" -gt "${PEAK[$a]}" ]; then PEAK[$a]=$r; fi
	done
done
for a in "${NAMES[@]}"; do T1[$a]=$(cpu_ticks "${PID_OF[$a]}" 2>/dev/null || echo "${T0[$a]}"); done
W1=$(date +%s.%N)

for a in "${NAMES[@]}"; do
	if [ "${N[$a]}" -lt "$SECS" ]; then
		ROWS+=("$a|FAILED: exited during the run ($((N[$a])) of $SECS samples)|||||")
		continue
	fi
	ROWS+=("$(awk -v n="$a" -v p="${PEAK[$a]}" -v s="${SUM[$a]}" -v an="${ANON[$a]}" -v k="${N[$a]}" \
		-v a="${T0[$a]}" -v b="${T1[$a]}" -v hz="$CLK_TCK" -v t0="$W0" -v t1="$W1" -v sz="${SIZE_OF[$a]}" \
		'BEGIN { printf "%s|%d|%d|%d|%.3f|%d\n", n, p, s / k, an / k, 100 * (b - a) / hz / (t1 - t0), sz }')")
done
# What the virt plugin wrote: one CSV directory per domain and plugin instance.
VIRT_SEEN=$(find "$WORK/collectd/csv" -maxdepth 2 -type d -name 'virt*' 2>/dev/null | wc -l)

# ---- report ----
ratio() { # ratio COLUMN NAME: outpost / NAME for that column, or -
	local a b
	a=$(printf '%s\n' "${ROWS[@]}" | awk -F'|' -v c="$1" '$1 == "outpost-collector" {print $c}')
	b=$(printf '%s\n' "${ROWS[@]}" | awk -F'|' -v c="$1" -v n="$2" '$1 == n {print $c}')
	awk -v a="$a" -v b="$b" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else printf "-" }'
}
verdict() { # verdict COLUMN NAME: met / NOT met for outpost <= NAME in that column
	local r
	r=$(ratio "$1" "$2")
	if [ "$r" = "-" ]; then echo "not measured"; elif awk -v r="$r" 'BEGIN { exit !(r <= 1) }'; then echo "met ($r)"; else echo "NOT met ($r)"; fi
}
{
	echo "# Collector footprint"
	echo
	echo "Written by \`bench/footprint.sh $SECS\` on $(date -u +%Y-%m-%dT%H:%M:%SZ)."
	echo "Machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%d MiB", $2/1024}' /proc/meminfo), $(uname -sr); shared, so figures vary between runs."
	echo "Host load during the run: $GUEST_NOTE."
	echo "All agents ran at the same time at a ${INTERVAL} s interval and were sampled together over the same"
	echo "${SECS} s window, which starts once the collector is enrolled and every agent has had ${INTERVAL} s to settle:"
	echo "RSS every second (VmRSS; anon = its RssAnon part, the rest is file-backed: the binary's and"
	echo "libraries' pages), CPU from utime+stime in /proc/PID/stat over the window (1 tick = $(awk -v hz="$CLK_TCK" -v s="$SECS" 'BEGIN { printf "%.3f", 100 / hz / s }') % at ${SECS} s)."
	echo
	echo "| agent | peak RSS (KiB) | mean RSS (KiB) | mean anon RSS (KiB) | CPU (% of one core) | binary (KiB) |"
	echo "|---|---:|---:|---:|---:|---:|"
	for r in "${ROWS[@]}"; do
		IFS='|' read -r n p m an c s <<<"$r"
		echo "| $n | $p | $m | $an | $c | $s |"
	done
	echo
	echo "| ratio | peak RSS | mean RSS | mean anon RSS | CPU | binary |"
	echo "|---|---:|---:|---:|---:|---:|"
	for other in collectd "collectd without virt" prometheus-node-exporter; do
		[ "$other" = "collectd without virt" ] && [ "$VIRT" != 1 ] && continue
		echo "| outpost / $other | $(ratio 2 "$other") | $(ratio 3 "$other") | $(ratio 4 "$other") | $(ratio 5 "$other") | $(ratio 6 "$other") |"
	done
	echo
	echo "Target (issue 4: RSS and CPU no higher than collectd's), against collectd as configured above:"
	echo "peak RSS $(verdict 2 collectd), mean RSS $(verdict 3 collectd), CPU $(verdict 5 collectd)."
	if [ "$VIRT" = 1 ]; then
		echo "Against collectd without virt: peak RSS $(verdict 2 "collectd without virt"), mean RSS $(verdict 3 "collectd without virt"), CPU $(verdict 5 "collectd without virt")."
	fi
	echo
	echo "Command lines:"
	echo
	for c in "${CMDS[@]}"; do echo "* $c"; done
	if [ "$VIRT" = 1 ]; then
		echo "* collectd's virt plugin wrote $VIRT_SEEN virt CSV director$([ "$VIRT_SEEN" = 1 ] && echo y || echo ies) during the run."
	fi
	echo
	echo "What each does at that interval differs: the collector also discovers the guests,"
	echo "judges health with the default pack (host, file systems, NICs, guests, services,"
	echo "certificates), spools to disk and forwards over mTLS; collectd writes CSV locally;"
	echo "node-exporter only answers scrapes. The binary column is the file size (collectd's"
	echo "plugins are separate files and not counted)."
} >"$OUT"
cat "$OUT"
