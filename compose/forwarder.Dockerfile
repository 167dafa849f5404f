# The fieldgate forwarder image. Built by `fieldgate images build` from a context holding
# wheels/ (built on the host beforehand: the build needs no network) and this file.
# BASE: python:3.11-slim where a registry is reachable, or a locally imported Debian bookworm
# with python3 + python3-venv (.ci/docker.sh); both carry CPython 3.11, which the wheels match.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# Marks this stage's image, so `fieldgate images build` can prune the ones a rebuild leaves behind.
LABEL io.fieldgate.stage=build
COPY wheels/ /wheels/
# Only fieldgate and its dependencies: pip resolves from the wheels and nothing else.
# pip and setuptools leave the venv afterwards; the .pyc files stay, since the root is read-only.
RUN python3 -m venv /opt/fieldgate \
 && /opt/fieldgate/bin/pip install --no-index --find-links /wheels --no-cache-dir --disable-pip-version-check \
      'fieldgate' \
 && /opt/fieldgate/bin/pip uninstall -y -q pip setuptools \
 && rm -f /opt/fieldgate/bin/activate* /opt/fieldgate/bin/Activate.ps1

FROM ${BASE}
ARG VERSION=0.0.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="fieldgate-forwarder" \
      org.opencontainers.image.description="fieldgate forwarder" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.fieldgate.component="forwarder"
# A fixed uid/gid, so volume ownership and `user:` in the compose file agree across images.
RUN groupadd --system --gid 10001 fieldgate \
 && useradd --system --uid 10001 --gid fieldgate --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin fieldgate \
 && mkdir -p /etc/fieldgate /run/fieldgate /var/lib/fieldgate/state /var/lib/fieldgate/buffer \
 && chown fieldgate:fieldgate /run/fieldgate /var/lib/fieldgate/state /var/lib/fieldgate/buffer
COPY --from=build /opt/fieldgate /opt/fieldgate
ENV PATH=/opt/fieldgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FIELDGATE_METRICS_PORT=9108
USER 10001:10001
# /healthz answers 503 with the reasons when the forwarder is stuck (hand-off or buffer failing,
# a connected broker session that stops acknowledging); urlopen raises on it. A broker out of
# reach answers 200 "degraded: ..." (it buffers and retries; a restart would not help).
# The compose file repeats this with the configured port.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['FIELDGATE_METRICS_PORT'], timeout=4)"]
ENTRYPOINT ["python3", "-m", "collectors.forwarder"]
CMD ["--config", "/etc/fieldgate/config.yaml"]
