# Two commands set everything up on a fresh machine (Python ≥ 3.11, Java 17, Maven):
#   make demo   — install, start the local OpenSearch node, ingest RSITMD, query each mode, evaluate
#   make test   — install, then run the whole test suite against a real local node
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install test lint demo bench clean-node chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .

# Headless Chromium for the STAC Browser test (tests/test_stac_browser.py): Debian's chromium and its
# chromedriver, installed only when missing (needs root, as in CI). STAC Browser itself is built by the
# test's fixture with npm (/usr/bin/npm) and cached under /var/cache/rsrt/stac-browser/.
chromium:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; else \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; fi

test: install lint chromium
	$(BIN)/pytest -q

demo: install
	$(BIN)/rsrt demo

# The performance report (docs/performance/): ~1 h on 2 cores for 10k + 100k images.
bench: install
	$(BIN)/rsrt node start --heap 2g
	$(BIN)/rsrt bench all --out bench-results

clean-node:
	-$(BIN)/rsrt node stop
