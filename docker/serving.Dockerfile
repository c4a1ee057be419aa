# The serving image: ONNX Runtime on CUDA 13 / cuDNN 9, the `serve` extra only — no torch, no Prefect.
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY serving ./serving
RUN pip install ".[serve]"
ENV NEUROSERVE_HOST=0.0.0.0 NEUROSERVE_HOME=/data/neuroserve
EXPOSE 8000 8001 8002
CMD ["python", "-m", "serving"]
