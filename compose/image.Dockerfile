# The fieldgate images, one template for all three. `fieldgate images build` writes one
# Dockerfile per image from it into a context holding wheels/ (fetched on the host beforehand:
# the build needs no network) and rootfs.py, filling in @MODULE@ (the entry point: Docker does
# not substitute variables in ENTRYPOINT); the rest comes as build arguments.
#
# BASE: python:3.11-slim where a registry is reachable, or a locally imported Debian bookworm
# with python3 (.ci/docker.sh), of the platform built. BUILD_BASE: the same for the machine's
# own platform (the two differ only when cross-building, e.g. arm64 images on an x86_64 host).
# The build always runs for the machine's own platform: nothing of the target platform is ever
# run (rootfs.py reads its files, ELF headers for the libraries, and installs its wheels with
# pip's --platform), so no emulation is needed; `fieldgate images build` then sets the
# architecture in the image's config (the layers stay as built).
ARG BASE=python:3.11-slim
ARG BUILD_BASE=${BASE}

FROM ${BASE} AS target

# 1. What the three images share, built the same way by each: Docker's cache gives all three the
#    same two lower layers (OUT/runtime: interpreter, libraries, stdlib; OUT/core: fieldgate).
FROM ${BUILD_BASE} AS shared
# Marks this stage's image, so `fieldgate images build` can prune the ones a rebuild leaves behind.
LABEL io.fieldgate.stage=build
COPY --from=target / /target/
COPY wheels/ /wheels/
COPY rootfs.py /rootfs.py
ARG ARCH=amd64
ARG BUILD_ARCH=amd64
ARG EXTRAS=modbus,opcua
RUN python3 /rootfs.py shared --target /target --wheels /wheels --extras "${EXTRAS}" \
      --arch "${ARCH}" --build-arch "${BUILD_ARCH}" --out /out

# 2. What this image's extra adds (pymodbus, asyncua...): its own top layer.
FROM shared AS packages
ARG ARCH=amd64
ARG BUILD_ARCH=amd64
ARG EXTRA=
RUN python3 /rootfs.py extra --extra "${EXTRA}" --core /out/core/opt/fieldgate/core --wheels /wheels \
      --arch "${ARCH}" --build-arch "${BUILD_ARCH}" --out /out

# 3. The image: no shell, no package manager, no pip; the root is read-only at runtime.
FROM scratch
COPY --from=shared /out/runtime/ /
COPY --from=shared /out/core/ /
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG TITLE=fieldgate
ARG DESCRIPTION=fieldgate
ARG COMPONENT=forwarder
ARG METRICS_PORT=9108
LABEL org.opencontainers.image.title="${TITLE}" \
      org.opencontainers.image.description="${DESCRIPTION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.fieldgate.component="${COMPONENT}"
COPY --from=packages /out/extra/ /
# python3 is /usr/local/bin/python3 on python:3.11-slim, /usr/bin/python3 on Debian's.
ENV PATH=/usr/local/bin:/usr/bin \
    PYTHONPATH=/opt/fieldgate/extra:/opt/fieldgate/core \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    FIELDGATE_METRICS_PORT=${METRICS_PORT}
# A fixed uid/gid (the `fieldgate` user of /etc/passwd), so volume ownership and `user:` in the
# compose file agree across images.
USER 10001:10001
# /healthz answers 503 with the reasons when the component is unwell (polls failing, hand-off
# down; for the forwarder a stuck hand-off or buffer, or a connected broker session that stops
# acknowledging: a broker out of reach is 200 "degraded: ..."); urlopen raises on 503. The
# compose file repeats this with the configured port.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['FIELDGATE_METRICS_PORT'], timeout=4)"]
ENTRYPOINT ["python3", "-m", "@MODULE@"]
CMD ["--config", "/etc/fieldgate/config.yaml"]
