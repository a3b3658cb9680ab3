# sagakit: `make demo` and `make test` set themselves up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: install demo test test-fast check lint format typecheck compose-check swagger-ui clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "sagakit needs Python >= 3.11"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sagakit demo

test: $(STAMP)
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not integration and not postgres and not redis"

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

# The secrets have no default: check with ./.env when there is one, else with .env.example.
compose-check:
	docker-compose --env-file $(if $(wildcard .env),.env,.env.example) -f docker-compose.yml config -q

# Refresh the vendored Swagger UI behind /docs (needs npm): make swagger-ui VERSION=5.x.y
swagger-ui:
	scripts/vendor-swagger-ui $(VERSION)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis sagakit.db* out
