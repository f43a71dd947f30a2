# syntax=docker/dockerfile:1
# The upload service as an image: `docker build -t upload-service .` (README, "Deploy").
#
# Any Debian-like image with python3 (>= 3.11) and its venv module works as the base:
# the official slim image by default, or one made from Debian's own packages where no
# image registry is reachable (deploy/podman/base-image). Both stages use the same base,
# so the virtualenv's interpreter path is valid in the final one.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/venv
# Requirements first: code changes then reuse the cached dependency layer.
COPY requirements.txt /src/requirements.txt
RUN /opt/venv/bin/pip install --no-compile -r /src/requirements.txt
COPY pyproject.toml alembic.ini /src/
COPY app /src/app
# Not editable, no dependencies (they are pinned above): the package and its console
# scripts (upload-admin, audio-upload) land in the venv, and /src stays in this stage.
RUN /opt/venv/bin/pip install --no-compile --no-deps /src \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE}
# A fixed, unprivileged uid so volumes and Kubernetes' runAsUser can name it.
RUN groupadd --gid 10001 upload \
 && useradd --no-create-home --uid 10001 --gid upload --home-dir /srv/upload --shell /usr/sbin/nologin upload \
 && mkdir -p /srv/upload /var/lib/upload-service/staging \
 && chown -R upload:upload /var/lib/upload-service
COPY --from=build /opt/venv /opt/venv
# For operators: `alembic upgrade head` from /srv/upload when AUTO_MIGRATE=false.
COPY --from=build /src/alembic.ini /srv/upload/alembic.ini
WORKDIR /srv/upload
# No MALLOC_* here: the service sets its own allocator settings at start-up
# (app.main.tune_malloc), and an environment value would override them. PORT and SHUTDOWN_GRACE_SECONDS feed the command below. No key, token or secret is
# baked in: they come from the environment at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8000 \
    SHUTDOWN_GRACE_SECONDS=30 \
    LOCAL_TEMP_CHUNK_PATH=/var/lib/upload-service/staging
USER 10001:10001
EXPOSE 8000
# uvicorn stops on SIGTERM: no new connections, in-flight requests get
# SHUTDOWN_GRACE_SECONDS, then the rest are cut off and their partial files removed.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]
# One worker per container: scale with replicas, so the orchestrator sees each process
# (health, memory, restarts). `exec` makes uvicorn PID 1, which receives the SIGTERM.
# FORWARDED_ALLOW_IPS (read by uvicorn and by the app) says which proxies to trust.
CMD ["sh", "-c", "exec uvicorn app.main:app --host 0.0.0.0 --port \"$PORT\" --timeout-graceful-shutdown \"$SHUTDOWN_GRACE_SECONDS\" --no-access-log"]
