# R2F image (first version; the container work is issue #9 and this file has not been built in CI yet).
# CPU-only: torch comes from PyTorch's CPU index so pip does not pull the multi-GB CUDA build.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1 DO_NOT_TRACK=true \
    TOKENIZERS_PARALLELISM=false

RUN apt-get update && apt-get install -y --no-install-recommends git make && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY r2f ./r2f
COPY flows ./flows
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install -e .
COPY . .
RUN git init -q 2>/dev/null || true
ENV PREFECT_HOME=/app/.r2f/prefect DVC_SITE_CACHE_DIR=/app/.r2f/dvc-site-cache
ENTRYPOINT ["r2f"]
CMD ["run"]
