# syntax=docker/dockerfile:1
# covserve training: the training package with torch (PyPI's Linux build, which carries CUDA) and ONNX
# Runtime (CPU; it only checks each exported graph against torch). Entry point covserve-train.
#   docker build -f docker/train.Dockerfile -t covserve-train:0.1.0 .
#   docker run --gpus all -v covserve-models:/models covserve-train:0.1.0 fit --config configs/demo.yaml
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY scripts/install.sh scripts/
COPY covserve/__init__.py covserve/_scripts.py covserve/py.typed covserve/
COPY covserve/training/ covserve/training/
RUN python -m venv /opt/venv && sh scripts/install.sh /opt/venv/bin/python train,cpu

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --create-home covserve \
    && mkdir /models /runs /data && chown covserve:covserve /models /runs /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /home/covserve
COPY --chown=covserve:covserve configs/ configs/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
VOLUME ["/models", "/runs"]
# a batch job, not a server: there is nothing to probe, and Kubernetes Jobs ignore HEALTHCHECK anyway
HEALTHCHECK NONE
ENTRYPOINT ["covserve-train"]
CMD ["fit", "--config", "configs/demo.yaml", "--repository", "/models", "--run-dir", "/runs"]
