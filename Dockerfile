# syntax=docker/dockerfile:1
# The monitor as a container: `monitor serve` (ingest, scoring, analyzer, API on :8000).
#
#   docker build -t rm-drift-monitor .                                   # CPU PyTorch (default)
#   docker build -t rm-drift-monitor:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
#
# The CUDA variant needs a GPU node and the NVIDIA container toolkit (deploy/README.md). Multi-stage:
# the build stage fills a virtual environment, the runtime stage copies it and runs as a non-root user.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# torch first, from the index that matches the hardware: a plain `torch` pulls a multi-GB CUDA build.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY monitor ./monitor
RUN pip install .

FROM python:${PYTHON_VERSION}-slim AS runtime
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin monitor
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    MONITOR_API_HOST=0.0.0.0 \
    MONITOR_API_PORT=8000
USER 10001
WORKDIR /home/monitor
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["monitor"]
CMD ["serve"]
