#!/usr/bin/env bash
# Issue 6 benchmark (make bench): building the example appliance image (examples/appliance)
# with outpost-image + outpost-layout, side by side in the same run with the usual peer,
# mmdebstrap + genimage, building the same Debian package set into the same GPT layout
# (ESP with systemd-boot and one entry per slot, root-a, root-b, data; raw + qcow2).
#
#   cold         empty caches (outpost: a new --cache directory; peer: no .deb cache)
#   warm         the same inputs again, caches kept (outpost: its stage cache, packages
#                included; peer: the downloaded .debs, synced in and out of mmdebstrap)
#   incremental  one overlay file changed (etc/motd), caches kept; the peer has no stage
#                cache, so it runs its whole pipeline again (with the cached .debs)
#   identical    sha256 of raw and qcow2 of two builds of the same inputs: outpost cold and a
#                second outpost build with --no-cache; peer cold and peer warm (two full
#                mmdebstrap runs)
#
# Needs root (mmdebstrap --mode=root, file owners in the images), network access to the
# host's apt sources (both tools use them: /etc/apt/sources.list{,.d/*.list,.d/*.sources}),
# mmdebstrap, genimage, mkfs.ext4, mkfs.vfat, mtools, qemu-img. About 50 minutes on two cores
# (three cold builds). Appends its section to bench/REPORT.md and writes bench/IMAGE.md
# (or $OUT).
#
# Knobs: OUTPOST_BENCH_IMAGE_ONLY=outpost|peer (one side only, no ratios);
# OUTPOST_BENCH_IMAGE_PACKAGES="a,b" (another package set, e.g. a tiny one to smoke-test the
# script; without a kernel the peer's ESP gets placeholder files); OUTPOST_BENCH_IMAGE_QUICK=1
# (no second outpost cold build: identity is then cold vs warm, which share the cached base);
# PROFILE=debug (quicker to compile, figures still meaningful: the work is in the tools).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[bench/image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
OUT=${OUT:-bench/IMAGE.md}
REPORT=${REPORT:-bench/REPORT.md}
ONLY=${OUTPOST_BENCH_IMAGE_ONLY:-}
QUICK=${OUTPOST_BENCH_IMAGE_QUICK:-}
PROFILE=${PROFILE:-release}
APP=examples/appliance
EPOCH=$(sed -n 's/^source_date_epoch *= *\([0-9]*\).*/\1/p' "$APP/recipe.toml")
RECIPE_PACKAGES=$(sed -n '/^packages *= *\[/,/\]/p' "$APP/recipe.toml" | grep -o '"[^"]*"' | tr -d '"' | paste -sd, -)
PACKAGES=${OUTPOST_BENCH_IMAGE_PACKAGES:-$RECIPE_PACKAGES}
SUITE=$(sed -n 's/^suite *= *"\([^"]*\)".*/\1/p' "$APP/recipe.toml")

have() { command -v "$1" >/dev/null 2>&1; }
for t in mmdebstrap genimage mkfs.ext4 mkfs.vfat mcopy qemu-img sha256sum; do
    have "$t" || { log "missing $t (make deps installs it)"; exit 1; }
done
[ "$(id -u)" = 0 ] || { log "must run as root (mmdebstrap --mode=root, file owners)"; exit 1; }

if [ "$PROFILE" = release ]; then PFLAG=--release; else PFLAG=; fi
if [ "$ONLY" != peer ]; then
    cargo build $PFLAG -p outpost-image -p outpost-layout -p outpost-collector -p outpost-updater -p outpost-gateway --bins
fi
BIN=$PWD/target/$PROFILE

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/outpost-bench-image.XXXXXX")
# The peer unpacks its tree and makes its file systems in a tmpfs when there is one, as
# outpost-layout does (creating ~15,000 files on this machine's disk file system costs
# seconds of system time), so neither side gains from where it works.
PSCRATCH=$WORK/p-scratch
if [ -d /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2 { print $4 }')" -gt $((4 * 1024 * 1024)) ]; then
    PSCRATCH=$(mktemp -d /dev/shm/outpost-bench-peer.XXXXXX)
fi
trap 'rm -rf "$WORK" "$PSCRATCH"' EXIT
log "work directory $WORK"

# Seconds (float) a command takes; its output goes to $WORK/last.log (tail shown on failure).
elapsed() {
    local t0=$EPOCHREALTIME
    "$@" >"$WORK/last.log" 2>&1 || { log "failed: $*"; tail -30 "$WORK/last.log" >&2; return 1; }
    awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
sha() { sha256sum "$1" | cut -c1-64; }
mib_alloc() { du -m "$1" | cut -f1; }
mib_file() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.0f", b / 1048576 }'; }

# The recipe directory every build uses (a copy, so the incremental step can change a file).
cp -a "$APP" "$WORK/app"
MOTD=$WORK/app/overlay/etc/motd
if [ -n "${OUTPOST_BENCH_IMAGE_PACKAGES:-}" ]; then
    # Another package set: the recipe copy's `packages = [ … ]` block becomes one line.
    quoted=$(printf '"%s", ' ${PACKAGES//,/ })
    awk -v repl="packages = [${quoted%, }]" '
        skip && /\]/ { skip = 0; next }
        skip { next }
        /^packages *= *\[/ { print repl; if ($0 !~ /\]/) skip = 1; next }
        { print }' "$APP/recipe.toml" >"$WORK/app/recipe.toml"
fi

# ---------------------------------------------------------------- outpost-image + outpost-layout
O_IMAGE="target/$PROFILE/outpost-image build $APP/recipe.toml --out OUT/rootfs --cache CACHE"
O_LAYOUT="target/$PROFILE/outpost-layout build $APP/layout.toml --rootfs OUT/rootfs/rootfs.tar.zst --out OUT --format raw,qcow2 --cache CACHE/layout"
outpost_env() {
    # The appliance's gateway trust and token: a throw-away gateway directory (the images are
    # not booted here; the bytes only have to be the same in every build).
    if [ ! -f "$WORK/gw/bootstrap-token" ]; then
        "$BIN/outpost-gateway" init --dir "$WORK/gw" --san 10.0.2.2 >/dev/null
        "$BIN/outpost-gateway" token create --config "$WORK/gw/gateway.toml" --customer bench \
            --auto-approve --uses 1 --ttl 30d >"$WORK/gw/bootstrap-token"
    fi
    export OUTPOST_BIN_DIR=$BIN OUTPOST_CA_CERT=$WORK/gw/ca.pem \
        OUTPOST_BOOTSTRAP_TOKEN_FILE=$WORK/gw/bootstrap-token
}
# outpost_build OUT CACHE|--no-cache: both steps, as `make image` runs them.
outpost_build() {
    local out=$1 cache=$2
    local cache_args=(--cache "$cache") layout_cache=(--cache "$cache/layout")
    [ "$cache" = --no-cache ] && cache_args=(--no-cache) layout_cache=(--no-cache)
    rm -rf "$out"
    "$BIN/outpost-image" build "$WORK/app/recipe.toml" --out "$out/rootfs" "${cache_args[@]}" &&
        "$BIN/outpost-layout" build "$WORK/app/layout.toml" --rootfs "$out/rootfs/rootfs.tar.zst" \
            --out "$out" --format raw,qcow2 "${layout_cache[@]}"
}

# ---------------------------------------------------------------- mmdebstrap + genimage (peer)
# The same package set, sources (the host's) and SOURCE_DATE_EPOCH; the overlay copied in;
# then genimage with a configuration for the same layout, as its users write one (no fixed
# UUIDs: genimage and mke2fs pick them).
host_sources=()
[ -f /etc/apt/sources.list ] && grep -q '^deb ' /etc/apt/sources.list && host_sources+=(/etc/apt/sources.list)
for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && host_sources+=("$f")
done
P_MMDEBSTRAP="SOURCE_DATE_EPOCH=$EPOCH mmdebstrap --mode=root --variant=apt --include=PACKAGES --format=tar --skip=download/empty (.deb cache sync-in/sync-out hooks) $SUITE rootfs.tar ${host_sources[*]}"
P_GENIMAGE="genimage --config genimage.cfg --rootpath empty --inputpath . --outputpath OUT; qemu-img convert -O qcow2 -o compat=1.1"

write_genimage_cfg() {
    cat >"$1" <<'EOF'
image esp.vfat {
    vfat {
        label = "ESP"
    }
    srcpath = "esp"
    size = 256M
}
image root-a.ext4 {
    ext4 {
        label = "root-a"
        use-mke2fs = true
    }
    srcpath = "rootfs"
    size = 1536M
}
image root-b.ext4 {
    ext4 {
        label = "root-b"
        use-mke2fs = true
    }
    srcpath = "rootfs"
    size = 1536M
}
image data.ext4 {
    ext4 {
        label = "data"
        use-mke2fs = true
    }
    empty = true
    size = 760M
}
image peer-appliance.raw {
    hdimage {
        partition-table-type = "gpt"
        align = 1M
    }
    size = 4G
    partition esp {
        image = "esp.vfat"
        partition-type-uuid = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    }
    partition root-a {
        image = "root-a.ext4"
        partition-type-uuid = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
    }
    partition root-b {
        image = "root-b.ext4"
        partition-type-uuid = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
    }
    partition data {
        image = "data.ext4"
        partition-type-uuid = "0fc63daf-8483-4772-8e79-3d69d8477de4"
    }
}
EOF
}

# peer_build OUT DEBCACHE: the whole peer pipeline.
peer_build() {
    local out=$1 debs=$2
    rm -rf "$out"
    mkdir -p "$out" "$debs"
    local hooks=(
        --skip=download/empty --skip=essential/unlink
        --setup-hook="mkdir -p \"\$1\"/var/cache/apt/archives/"
        --setup-hook="sync-in $debs /var/cache/apt/archives/"
        --customize-hook="sync-out /var/cache/apt/archives $debs"
        --customize-hook="rm -f \"\$1\"/var/cache/apt/archives/*.deb"
    )
    SOURCE_DATE_EPOCH=$EPOCH mmdebstrap --mode=root --variant=apt --include="$PACKAGES" \
        --format=tar "${hooks[@]}" "$SUITE" "$out/rootfs.tar" "${host_sources[@]}"
    local s=$PSCRATCH/build
    rm -rf "$s"
    mkdir -p "$s/rootfs" "$s/esp/EFI/BOOT" "$s/esp/loader/entries" "$s/empty" "$s/tmp" "$s/img"
    ln -sfn "$s/rootfs" "$out/rootfs"
    ln -sfn "$s/esp" "$out/esp"
    ln -sfn "$s/empty" "$out/empty"
    ln -sfn "$s/tmp" "$out/tmp"
    ln -sfn "$s/img" "$out/img"
    tar -C "$out/rootfs" --numeric-owner -xpf "$out/rootfs.tar"
    rm -f "$out/rootfs.tar"
    cp -a "$WORK/app/overlay/." "$out/rootfs/"
    # ESP: systemd-boot at the removable-media path, kernel and initrd per slot, one entry each.
    local kernel initrd ver
    kernel=$(ls "$out"/rootfs/boot/vmlinuz-* 2>/dev/null | sort -V | tail -1 || true)
    if [ -n "$kernel" ]; then
        ver=${kernel##*/vmlinuz-}
        initrd=$out/rootfs/boot/initrd.img-$ver
    else
        log "peer: no kernel in the package set: placeholder kernel and initrd (smoke run)"
        ver=none kernel=$WORK/placeholder initrd=$WORK/placeholder
        echo placeholder >"$WORK/placeholder"
    fi
    local sdboot=$out/rootfs/usr/lib/systemd/boot/efi/systemd-bootx64.efi
    [ -f "$sdboot" ] || sdboot=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
    [ -f "$sdboot" ] || { sdboot=$WORK/placeholder; log "peer: no systemd-boot: placeholder"; }
    cp "$sdboot" "$out/esp/EFI/BOOT/BOOTX64.EFI"
    printf 'timeout 0\neditor no\n' >"$out/esp/loader/loader.conf"
    local slot v=2
    for slot in a b; do
        mkdir -p "$out/esp/outpost/$slot"
        cp "$kernel" "$out/esp/outpost/$slot/vmlinuz"
        cp "$initrd" "$out/esp/outpost/$slot/initrd.img"
        printf 'title Peer (slot %s, kernel %s)\nversion %s\nlinux /outpost/%s/vmlinuz\ninitrd /outpost/%s/initrd.img\noptions root=PARTLABEL=root-%s rw console=ttyS0,115200\n' \
            "$slot" "$ver" "$v" "$slot" "$slot" "$slot" >"$out/esp/loader/entries/peer-$slot+3.conf"
        v=$((v - 1))
    done
    write_genimage_cfg "$out/genimage.cfg"
    (cd "$out" && genimage --config genimage.cfg --rootpath empty --tmppath tmp \
        --inputpath . --outputpath img)
    cp --sparse=always "$out/img/peer-appliance.raw" "$out/peer-appliance.raw"
    qemu-img convert -q -m 1 -O qcow2 -o compat=1.1 "$out/peer-appliance.raw" "$out/peer-appliance.qcow2"
    rm -rf "$out/rootfs" "$out/esp" "$out/img" "$out/tmp" "$out/empty" "$s"
}

declare -A T SZ SHA
measure_outpost() {
    outpost_env
    local cache=$WORK/o-cache
    log "outpost: cold build"
    T[o_cold]=$(elapsed outpost_build "$WORK/o-cold" "$cache")
    log "outpost: warm build"
    T[o_warm]=$(elapsed outpost_build "$WORK/o-warm" "$cache")
    SZ[o_raw]=$(mib_alloc "$WORK/o-cold/outpost-appliance.raw")
    SZ[o_qcow2]=$(mib_file "$WORK/o-cold/outpost-appliance.qcow2")
    SHA[o_a_raw]=$(sha "$WORK/o-cold/outpost-appliance.raw")
    SHA[o_a_qcow2]=$(sha "$WORK/o-cold/outpost-appliance.qcow2")
    local second=$WORK/o-warm what="cold vs warm (shared base cache)"
    if [ -z "$QUICK" ]; then
        log "outpost: second cold build (--no-cache), for bit-identity"
        T[o_cold2]=$(elapsed outpost_build "$WORK/o-cold2" --no-cache)
        second=$WORK/o-cold2 what="cold vs a second --no-cache build"
    fi
    SHA[o_b_raw]=$(sha "$second/outpost-appliance.raw")
    SHA[o_b_qcow2]=$(sha "$second/outpost-appliance.qcow2")
    SHA[o_what]=$what
    rm -rf "$WORK/o-cold2" "$WORK/o-warm"
}
measure_peer() {
    local debs=$WORK/p-debs
    log "peer: cold build"
    T[p_cold]=$(elapsed peer_build "$WORK/p-cold" "$debs")
    log "peer: warm build"
    T[p_warm]=$(elapsed peer_build "$WORK/p-warm" "$debs")
    SZ[p_raw]=$(mib_alloc "$WORK/p-cold/peer-appliance.raw")
    SZ[p_qcow2]=$(mib_file "$WORK/p-cold/peer-appliance.qcow2")
    SHA[p_a_raw]=$(sha "$WORK/p-cold/peer-appliance.raw")
    SHA[p_a_qcow2]=$(sha "$WORK/p-cold/peer-appliance.qcow2")
    SHA[p_b_raw]=$(sha "$WORK/p-warm/peer-appliance.raw")
    SHA[p_b_qcow2]=$(sha "$WORK/p-warm/peer-appliance.qcow2")
    rm -rf "$WORK/p-warm"
}
same() { if [ "$1" = "$2" ]; then echo yes; else echo "no (${1:0:12}… vs ${2:0:12}…)"; fi; }

[ "$ONLY" != peer ] && measure_outpost
[ "$ONLY" != outpost ] && measure_peer
echo "bench: $(date -u +%FT%TZ) changed" >>"$MOTD"
if [ "$ONLY" != peer ]; then
    log "outpost: incremental build (one overlay file changed)"
    T[o_incr]=$(elapsed outpost_build "$WORK/o-incr" "$WORK/o-cache")
fi
if [ "$ONLY" != outpost ]; then
    log "peer: incremental build (one overlay file changed)"
    T[p_incr]=$(elapsed peer_build "$WORK/p-incr" "$WORK/p-debs")
fi

# ---------------------------------------------------------------- report
{
    echo "# Image build (issue 6): outpost-image + outpost-layout vs mmdebstrap + genimage"
    echo
    echo "Run $(date -u +%FT%TZ) on $(nproc) cores; example appliance \`$APP\`, packages \`$PACKAGES\`,"
    echo "suite $SUITE, the host's apt sources, SOURCE_DATE_EPOCH=$EPOCH; raw + qcow2 of a 4 GiB GPT"
    echo "(ESP 256 MiB, root-a and root-b 1536 MiB ext4, data). Wall-clock seconds, one run each."
    echo "The peer copies the overlay and writes the ESP by hand but makes no manifest, SBOM or"
    echo "agent configuration, and pins nothing beyond what mmdebstrap does with SOURCE_DATE_EPOCH."
    echo
    echo "| figure | outpost | peer | peer / outpost |"
    echo "|---|---|---|---|"
    row() {
        local r=-
        [ -n "${2:-}" ] && [ -n "${3:-}" ] && r="$(ratio "$3" "$2")×"
        echo "| $1 | ${2:-SKIP} | ${3:-SKIP} | $r |"
    }
    row "cold build, s" "${T[o_cold]:-}" "${T[p_cold]:-}"
    row "warm build (caches kept), s" "${T[o_warm]:-}" "${T[p_warm]:-}"
    row "incremental build (overlay etc/motd changed), s" "${T[o_incr]:-}" "${T[p_incr]:-}"
    [ -n "${T[o_cold2]:-}" ] && echo "| second cold build (--no-cache), s | ${T[o_cold2]} | - | - |"
    echo "| raw image, MiB allocated (sparse) | ${SZ[o_raw]:-SKIP} | ${SZ[p_raw]:-SKIP} | - |"
    echo "| qcow2 image, MiB | ${SZ[o_qcow2]:-SKIP} | ${SZ[p_qcow2]:-SKIP} | - |"
    if [ "$ONLY" != peer ]; then
        echo "| bit-identical raw, ${SHA[o_what]} / peer cold vs warm | $(same "${SHA[o_a_raw]}" "${SHA[o_b_raw]}") | $( [ "$ONLY" != outpost ] && same "${SHA[p_a_raw]}" "${SHA[p_b_raw]}" || echo SKIP) | - |"
        echo "| bit-identical qcow2 | $(same "${SHA[o_a_qcow2]}" "${SHA[o_b_qcow2]}") | $( [ "$ONLY" != outpost ] && same "${SHA[p_a_qcow2]}" "${SHA[p_b_qcow2]}" || echo SKIP) | - |"
    else
        echo "| bit-identical raw / qcow2, peer cold vs warm | SKIP | $(same "${SHA[p_a_raw]}" "${SHA[p_b_raw]}") / $(same "${SHA[p_a_qcow2]}" "${SHA[p_b_qcow2]}") | - |"
    fi
    echo
    echo "Targets (issue 6): warm at least 2× faster than the peer, incremental under 15 s,"
    echo "bit-identical where the peer is not."
    echo
    echo "Command lines:"
    echo
    echo "- outpost: \`$O_IMAGE\` then \`$O_LAYOUT\` (epoch from the manifest)$( [ -z "$QUICK" ] && echo '; second cold build: `--no-cache` instead of `--cache`')"
    echo "- peer: \`$P_MMDEBSTRAP\`, \`tar -x\`, overlay copied, ESP staged (systemd-boot, loader.conf, one entry per slot), \`$P_GENIMAGE\`"
} >"$OUT"
{ echo; sed 's/^#/##/' "$OUT"; } >>"$REPORT"
log "wrote $OUT and appended it to $REPORT"
