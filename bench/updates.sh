#!/usr/bin/env bash
# Issue 5 benchmarks (make bench): staged updates against their usual peers, on loopback.
#
#   1. mirror sync of a feed (default 1 GiB: two 512 MiB bundles) from a real gateway over
#      mTLS — `outpost-updater sync` (TUF metadata + sha256 of every blob + fsync) — against
#      a plain `curl --cert --key --cacert` of the same files through the same gateway;
#   2. blob verification throughput — outpost-updater's `mirror::verify_file` (through
#      updater/examples/verify_bench.rs) — against `openssl dgst -sha256` and `sha256sum`;
#   3. install of a 256 MiB root image into a file-backed slot — `outpost-updater install`
#      (zstd bundle, write, read-back verify, boot entry) — against `swupdate -i` of a signed
#      .swu (cpio with sw-description, raw handler) into a file slot.
#
# Each figure is the best of $RUNS runs (default 3) of wall-clock time; the machine is shared,
# so the best run is the least disturbed one. Writes bench/UPDATES.md (or $OUT).
# Sizes: OUTPOST_BENCH_FEED_MIB (1024), OUTPOST_BENCH_VERIFY_MIB (1024),
# OUTPOST_BENCH_IMAGE_MIB (256). Tools: curl, openssl, sha256sum, jq, cpio, swupdate (`make
# deps` installs them); a missing one turns its comparison into a SKIP line in the report.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[bench/updates] %s\n' "$*" >&2; }
OUT=${OUT:-bench/UPDATES.md}
RUNS=${RUNS:-3}
FEED_MIB=${OUTPOST_BENCH_FEED_MIB:-1024}
VERIFY_MIB=${OUTPOST_BENCH_VERIFY_MIB:-1024}
IMAGE_MIB=${OUTPOST_BENCH_IMAGE_MIB:-256}
BUNDLE_MIB=$((FEED_MIB / 2))

# PROFILE=debug gives a quick smoke run of the script itself (figures meaningless).
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then PFLAG=--release; else PFLAG=; fi
cargo build $PFLAG -p outpost-gateway -p outpost-updater --bins
cargo build $PFLAG -p outpost-updater --example verify_bench || log "verify_bench did not build; section 2 shows the peers only"
BIN=$PWD/target/$PROFILE
GATEWAY=$BIN/outpost-gateway
UPDATER=$BIN/outpost-updater
FEED=$BIN/outpost-feed
VERIFY=$BIN/examples/verify_bench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/outpost-bench-updates.XXXXXX")
GW_PID=""
cleanup() {
    if [ -n "$GW_PID" ]; then kill "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

have() { command -v "$1" >/dev/null 2>&1; }

# Seconds (float) a command takes; its output goes to $WORK/last.log.
elapsed() {
    local t0=$EPOCHREALTIME
    "$@" >"$WORK/last.log" 2>&1 || { log "failed: $*"; tail -20 "$WORK/last.log" >&2; return 1; }
    awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'
}
# Best (lowest) of the numbers given.
best() { printf '%s\n' "$@" | sort -g | head -1; }
# MiB/s for MiB and seconds.
rate() { awk -v m="$1" -v s="$2" 'BEGIN { printf "%.0f", m / s }'; }
# a / b with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# Random (incompressible) data: $1 file, $2 MiB.
random_file() {
    (set +o pipefail
     openssl enc -aes-128-ctr -pass pass:"outpost-bench-$1" -nosalt -pbkdf2 </dev/zero 2>/dev/null |
         head -c "$(($2 * 1024 * 1024))" >"$1")
}

REPORT=$WORK/report.md
{
    echo "# Staged updates (issue 5)"
    echo
    echo "Written by \`bench/updates.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -m)); best of $RUNS runs, wall clock. Ratio > 1 means Outpost is faster."
    echo
} >"$REPORT"

# ---- a gateway with the feed, and an approved appliance identity -------------------------
log "building a ${FEED_MIB} MiB feed (2 bundles of ${BUNDLE_MIB} MiB)"
mkdir -p "$WORK/gw" "$WORK/box"
$FEED init "$WORK/feed" >/dev/null
for v in 1.1.0 1.2.0; do
    random_file "$WORK/root-$v.img" "$BUNDLE_MIB"
    $FEED bundle --out "$WORK/bundle-$v.tar.zst" --version "$v" --root-image "$WORK/root-$v.img" >/dev/null
    $FEED add "$WORK/feed" "$WORK/bundle-$v.tar.zst" --version "$v" --channel stable >/dev/null
    rm -f "$WORK/root-$v.img"
done
FEED_BYTES=$(du -sb "$WORK/feed/repo" | cut -f1)

$GATEWAY init --dir "$WORK/gw" --san 127.0.0.1 --san localhost >/dev/null
printf '\n[feed]\ndir = "%s"\n' "$WORK/feed/repo" >>"$WORK/gw/gateway.toml"
$GATEWAY serve --config "$WORK/gw/gateway.toml" --listen 127.0.0.1:0 --addr-file "$WORK/gw/addr" \
    >"$WORK/gw/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 100); do [ -s "$WORK/gw/addr" ] && break; sleep 0.1; done
ADDR=$(cat "$WORK/gw/addr")
log "gateway on $ADDR"

TOKEN=$($GATEWAY token create --config "$WORK/gw/gateway.toml" --customer bench --auto-approve)
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/box/key.pem" \
    -subj /CN=bench -out "$WORK/box/csr.pem" 2>/dev/null
chmod 600 "$WORK/box/key.pem"
jq -n --rawfile csr "$WORK/box/csr.pem" '{csr_pem: $csr, hostname: "bench"}' >"$WORK/box/enroll.json"
curl -sS --fail --cacert "$WORK/gw/ca.pem" -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' --data @"$WORK/box/enroll.json" \
    "https://$ADDR/v1/enroll" | jq -r .certificate_pem >"$WORK/box/cert.pem"
grep -q 'BEGIN CERTIFICATE' "$WORK/box/cert.pem"

write_updater_config() {
    cat >"$WORK/box/updater.toml" <<EOF
gateways = ["$ADDR"]
ca_cert = "$WORK/gw/ca.pem"
client_cert = "cert.pem"
client_key = "key.pem"
state_dir = "state"
box_tz = "UTC"
initial_version = "1.0.0"

[feed]
channel = "stable"
trusted_root = "$WORK/feed/root.json"
keep = 2

[slots]
a = "slot-a.img"
b = "slot-b.img"
esp = "esp"
cmdline = "cmdline"

[restart]
command = ["true"]
EOF
}
# The box after its first good boot: slot a booted and committed (no try counter), slot b
# still counting tries.
reset_box() {
    rm -rf "$WORK/box/state" "$WORK/box/esp"
    mkdir -p "$WORK/box/state" "$WORK/box/esp/loader/entries"
    for s in a:2 b:1; do
        printf 'title Outpost 1.0.0 (slot %s)\nsort-key outpost\nversion %s\nlinux /outpost/%s/vmlinuz\ninitrd /outpost/%s/initrd.img\noptions root=PARTLABEL=root-%s rw\n' \
            "${s%:*}" "${s#*:}" "${s%:*}" "${s%:*}" "${s%:*}" >"$WORK/box/esp/loader/entries/outpost-${s%:*}+3.conf"
    done
    mv "$WORK/box/esp/loader/entries/outpost-a+3.conf" "$WORK/box/esp/loader/entries/outpost-a.conf"
    printf 'root=PARTLABEL=root-a rw\n' >"$WORK/box/cmdline"
    printf 'factory root file system 1.0.0' >"$WORK/box/slot-a.img"
    printf 'factory root file system 1.0.0' >"$WORK/box/slot-b.img"
}
write_updater_config

# ---- 1. mirror sync vs curl ---------------------------------------------------------------
log "1. mirror sync vs curl, $RUNS runs each"
sync_once() { reset_box; (cd "$WORK/box" && elapsed "$UPDATER" --config updater.toml sync); }
CURL_ARGS=()
while IFS= read -r f; do
    CURL_ARGS+=("https://$ADDR/v1/feed/${f#./}" -o "$WORK/curl/${f#./}")
done < <(cd "$WORK/feed/repo" && find . -type f | sort)
curl_once() {
    rm -rf "$WORK/curl"
    mkdir -p "$WORK/curl/metadata" "$WORK/curl/targets"
    elapsed curl -sS --fail --cert "$WORK/box/cert.pem" --key "$WORK/box/key.pem" \
        --cacert "$WORK/gw/ca.pem" "${CURL_ARGS[@]}"
}
sync_t=(); curl_t=()
for _ in $(seq "$RUNS"); do
    sync_t+=("$(sync_once)")
    curl_t+=("$(curl_once)")
done
MIRRORED=$(du -sb "$WORK/box/state" | cut -f1)
CURLED=$(du -sb "$WORK/curl" | cut -f1)
S=$(best "${sync_t[@]}"); C=$(best "${curl_t[@]}")
FEED_MIB_REAL=$(awk -v b="$FEED_BYTES" 'BEGIN { printf "%.0f", b / 1048576 }')
{
    echo "## 1. Mirror sync of a ${FEED_MIB_REAL} MiB feed over loopback mTLS"
    echo
    echo "| tool | command | best s | MiB/s | runs (s) |"
    echo "|---|---|---|---|---|"
    echo "| outpost-updater | \`outpost-updater --config updater.toml sync\` (fresh state dir; TUF metadata, sha256 of every blob, fsync) | $S | $(rate "$FEED_MIB_REAL" "$S") | ${sync_t[*]} |"
    echo "| curl $(curl --version | head -1 | cut -d' ' -f2) | \`curl --cert cert.pem --key key.pem --cacert ca.pem https://GW/v1/feed/… -o …\` (every file of the repository, one process, connection reused) | $C | $(rate "$FEED_MIB_REAL" "$C") | ${curl_t[*]} |"
    echo
    echo "Ratio curl / outpost: **$(ratio "$C" "$S")** (target ≥ 1). Bytes: repository $FEED_BYTES, mirror state $MIRRORED, curl $CURLED."
    echo
} >>"$REPORT"

# ---- 2. blob verification -------------------------------------------------------------------
log "2. sha256 verification of ${VERIFY_MIB} MiB, $RUNS runs each"
random_file "$WORK/blob" "$VERIFY_MIB"
SHA=$(sha256sum "$WORK/blob" | cut -d' ' -f1)
cat "$WORK/blob" >/dev/null # warm the page cache: every tool reads from memory
v_t=(); o_t=(); s_t=()
for _ in $(seq "$RUNS"); do
    if [ -x "$VERIFY" ]; then v_t+=("$(elapsed "$VERIFY" "$WORK/blob" "$SHA")"); fi
    o_t+=("$(elapsed openssl dgst -sha256 "$WORK/blob")")
    s_t+=("$(elapsed sha256sum "$WORK/blob")")
done
O=$(best "${o_t[@]}"); H=$(best "${s_t[@]}")
if [ -x "$VERIFY" ]; then V=$(best "${v_t[@]}"); else V=""; fi
{
    echo "## 2. Blob verification (sha256, ${VERIFY_MIB} MiB file in the page cache)"
    echo
    echo "| tool | command | best s | MiB/s | runs (s) |"
    echo "|---|---|---|---|---|"
    if [ -n "$V" ]; then
        echo "| outpost-updater | \`verify_bench FILE SHA\` (updater/examples: \`mirror::verify_file\`, length + sha256) | $V | $(rate "$VERIFY_MIB" "$V") | ${v_t[*]} |"
    else
        echo "| outpost-updater | SKIP: updater/examples/verify_bench did not build | | | |"
    fi
    echo "| $(openssl version | cut -d' ' -f1-2) | \`openssl dgst -sha256 FILE\` | $O | $(rate "$VERIFY_MIB" "$O") | ${o_t[*]} |"
    echo "| sha256sum $(sha256sum --version | head -1 | awk '{print $NF}') | \`sha256sum FILE\` | $H | $(rate "$VERIFY_MIB" "$H") | ${s_t[*]} |"
    echo
    [ -n "$V" ] && echo "Ratios: openssl / outpost **$(ratio "$O" "$V")**, sha256sum / outpost **$(ratio "$H" "$V")** (target ≥ 1)."
    echo
} >>"$REPORT"
rm -f "$WORK/blob"

# ---- 3. install into a file slot vs swupdate -------------------------------------------------
log "3. install of a ${IMAGE_MIB} MiB image, $RUNS runs each"
random_file "$WORK/image.img" "$IMAGE_MIB"
IMG_SHA=$(sha256sum "$WORK/image.img" | cut -d' ' -f1)
$FEED bundle --out "$WORK/image-2.0.0.tar.zst" --version 2.0.0 --root-image "$WORK/image.img" >/dev/null
install_once() { reset_box; (cd "$WORK/box" && elapsed "$UPDATER" --config updater.toml install "$WORK/image-2.0.0.tar.zst"); }
i_t=()
for _ in $(seq "$RUNS"); do i_t+=("$(install_once)"); done
cmp -s "$WORK/image.img" "$WORK/box/slot-b.img" || { log "outpost install did not leave the image in slot b"; exit 1; }
I=$(best "${i_t[@]}")
{
    echo "## 3. Install of a ${IMAGE_MIB} MiB root image into a file-backed slot"
    echo
    echo "| tool | command | best s | MiB/s | runs (s) |"
    echo "|---|---|---|---|---|"
    echo "| outpost-updater | \`outpost-updater --config updater.toml install bundle.tar.zst\` (zstd bundle; write, fsync, read-back sha256, boot entry) | $I | $(rate "$IMAGE_MIB" "$I") | ${i_t[*]} |"
} >>"$REPORT"
if have swupdate && have cpio; then
    # A signed .swu (the Debian swupdate refuses unsigned ones): CMS signature of
    # sw-description by a throwaway signer, raw handler into the slot file.
    SWU=$WORK/swu
    mkdir -p "$SWU"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$SWU/signer-key.pem" -subj /CN=bench-signer -days 2 \
        -addext extendedKeyUsage=emailProtection -addext keyUsage=digitalSignature -out "$SWU/signer.pem" 2>/dev/null
    cp "$WORK/image.img" "$SWU/root.img"
    cat >"$SWU/sw-description" <<EOF
software = {
  version = "2.0.0";
  hardware-compatibility = [ "1.0" ];
  images: ( {
    filename = "root.img";
    device = "$WORK/box/slot-b.img";
    type = "raw";
    sha256 = "$IMG_SHA";
  } );
}
EOF
    openssl cms -sign -in "$SWU/sw-description" -out "$SWU/sw-description.sig" -signer "$SWU/signer.pem" \
        -inkey "$SWU/signer-key.pem" -outform DER -nosmimecap -binary
    (cd "$SWU" && printf 'sw-description\nsw-description.sig\nroot.img\n' | cpio -o -H crc --quiet >"$WORK/update.swu")
    rm -f "$SWU/root.img"
    swu_once() { reset_box; elapsed swupdate -H bench:1.0 -k "$SWU/signer.pem" -i "$WORK/update.swu"; }
    w_t=()
    for _ in $(seq "$RUNS"); do w_t+=("$(swu_once)"); done
    cmp -s "$WORK/image.img" "$WORK/box/slot-b.img" || { log "swupdate did not leave the image in slot b"; exit 1; }
    W=$(best "${w_t[@]}")
    {
        echo "| swupdate $(dpkg-query -W -f '${Version}' swupdate 2>/dev/null || echo "?") | \`swupdate -H bench:1.0 -k signer.pem -i update.swu\` (signed .swu, uncompressed image, raw handler, sha256) | $W | $(rate "$IMAGE_MIB" "$W") | ${w_t[*]} |"
        echo
        echo "Ratio swupdate / outpost: **$(ratio "$W" "$I")** (target ≥ 1)."
        echo
    } >>"$REPORT"
else
    { echo; echo "SKIP: swupdate or cpio is missing (\`make deps\` installs them)."; echo; } >>"$REPORT"
fi

cp "$REPORT" "$OUT"
log "wrote $OUT"
cat "$OUT"
