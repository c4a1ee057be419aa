# The training image: torch, Prefect and MLflow; runs the Prefect worker and the deployments.
FROM python:3.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md prefect.yaml ./
COPY training ./training
COPY pipelines ./pipelines
COPY serving ./serving
RUN pip install ".[train]"
ENV NEUROSERVE_HOME=/data/neuroserve
CMD ["prefect", "worker", "start", "--pool", "neuroserve"]
