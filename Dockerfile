# syntax=docker/dockerfile:1
# relaygate: the core and every bundled plugin (bedrock, azure, vertex), with the
# OpenTelemetry extra (imported only when a config sets telemetry.otlp).
#
#   docker build -t relaygate .
#   docker run -p 8080:8080 -e RELAYGATE_CLIENT_KEY=sk-... relaygate
#   docker run -p 8080:8080 -v $PWD/my.yaml:/etc/relaygate/config.yaml:ro relaygate
#
# The config lives at /etc/relaygate/config.yaml (mount yours there); the default one,
# deploy/config.yaml, serves the offline demo provider on 0.0.0.0:8080 to clients that
# present $RELAYGATE_CLIENT_KEY. See docs/operations.md.

ARG PYTHON_VERSION=3.12

# ---------------------------------------------------------------- build: a venv with everything
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/relaygate
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY proxy ./proxy
COPY plugins ./plugins
RUN /opt/relaygate/bin/pip install ".[otel]" ./plugins/bedrock ./plugins/azure ./plugins/vertex \
 && /opt/relaygate/bin/relaygate plugins > /dev/null

# ---------------------------------------------------------------- runtime: slim, non-root
FROM python:${PYTHON_VERSION}-slim
RUN groupadd --system --gid 10001 relaygate \
 && useradd --system --uid 10001 --gid relaygate --home-dir /nonexistent --no-create-home \
    --shell /usr/sbin/nologin relaygate
COPY --from=build /opt/relaygate /opt/relaygate
COPY deploy/config.yaml /etc/relaygate/config.yaml
ENV PATH=/opt/relaygate/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080
# SIGTERM drains: readiness 503, server.drain_delay, then server.shutdown_grace for requests in flight.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["relaygate"]
CMD ["serve", "--config", "/etc/relaygate/config.yaml"]
