# syntax=docker/dockerfile:1
#
# medtfx pipeline image: the code every TFX component of the Kubeflow
# Pipelines v2 run executes (ExampleGen .. Trainer .. Pusher).
#
#   docker build -t REGISTRY/medtfx-pipeline:TAG .
#
# Base: the official slim Python 3.10 image (pinned patch release; add an
# @sha256 digest when releasing) plus the repo's fully pinned
# constraints.txt (tfx 1.16.0 / tensorflow 2.16). Alternative base: the TFX
# release image `gcr.io/tfx-oss-public/tfx:1.16.0` (TFX, TF and Beam
# preinstalled, ~GBs bigger, its own Python); with it, install only this
# package (`pip install --no-deps .`) so its pins are kept.
#
# ENTRYPOINT is deliberately NOT set. KubeflowV2DagRunner runs each component
# with the container command
#   python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor ...
# (the KFP v2 launcher wraps it), so `python` on PATH must be the interpreter
# with tfx installed: the venv below comes first on PATH. The CMD is only for
# an interactive `docker run`; a Kubernetes `command` replaces it.

# ---------------------------------------------------------------- build stage
FROM python:3.10.14-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Compilers only for the rare dependency without a cp310 manylinux wheel;
# they stay out of the runtime image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependency metadata first; README.md* because pyproject's `readme` needs it
# (the glob keeps the build working if it is absent).
COPY pyproject.toml constraints.txt README.md* ./
COPY components/ components/
COPY pipeline/ pipeline/
COPY modules/ modules/
RUN pip install "pip==24.2" \
    && pip install -c constraints.txt . \
    && medtfx --help >/dev/null

# -------------------------------------------------------------- runtime stage
FROM python:3.10.14-slim-bookworm

LABEL org.opencontainers.image.title="medtfx-pipeline" \
      org.opencontainers.image.description="TFX 1.16 medical image segmentation pipeline (KFP v2 component image)" \
      org.opencontainers.image.licenses="Apache-2.0"

# Non-root user; UID/GID 1000 matches runAsUser/fsGroup in k8s/ so files the
# Pusher writes to the shared model volume are readable by TF Serving.
RUN groupadd --gid 1000 medtfx \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/medtfx \
       --shell /usr/sbin/nologin medtfx

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/medtfx \
    TF_ENABLE_ONEDNN_OPTS=1

# Sources also under /app (owned by root, read-only for the user) so a
# module_file given as a repo-relative path (e.g. modules/train/trainer.py) resolves.
WORKDIR /app
COPY pyproject.toml constraints.txt ./
COPY components/ components/
COPY pipeline/ pipeline/
COPY modules/ modules/

USER 1000:1000

# A batch image: no server to probe.
HEALTHCHECK NONE

CMD ["medtfx", "--help"]
