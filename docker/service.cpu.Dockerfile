# syntax=docker/dockerfile:1
# covserve inference service, CPU build: ONNX Runtime (CPU) on a slim Python base. No torch, no training code.
#   docker build -f docker/service.cpu.Dockerfile -t covserve-service-cpu:0.1.0 .
#   docker run -p 8000:8000 -v "$PWD/models:/models:ro" covserve-service-cpu:0.1.0
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY scripts/install.sh scripts/
COPY covserve/__init__.py covserve/_scripts.py covserve/py.typed covserve/
COPY covserve/service/ covserve/service/
RUN python -m venv /opt/venv && sh scripts/install.sh /opt/venv/bin/python cpu

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --no-create-home covserve \
    && mkdir /models && chown covserve:covserve /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    COVSERVE_REPOSITORY=/models \
    COVSERVE_HOST=0.0.0.0 \
    COVSERVE_PORT=8000 \
    COVSERVE_DEVICE=cpu
USER 10001:10001
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ['COVSERVE_PORT'], timeout=4)"]
ENTRYPOINT ["covserve-serve"]
