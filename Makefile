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
	swupdate:swupdate collectd:collectd-core prometheus-node-exporter:prometheus-node-exporter

deps:
	@missing=""; for d in $(DEPS); do t=$${d%%:*}; p=$${d#*:}; \
		if command -v "$$t" >/dev/null 2>&1 || [ -e "$$t" ]; then :; else missing="$$missing $$p"; fi; \
	done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian packages the tests need:$$missing"; \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing || \
		 (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing)) || \
		echo "warning: could not install$$missing; the tests that need them print SKIP"; \
	else \
		echo "note: missing$$missing and cannot install here; the tests that need them print SKIP"; \
	fi

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
