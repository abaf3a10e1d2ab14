# forwarder as a container image.
#
#   docker build -t forwarder .        (podman: add --format docker, or HEALTHCHECK is dropped)
#   docker run --read-only -v forwarder-data:/var/lib/forwarder \
#     -v "$PWD/secrets:/etc/forwarder/secrets:ro" -v "$PWD/forwarder.toml:/etc/forwarder/forwarder.toml:ro" \
#     -p 8080:8080 -p 9464:9464 --stop-timeout 30 forwarder
#
# Dependencies come only from deploy/requirements.lock (hashed; deploy/container/lock.sh
# regenerates it) and are installed as wheels: nothing is compiled. The runtime stage holds a
# venv with forwarder and its locked dependencies, and no pip, compiler, cache or tests.
# Stop grace: SIGTERM makes the daemon drain for up to dispatch.shutdown_grace_s (10 s); give
# the container more than that before SIGKILL (docker/podman --stop-timeout 30, Compose
# stop_grace_period, Kubernetes terminationGracePeriodSeconds). Images have no field for it.

# The base: an official Python slim image, pinned. Override with a mirror or local copy:
#   --build-arg PYTHON_IMAGE=registry.example.com/python:3.11.13-slim-bookworm (or @sha256:...)
# Any image with python3 (3.11+) and its venv module works (/usr/local/bin or /usr/bin).
ARG PYTHON_IMAGE=docker.io/library/python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first (a layer that survives source edits). pip trusts the system CA bundle when
# there is one, so a TLS-intercepting proxy's CA mounted or added there is honoured.
COPY deploy/requirements.lock deploy/requirements-build.lock deploy/
RUN if [ -f /etc/ssl/certs/ca-certificates.crt ]; then \
      export PIP_CERT=/etc/ssl/certs/ca-certificates.crt; \
    fi \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip install --quiet --require-hashes --only-binary :all: \
       -r deploy/requirements-build.lock \
    && python3 -m venv /opt/forwarder \
    && /opt/forwarder/bin/pip install --quiet --require-hashes --only-binary :all: --no-deps \
       -r deploy/requirements.lock
COPY pyproject.toml README.md ./
COPY forwarder/ forwarder/
# The wheel is built offline with the locked setuptools, installed without dependencies (they
# are all in place), then pip and setuptools leave the runtime venv.
RUN /opt/build/bin/pip wheel --quiet --no-deps --no-build-isolation --no-index \
       --wheel-dir /src/dist . \
    && /opt/forwarder/bin/pip install --quiet --no-deps --no-index /src/dist/forwarder-*.whl \
    && /opt/forwarder/bin/pip check \
    && /opt/forwarder/bin/python -m pip uninstall --quiet --yes pip setuptools \
    && /opt/forwarder/bin/forwarder --version

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG SOURCE_URL=https://example.invalid/forwarder
LABEL org.opencontainers.image.title="forwarder" \
      org.opencontainers.image.description="Durable, budget-aware forwarder of IP risk signals to Okta orgs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, unprivileged UID/GID (Kubernetes runAsUser/fsGroup and volume ownership rely on it).
# The state directory is the only writable place: the store and, through TMPDIR, SQLite's and
# Python's temporary files, so the root filesystem can be mounted read-only.
RUN groupadd --gid 10001 forwarder \
    && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/forwarder --shell /usr/sbin/nologin forwarder \
    && mkdir -p /var/lib/forwarder /etc/forwarder/secrets \
    && chown 10001:10001 /var/lib/forwarder \
    && chmod 0750 /var/lib/forwarder
COPY --from=builder /opt/forwarder /opt/forwarder
COPY deploy/container/forwarder.toml /etc/forwarder/forwarder.toml
COPY deploy/container/healthcheck.py /opt/forwarder/healthcheck.py

ENV PATH=/opt/forwarder/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/var/lib/forwarder
USER 10001:10001
WORKDIR /var/lib/forwarder
VOLUME ["/var/lib/forwarder"]
# 8080: detector ingest (POST /v1/signals); 9464: /metrics, /healthz, /readyz.
EXPOSE 8080 9464
STOPSIGNAL SIGTERM
# Liveness with the image's own Python (slim images have no curl); it follows
# FORWARDER_METRICS__LISTEN when that is set.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/opt/forwarder/healthcheck.py"]
ENTRYPOINT ["forwarder"]
CMD ["run", "--config", "/etc/forwarder/forwarder.toml"]
