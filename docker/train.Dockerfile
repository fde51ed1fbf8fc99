# syntax=docker/dockerfile:1
# covserve training: the training package with torch (PyPI's Linux build, which carries CUDA, unless
# --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu) and ONNX
# Runtime (CPU; it only checks each exported graph against torch). Entry point covserve-train.
#   docker build -f docker/train.Dockerfile -t covserve-train:0.1.0 .
#   docker run --rm -v covserve-models:/models -v covserve-runs:/runs covserve-train:0.1.0
#   docker run --rm --gpus all -v covserve-models:/models -v covserve-runs:/runs -v "$PWD":/data:ro \
#       covserve-train:0.1.0 fit --data /data/plant.csv --targets yield_a,yield_b --name plant
# The working directory's models/ and runs/ are links to the /models and /runs volumes, so a command that
# leaves out --repository and --run-dir still writes there, not into the container's home.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# https://download.pytorch.org/whl/cpu takes the CPU-only torch wheel instead of PyPI's CUDA build
ARG PIP_EXTRA_INDEX_URL=""
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
    && mkdir /models /runs /data && chown covserve:covserve /models /runs /data \
    && ln -s /models /home/covserve/models && ln -s /runs /home/covserve/runs
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
CMD ["fit", "--config", "configs/demo.yaml", "--repository", "/models", "--run-dir", "/runs", "--skip-if-published"]
