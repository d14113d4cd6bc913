# Outpost: one target per habit. `make test` works on a fresh Debian machine with only the
# Rust toolchain (the `deps` step installs the openssl CLI when it can; without it one CSR
# test prints SKIP).

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
		(apt-get install -y --no-install-recommends openssl || \
		 (apt-get update && apt-get install -y --no-install-recommends openssl)) || \
		echo "warning: could not install openssl; the weak-key CSR test will print SKIP"; \
	else \
		echo "note: openssl not found and cannot be installed here; the weak-key CSR test will print SKIP"; \
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
