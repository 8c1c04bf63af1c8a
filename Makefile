# vdpa-bench: every target installs what it needs itself (the Debian packages, then .venv), so on a
# fresh Debian machine `make demo` and `make test` are the whole set-up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The vendor example package the suite is proven on (installed next to the project when present).
VENDOR_EXAMPLE := tests/vendor_example

# python3-venv, make: the project itself; dpdk-dev: testpmd (the virtio_user frontend, net_vhost the
# reference backend); qemu-system-x86, busybox-static, cpio, kmod: the QEMU guest that drives the
# backend and Linux VFIO; g++, zlib1g-dev, liblz4-dev: Verilator builds of the RTL (lz4 for FST
# waveforms); iverilog: the RTL under Icarus too; chromium, chromium-driver: the campaign report's
# browser test (headless, through selenium). Peers a test needs and cannot find skip it
# locally and fail it when CI=true.
DEBIAN_PACKAGES := python3-venv make dpdk-dev qemu-system-x86 busybox-static cpio kmod \
	g++ zlib1g-dev liblz4-dev iverilog chromium chromium-driver \
	meson ninja-build pkg-config libjson-c-dev libcmocka-dev

.PHONY: demo record test lint suite bench system clean mutate

# One dpkg query when everything is present; apt-get only as root and only for what is missing.
system:
	@command -v dpkg-query >/dev/null || { \
	  echo "not a Debian system: install the equivalents of: $(DEBIAN_PACKAGES)"; exit 0; }; \
	missing=$$(dpkg-query -W -f='$${Package} $${db:Status-Abbrev}\n' $(DEBIAN_PACKAGES) 2>/dev/null \
	  | awk '$$2 == "ii" { ok[$$1] = 1 } END { n = split("$(DEBIAN_PACKAGES)", want, " "); \
	    for (i = 1; i <= n; i++) if (!(want[i] in ok)) printf "%s ", want[i] }'); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian packages: $$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	else \
	  missing=$${missing% }; \
	  echo "missing Debian packages ($$missing): install them with 'sudo apt-get install -y $$missing';" \
	    "until then the tests that need them skip (or fail when CI=true)"; \
	fi

$(STAMP): pyproject.toml $(wildcard $(VENDOR_EXAMPLE)/pyproject.toml) | system
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[bench,dev]'
	if [ -f $(VENDOR_EXAMPLE)/pyproject.toml ]; then $(BIN)/pip install -q -e $(VENDOR_EXAMPLE); fi
	touch $(STAMP)

# The suite on the behavioral model: the terminal table, reports/sim/report.html and junit.xml. It changes no
# committed file; `make record` (maintainers) writes the run's summary to docs/results/suite-sim-virtio-net.json
# and re-renders the README's suite figures from it.
demo: system $(STAMP)
	$(BIN)/vdpa-bench run --target sim --out reports/sim

# A run that wrote no results (exit 2) records nothing.
record: system $(STAMP)
	rm -f reports/sim/results.json; \
	$(BIN)/vdpa-bench run --target sim --out reports/sim; status=$$?; \
	if [ -f reports/sim/results.json ] && [ $$status -le 1 ]; then \
	  $(BIN)/python -m bench.results suite reports/sim/results.json || exit $$?; fi; \
	exit $$status

# pytest-xdist, one worker per core (at most four), a module per work unit so a module's whole-suite
# fixture runs once, and the interop tests together as one unit (they pin testpmd's busy-polling lcores to
# one CPU and start QEMU guests, so two must not overlap; the scheduler in tests/conftest.py). The checks'
# deadlines follow the target's calibrated speed, so a shared core stretches them instead of failing them.
# PYTEST_ARGS='-n 0' runs serially.
JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST_ARGS ?= -n $(JOBS) --dist loadscope
test: system $(STAMP) lint
	$(BIN)/pytest -q --durations=25 --junitxml=reports/tests/junit.xml $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check backend sim models testbenches tests bench tools examples
	$(BIN)/mypy

suite: system $(STAMP)
	$(BIN)/pytest -q testbenches/conformance/checks --target sim

# Writes docs/results/bench.json (date, machine, every figure) and re-renders the README's figures.
bench: system $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) reports .mypy_cache .ruff_cache .hypothesis

mutate: $(STAMP)
	$(BIN)/python tools/mutate.py $(MUTATE_ARGS)

# Coverage-guided fuzzing (tests/fuzz, atheris): every target in its own process, at least 100,000 inputs or
# FUZZ_ARGS' bounds; the table and reports/fuzz/summary.json give inputs, coverage, crashes, hangs, peak RSS.
FUZZ_ARGS ?=
fuzz: $(STAMP)
	$(BIN)/python tools/fuzz.py $(FUZZ_ARGS)
