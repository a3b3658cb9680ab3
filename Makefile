# sagakit: `make demo` and `make test` set themselves up on a fresh machine.
# `make demo` installs only what the demo runs (sagakit and its runtime dependencies);
# `make test` and the other targets add the development tools (the `dev` extra).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HASH := $(shell cksum < pyproject.toml | cut -d' ' -f1)
BASE := $(VENV)/.installed-base-$(HASH)
DEV := $(VENV)/.installed-dev-$(HASH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test test-fast check lint format typecheck compose-check swagger-ui screenshots clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "sagakit needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)

$(BASE): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@rm -f $(VENV)/.installed-base-*
	@touch $(BASE)

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(DEV) $(BASE)

install: $(DEV)

demo: $(BASE)
	$(BIN)/sagakit demo

# Two test processes (pytest-xdist), each test module whole on one of them: most tests wait
# on worker subprocesses, so two halve the wall time even on two cores.
test: $(DEV)
	$(BIN)/pytest -n 2 --dist loadfile

test-fast: $(DEV)
	$(BIN)/pytest -m "not integration and not postgres and not redis"

lint: $(DEV)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/lint-imports

format: $(DEV)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

typecheck: $(DEV)
	$(BIN)/mypy

check: lint typecheck test

# The secrets have no default: check with ./.env when there is one, else with .env.example.
compose-check:
	docker-compose --env-file $(if $(wildcard .env),.env,.env.example) -f docker-compose.yml config -q

# Refresh the vendored Swagger UI behind /docs (needs npm): make swagger-ui VERSION=5.x.y
swagger-ui:
	scripts/vendor-swagger-ui $(VERSION)

# The dashboard's screenshots in docs/images (embedded default; Debian's chromium).
screenshots: $(DEV)
	$(BIN)/python scripts/screenshots --out docs/images

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis sagakit.db* out
