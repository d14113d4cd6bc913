# Outpost: one target per habit. `make test` works on a fresh Debian machine with only the
# Rust toolchain: the `deps` step installs the Debian packages the tests drive (QEMU, mkfs,
# mmdebstrap, OVMF, ...) when it can; a test whose tool is missing prints SKIP.

CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

.PHONY: all build deps test demo bench fmt lint clean

all: build

build:
	$(CARGO) build --workspace --bins

# What the tests and benchmarks run, as "command-or-file:debian-package". `deps` installs the
# missing ones in one apt-get call when it runs as root on Debian; elsewhere the tests that
# need a missing tool print SKIP with the reason.
DEPS := openssl:openssl qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils \
	curl:curl zstd:zstd sfdisk:fdisk mkfs.ext4:e2fsprogs mkfs.vfat:dosfstools mcopy:mtools \
	mkfs.erofs:erofs-utils mmdebstrap:mmdebstrap /usr/share/OVMF/OVMF_CODE.fd:ovmf \
	/usr/lib/systemd/boot/efi/systemd-bootx64.efi:systemd-boot-efi genimage:genimage \
	swupdate:swupdate cpio:cpio jq:jq collectd:collectd-core prometheus-node-exporter:prometheus-node-exporter virsh:libvirt-clients libvirtd:libvirt-daemon-system

# Two rounds: installing one package can remove another (qemu-system-x86 from Debian's main
# archive replaces a newer backported qemu-utils, taking qemu-img with it), so what is still
# missing after the first round is installed again.
deps:
	@for round in 1 2; do \
		missing=""; for d in $(DEPS); do t=$${d%%:*}; p=$${d#*:}; \
			if command -v "$$t" >/dev/null 2>&1 || [ -e "$$t" ]; then :; else missing="$$missing $$p"; fi; \
		done; \
		if [ -z "$$missing" ]; then break; \
		elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian packages the tests need:$$missing"; \
			(DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing || \
			 (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing)) || \
			echo "warning: could not install$$missing; the tests that need them print SKIP"; \
		else \
			echo "note: missing$$missing and cannot install here; the tests that need them print SKIP"; break; \
		fi; \
	done

# The end-to-end tests run the built binaries, so build them first.
test: deps build
	$(CARGO) test --workspace

demo: build
	$(TARGET_DIR)/debug/outpost-demo

bench:
	bash bench/run.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean

# `make image`: the example appliance (examples/appliance) into $(IMAGE_OUT): rootfs/ from
# outpost-image (rootfs.tar.zst, manifest.json, SBOM), then outpost-appliance.raw and .qcow2
# from outpost-layout. The appliance trusts the CA in OUTPOST_CA_CERT and enrols with the
# token in OUTPOST_BOOTSTRAP_TOKEN_FILE; without them a demo gateway directory is made once in
# $(IMAGE_OUT)/gateway (server certificate for 10.0.2.2, auto-approve token for 100
# appliances, 30 days). `outpost-layout plan --check-tools` first: a missing mkfs, mtools or
# qemu-img, or not being root, fails before the long rootfs build. Serve it for `make boot` with:
#   outpost-gateway serve --config $(IMAGE_OUT)/gateway/gateway.toml --listen 127.0.0.1:5723
IMAGE_OUT ?= $(TARGET_DIR)/appliance
IMAGE_GATEWAY = $(abspath $(IMAGE_OUT))/gateway
# The recipe's [image] source_date_epoch: the layout's file-system times too.
IMAGE_EPOCH = $(shell sed -n 's/^source_date_epoch *= *\([0-9]*\).*/\1/p' examples/appliance/recipe.toml)
.PHONY: image test-e2e
image:
	$(CARGO) build -p outpost-collector -p outpost-gateway -p outpost-image -p outpost-layout -p outpost-updater
	$(TARGET_DIR)/debug/outpost-layout plan examples/appliance/layout.toml --check-tools --format raw,qcow2
	@if [ -z "$$OUTPOST_CA_CERT" ] && [ ! -f "$(IMAGE_GATEWAY)/bootstrap-token" ]; then \
		echo "making a demo gateway in $(IMAGE_GATEWAY)"; \
		$(TARGET_DIR)/debug/outpost-gateway init --dir "$(IMAGE_GATEWAY)" \
			--san 127.0.0.1 --san localhost --san 10.0.2.2 && \
		(umask 077; $(TARGET_DIR)/debug/outpost-gateway token create \
			--config "$(IMAGE_GATEWAY)/gateway.toml" --customer demo --auto-approve \
			--uses 100 --ttl 30d > "$(IMAGE_GATEWAY)/bootstrap-token.tmp") && \
		mv "$(IMAGE_GATEWAY)/bootstrap-token.tmp" "$(IMAGE_GATEWAY)/bootstrap-token"; \
	fi
	OUTPOST_BIN_DIR="$(abspath $(TARGET_DIR))/debug" \
	OUTPOST_CA_CERT="$${OUTPOST_CA_CERT:-$(IMAGE_GATEWAY)/ca.pem}" \
	OUTPOST_BOOTSTRAP_TOKEN_FILE="$${OUTPOST_BOOTSTRAP_TOKEN_FILE:-$(IMAGE_GATEWAY)/bootstrap-token}" \
		$(TARGET_DIR)/debug/outpost-image build examples/appliance/recipe.toml --out $(IMAGE_OUT)/rootfs
	SOURCE_DATE_EPOCH=$(IMAGE_EPOCH) $(TARGET_DIR)/debug/outpost-layout build examples/appliance/layout.toml \
		--rootfs $(IMAGE_OUT)/rootfs/rootfs.tar.zst --out $(IMAGE_OUT) --format raw,qcow2

# The appliance image end to end (tests/tests/image_e2e.rs): build it twice (bit-identical),
# boot it in QEMU, see it enrol with a gateway on the host, reboot, see first-boot work not
# repeated. About 26 minutes on a busy 2-core machine (two cold builds of ~10 minutes, two
# boots of ~2.5 minutes under software emulation); CI runs it after `make test`.
test-e2e: deps build
	$(CARGO) test -p outpost-tests --test image_e2e -- --ignored --nocapture

# Boot the example appliance image headless under qemu-system-x86_64 + OVMF, serial console on
# stdout; `make image` runs first when there is no image yet. The image is written to, so
# first-boot state persists: a second `make boot` is the appliance's second boot (`make image`
# again for a factory-fresh one). BOOT_TIMEOUT=10m stops the guest after that long (exit 124);
# BOOT_ARGS adds outpost-layout boot flags.
BOOT_TIMEOUT ?=
BOOT_ARGS ?=
.PHONY: boot
boot:
	@[ -f $(IMAGE_OUT)/outpost-appliance.raw ] || $(MAKE) image
	$(CARGO) build -p outpost-layout
	$(TARGET_DIR)/debug/outpost-layout boot $(IMAGE_OUT)/outpost-appliance.raw \
		$(if $(BOOT_TIMEOUT),--timeout $(BOOT_TIMEOUT)) $(BOOT_ARGS)
