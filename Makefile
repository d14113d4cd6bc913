# Outpost: one target per habit. `make test` works on a fresh Debian machine with only the
# Rust toolchain (the `deps` step installs the openssl CLI and qemu-system-x86 when it can;
# without them the weak-key CSR test and the real-QEMU discovery tests print SKIP).

CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

.PHONY: all build deps test demo bench fmt lint clean

all: build

build:
	$(CARGO) build --workspace --bins

deps:
	@if command -v openssl >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing the openssl CLI (used by the weak-key CSR test)"; \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssl || \
		 (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssl)) || \
		echo "warning: could not install openssl; the weak-key CSR test will print SKIP"; \
	else \
		echo "note: openssl not found and cannot be installed here; the weak-key CSR test will print SKIP"; \
	fi
	@if command -v qemu-system-x86_64 >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing qemu-system-x86 (used by the real-QEMU VM discovery tests)"; \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends qemu-system-x86 || \
		 (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends qemu-system-x86)) || \
		echo "warning: could not install qemu-system-x86; the real-QEMU tests will print SKIP"; \
	else \
		echo "note: qemu-system-x86_64 not found and cannot be installed here; the real-QEMU tests will print SKIP"; \
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
