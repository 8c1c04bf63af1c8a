# vdpa-bench: every target creates or reuses .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint suite bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vdpa-bench run --target sim --out reports/sim

test: $(STAMP) lint
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check backend sim models testbenches tests bench
	$(BIN)/mypy

suite: $(STAMP)
	$(BIN)/pytest -q testbenches/conformance/checks --target sim

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) reports .mypy_cache .ruff_cache .hypothesis
