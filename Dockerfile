# syntax=docker/dockerfile:1
#
# sentinel-stream: the consumer group member and its HTTP side server.
#
#   docker build -t sentinel-stream .
#   docker run --rm -p 8000:8000 \
#     -e SENTINEL_KAFKA_BOOTSTRAP=broker:9092 -e SENTINEL_CREATE_TOPICS=true \
#     sentinel-stream
#
# Every setting is an environment variable (see sentinel_stream/config.py). Other
# subcommands run the same way: `docker run --rm sentinel-stream tail --anomalies-only`.
# The graceful drain on SIGTERM may take up to SENTINEL_SHUTDOWN_TIMEOUT_S (default 30 s):
# give `docker stop` (or terminationGracePeriodSeconds) more than that, e.g. `-t 45`.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the package and its dependencies into a self-contained venv --------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# README.m[d]: the glob lets the build go on if the README is absent (pyproject names it,
# but setuptools only warns when it is missing); pyproject.toml always matches.
COPY pyproject.toml README.m[d] ./
COPY sentinel_stream ./sentinel_stream
# Every dependency ships manylinux wheels for CPython 3.11 (confluent-kafka bundles
# librdkafka); the compiler is for the scoring kernel (sentinel_stream/detect/_kernel.c,
# built against the image's own Python headers) and stays in this stage. pip
# byte-compiles what it installs, so the runtime never has to write .pyc files next to
# read-only modules.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN pip install . \
    && python -c "import sentinel_stream.cli, sentinel_stream.detect._kernel, confluent_kafka, sklearn"

# --- runtime: the venv only, run by an unprivileged user ------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="sentinel-stream" \
      org.opencontainers.image.description="Per-request anomaly verdicts, with reasons, for request telemetry on Kafka" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 sentinel \
    && useradd --system --uid 10001 --gid sentinel --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin sentinel

# Owned by root and not writable by the service user.
COPY --from=build /opt/venv /opt/venv

# SENTINEL_HOST=0.0.0.0: inside a container the side server must be reachable from
# outside the container's own loopback (the service's default is 127.0.0.1).
# /tmp is the only place the service writes (the refit workers' spawn files; with a
# read-only root filesystem, mount an emptyDir or tmpfs on /tmp).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SENTINEL_HOST=0.0.0.0 \
    SENTINEL_PORT=8000 \
    SENTINEL_LOG_FORMAT=json

WORKDIR /tmp
USER 10001:10001

EXPOSE 8000

# No curl in the slim image: ask /health with the standard library. urlopen raises on a
# non-2xx answer (503 when the consumer loop is stuck or failed) and on a refused
# connection, so the exit status is non-zero exactly when the service is not healthy.
# The start period covers start-up: the topic check and the restore of the state topic.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SENTINEL_PORT', '8000'), timeout=4).close()"]

# Exec form: sentinel-stream is PID 1 and receives SIGTERM itself (it installs its own
# handlers, so PID 1's default of ignoring signals does not apply).
ENTRYPOINT ["sentinel-stream"]
CMD ["run"]
