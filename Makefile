# tidecast — the two commands a new user needs:
#   make run    set up the machine and run every service (RTMP :1935, HTTP :8080, demo at /demo/)
#   make test   set up the machine and run every test (unit + end-to-end with ffmpeg/Chromium,
#               then every fuzz target for FUZZ_SECONDS each)
export CARGO_TARGET_DIR ?= $(HOME)/.cache/tidecast/target
CARGO ?= cargo

FUZZ_SECONDS ?= 30

.PHONY: fuzz run test bootstrap test-tools build build-release unit e2e bench-ladder bench-blocking bench-g2g bench-edge bench-sfu bench-turn bench-archiver bench-soak fmt clippy

bootstrap:
	infra/bootstrap.sh

run: bootstrap build-release
	$(CARGO_TARGET_DIR)/release/tidecast

build-release:
	$(CARGO) build --release -p tidecast

build:
	$(CARGO) build -p tidecast

test-tools:
	infra/bootstrap.sh --test
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error

test: test-tools build
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=1
	fuzz/run.sh $(FUZZ_SECONDS)

fuzz:
	infra/bootstrap.sh --test
	fuzz/run.sh $(FUZZ_SECONDS)

unit:
	$(CARGO) test --workspace --lib

e2e: build
	$(CARGO) test -p tidecast-tests -- --test-threads=1 --nocapture

bench-ladder: bootstrap build-release
	bench/ladder.sh

bench-archiver: bootstrap build-release
	bench/archiver.sh

bench-soak: bootstrap build-release
	bench/soak.py

bench-blocking: bootstrap build-release
	bench/blocking.py

bench-g2g: build-release
	infra/bootstrap.sh --bench
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	bench/g2g.py

bench-edge: build-release
	infra/bootstrap.sh --bench
	bench/edge.sh

bench-sfu: build-release
	bench/sfu.sh

bench-turn: build-release
	bench/turn.sh

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets
