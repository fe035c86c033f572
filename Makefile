SHELL := /bin/bash
# uv: on PATH, else a Python's own module, else the one `make install` puts in .local/tools (a virtual
# environment of its own: a system Python may refuse packages installed into it, PEP 668). Looked up
# when used, so the recipe that installs it finds it. Given to the tests as MAILING_UV: the deployment
# checks run PyPI's tools through it.
TOOLS := $(CURDIR)/.local/tools
UV = $(shell command -v uv 2>/dev/null || { python3 -m uv --version >/dev/null 2>&1 && echo "$$(command -v python3) -m uv"; } || echo $(TOOLS)/bin/uv)
RUN = $(UV) run --frozen
export PYTHONDONTWRITEBYTECODE := 1
export MAILING_UV = $(UV)

.PHONY: install browser deploy-tools run test test-unit lint format migrate bench soak demo up down preflight check-deploy

install: ## virtual environment and packages from the lock file
	@$(UV) --version >/dev/null 2>&1 || { python3 -m venv $(TOOLS) && $(TOOLS)/bin/pip install --quiet uv; }
	$(UV) sync --frozen
	npm ci --no-audit --no-fund

preflight: install
	@$(RUN) python -m shared.preflight

migrate: preflight ## create the database if missing and apply every migration
	$(RUN) python -m shared.migrate

run: migrate ## migrate, then start every service of the Procfile (api, scheduler, sender, reporter, probe stand-in, dev sign-in)
	@$(RUN) python -m scripts.first_run
	$(RUN) python -m scripts.procfile -f Procfile

test: preflight browser deploy-tools ## every test: unit, integration, end-to-end, browser
	$(RUN) pytest

browser: ## Debian's chromium for the browser tests (installed when missing and running as root)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update && apt-get install -y chromium; } \
		|| echo "chromium is missing: install it (apt-get install chromium) to run the browser tests"

test-unit: install
	$(RUN) pytest -m unit

lint: install ## ruff and mypy (strict)
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy shared services bench tests scripts deploy

format: install
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

bench: preflight ## throughput benchmarks; figures go to docs/benchmarks.md
	$(RUN) python -m bench.csv_import
	$(RUN) python -m bench.scheduler
	$(RUN) python -m bench.finalize
	$(RUN) python -m bench.counts
	$(RUN) python -m bench.sender
	$(RUN) python -m bench.admin_pages
	$(RUN) python -m bench.e2e

soak: install ## every service as a process through restarts, kills and provider faults; audit in bench/results/
	$(RUN) python -m bench.soak

demo: install ## against a running `make run`: load sample clients, run a mailing, show its progress (key: .local/admin-api-key)
	$(RUN) python -m scripts.demo

up: ## every part in containers, development profile (the probe stand-in; docs/security.md for production)
	MAILING_ENVIRONMENT=development docker compose --profile dev up --build -d

down:
	docker compose --profile dev down

deploy-tools: ## promtool (Debian's prometheus package, never started) when missing and running as root; kubectl is needed too
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update && apt-get install -y --no-install-recommends prometheus; } \
		|| echo "promtool is missing: apt-get install prometheus to validate the alerts"
	@command -v kubectl >/dev/null || echo "kubectl is missing: the Kubernetes manifests are not validated (docs/deploy.md says how to get it)"

check-deploy: install deploy-tools ## the deployment files through the real tools (kubectl kustomize, kubernetes-validate, the operators' schemas, docker compose, promtool, check-jsonschema); a missing tool fails
	MAILING_DEPLOY_TOOLS_REQUIRED=1 $(RUN) pytest -q tests/unit/test_deploy_manifests.py tests/unit/test_deploy_config.py
