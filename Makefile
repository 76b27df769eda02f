# jobline: `make demo` and `make test` set everything up on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench loadtest clean prometheus chaos browser-deps screenshots console-assets

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The suite needs the real Prometheus and a headless Chromium: installed here if missing.
# Two workers (pytest-xdist), each with its own local Ray, a test file per worker at a time:
# most tests wait on timers and vendors, not on the CPU.
TEST_WORKERS ?= 2
test: $(STAMP) prometheus browser-deps
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: $(STAMP)
	$(BIN)/jobline demo

lint: $(STAMP)
	$(BIN)/ruff check runtime actors vendors_fake tests loadtests
	$(BIN)/ruff format --check runtime actors vendors_fake tests loadtests
	$(BIN)/mypy --strict runtime actors vendors_fake loadtests

# The real Prometheus (and promtool) for tests/integration/test_prometheus.py: Debian's package.
prometheus:
	@command -v promtool >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus; \
	}

# Debian's headless Chromium (and chromedriver) for tests/browser: never a downloaded browser.
browser-deps:
	@{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	}

# The browser tests, saving the screenshots the README shows (tests/browser/screenshots/).
screenshots: $(STAMP) browser-deps
	JOBLINE_SCREENSHOTS=1 $(BIN)/pytest -q tests/browser

# Re-vendor the console's CSS and JavaScript libraries at their pinned versions (npm pack).
console-assets:
	runtime/console/vendor.sh

# Every chaos scenario with seeds 1 2 3 and the full invariant check; a report per run.
chaos: $(STAMP)
	$(BIN)/jobline chaos

bench: $(STAMP)
	$(BIN)/python -m loadtests.bench

# Locust against jobline on a local Ray + fake vendors, then the invariants.
# make loadtest SHAPE=spike DURATION=120 USERS=40
SHAPE = steady
DURATION = 60
USERS = 20
loadtest: $(STAMP)
	$(BIN)/python -m loadtests.run --shape $(SHAPE) --duration $(DURATION) --users $(USERS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
