# syntax=docker/dockerfile:1
# The serving image: `made serve` on onnxruntime-gpu. No torch and no training code inside.
#
#   docker build -t made:gpu .
#   docker build -t made:cpu --build-arg BASE_IMAGE=debian:bookworm-slim --build-arg EXTRA=cpu .
#
# tests/test_deploy.py runs this file's pip install and ENTRYPOINT in a fresh virtual
# environment, so keep the install in RUN lines that call pip and the entry point in ENTRYPOINT.

# onnxruntime-gpu 1.26.0 is the last PyPI release built for CUDA 12 (12.8) and cuDNN 9; the
# PyPI wheels from 1.27.0 on need CUDA 13 and cuDNN 9 (host driver >= 580). Move ORT_VERSION
# and BASE_IMAGE together, e.g. 1.31.1 with nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9.30

FROM ${UV_IMAGE} AS uv

# ---- builder: Python 3.11 and a virtual environment with the serving dependencies -----------
FROM ${BASE_IMAGE} AS builder
# gpu: onnxruntime-gpu; cpu: onnxruntime (exactly one of the two, see pyproject.toml)
ARG EXTRA=gpu
ARG ORT_VERSION=1.26.0
ARG PYTHON_VERSION=3.11
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=uv /uv /usr/local/bin/uv
# A relocatable CPython build (python-build-standalone) in /opt/python: the CUDA images carry no
# Python 3.11, and the runtime stage copies /opt/python and /opt/venv to the same paths.
RUN uv python install "${PYTHON_VERSION}" \
    && "$(uv python find "${PYTHON_VERSION}")" -m venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv
ENV PATH=$VIRTUAL_ENV/bin:$PATH
WORKDIR /src
# Dependencies before code: made/ and service/ are not here yet, so this installs the `made`
# distribution (its console script) with no packages, and the layer is rebuilt only when
# pyproject.toml or the pins change. (No README either: setuptools builds without it, and an
# edit to it would rebuild this layer.)
COPY pyproject.toml ./
RUN printf 'onnxruntime==%s\nonnxruntime-gpu==%s\n' "${ORT_VERSION}" "${ORT_VERSION}" > constraints.txt \
    && pip install --constraint constraints.txt ".[${EXTRA}]" \
    && pip check

# ---- runtime ----------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="made" \
      org.opencontainers.image.description="MADE density models served over HTTP on onnxruntime"
RUN groupadd --system --gid 10001 made \
    && useradd --system --no-log-init --uid 10001 --gid made --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin made
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The code is a layer of its own (kilobytes), imported through PYTHONPATH: a code change never
# rebuilds or re-uploads the dependency layers above.
COPY made/ made/
COPY service/ service/
# The shipped store; mount another one and point MADE_STORE at it to serve your own models.
COPY model_store/ model_store/
# NVIDIA_TF32_OVERRIDE=0: full float32 matmuls on Ampere and later, so that log p(x) on the GPU
# matches the CPU's (TF32 would move it by about 1e-3 nats).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_TF32_OVERRIDE=0 \
    MADE_STORE=/app/model_store \
    MADE_WORKERS=1 \
    MADE_THREADS=0
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# Workers and threads come from MADE_WORKERS and MADE_THREADS; arguments given to `docker run`
# are appended, so `docker run IMAGE --port 9000` overrides the port (the healthcheck expects 8000).
ENTRYPOINT ["made", "serve", "--host", "0.0.0.0", "--port", "8000"]
