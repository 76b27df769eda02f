# jobline: `make demo` and `make test` set everything up on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/jobline demo

lint: $(STAMP)
	$(BIN)/ruff check runtime actors vendors_fake tests loadtests
	$(BIN)/ruff format --check runtime actors vendors_fake tests loadtests
	$(BIN)/mypy --strict runtime actors vendors_fake

bench: $(STAMP)
	$(BIN)/python -m loadtests.bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
