# syntax=docker/dockerfile:1
# The serving image: `made serve` on onnxruntime-gpu. No torch and no training code inside.
#
#   docker build -t made:gpu .
#   docker build -t made:cpu --build-arg BASE_IMAGE=debian:bookworm-slim --build-arg EXTRA=cpu .
#   # a base that carries python3.11 and python3.11-venv (scripts/image_check.sh builds one):
#   podman build -t made:cpu --build-arg BASE_IMAGE=localhost/made-base:bookworm \
#       --build-arg EXTRA=cpu --build-arg PYTHON_FROM=base .
#
# The CUDA and the CPU image differ only in BASE_IMAGE and EXTRA (onnxruntime-gpu or onnxruntime),
# and PYTHON_FROM where the base has its own Python 3.11: every other step is shared, and
# tests/test_deploy.py checks it. It also runs this file's pip install and ENTRYPOINT in a fresh
# virtual environment, so keep the install in RUN lines that call pip and the entry point in
# ENTRYPOINT.

# onnxruntime-gpu 1.26.0 is the last PyPI release built for CUDA 12 (12.8) and cuDNN 9; the
# PyPI wheels from 1.27.0 on need CUDA 13 and cuDNN 9 (host driver >= 580). Move ORT_VERSION
# and BASE_IMAGE together, e.g. 1.31.1 with nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9.30
# Where Python 3.11 comes from: "uv", a relocatable CPython build (python-build-standalone) that
# uv downloads into /opt/python (the CUDA images carry no Python 3.11); or "base", the base
# image's own /usr/bin/python3.11 (a Debian bookworm base with python3.11-venv, where GitHub and
# ghcr.io are out of reach). The builder's other steps and the runtime stage are the same.
ARG PYTHON_FROM=uv

FROM ${UV_IMAGE} AS uv

# ---- Python 3.11 and an empty /opt/venv, from uv or from the base ----------------------------
FROM ${BASE_IMAGE} AS python-uv
ARG PYTHON_VERSION=3.11
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed
COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install "${PYTHON_VERSION}" \
    && "$(uv python find "${PYTHON_VERSION}")" -m venv /opt/venv

FROM ${BASE_IMAGE} AS python-base
ARG PYTHON_VERSION=3.11
# /opt/python stays empty: the venv links to the base's /usr/bin/python3.11, which the runtime
# stage, on the same base, has too.
RUN mkdir /opt/python \
    && "python${PYTHON_VERSION}" -m venv /opt/venv

# ---- builder: the serving dependencies in /opt/venv -------------------------------------------
# hadolint ignore=DL3006
FROM python-${PYTHON_FROM} AS builder
# gpu: onnxruntime-gpu; cpu: onnxruntime (exactly one of the two, see pyproject.toml)
ARG EXTRA=gpu
ARG ORT_VERSION=1.26.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
ENV VIRTUAL_ENV=/opt/venv
ENV PATH=$VIRTUAL_ENV/bin:$PATH
WORKDIR /src
# Dependencies before code: made/ and service/ are not here yet, so this installs the `made`
# distribution (its console script) with no packages, and the layer is rebuilt only when
# pyproject.toml or the pins change. (No README either: setuptools builds without it, and an
# edit to it would rebuild this layer.)
COPY pyproject.toml ./
# Two optional build secrets, for a machine whose pip needs its own configuration (an index, a
# CA bundle): pip.conf, read through PIP_CONFIG_FILE, and ca.crt, which it may name as its cert
# (`--secret id=pip.conf,src=FILE --secret id=ca.crt,src=BUNDLE`, as scripts/image_check.sh
# does). Without them pip reads PyPI with its own certificates. Secrets stay out of the image.
RUN --mount=type=secret,id=pip.conf,target=/run/secrets/pip.conf \
    --mount=type=secret,id=ca.crt,target=/run/secrets/ca.crt \
    printf 'onnxruntime==%s\nonnxruntime-gpu==%s\n' "${ORT_VERSION}" "${ORT_VERSION}" > constraints.txt \
    && PIP_CONFIG_FILE=/run/secrets/pip.conf pip install --constraint constraints.txt ".[${EXTRA}]" \
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
# matches the CPU's (TF32 moved it by up to 1.7e-2 nats a mask: docs/gpu-check.md).
# CUDA_CACHE_PATH: CUDA's JIT cache where a read-only root leaves room (/tmp; the user's HOME is
# /nonexistent), as the Kubernetes GPU overlay sets it; unused on a CPU.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_TF32_OVERRIDE=0 \
    CUDA_CACHE_PATH=/tmp/cuda-cache \
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
