# syntax=docker/dockerfile:1
# cutover in a container: README.md "Container" says how to build and run it, and
# tests/test_dockerfile.py runs this file's ENTRYPOINT, CMD and HEALTHCHECK against the checkout.
#
# Both stages use the same base tag: the venv built in the first one points at its interpreter
# (/usr/local/bin/python3.11). A tag moves with every patch release; for production, pin the
# digest as well (FROM python:3.11-slim@sha256:…), in both stages, and update it deliberately.

# --- builder: wheels for cutover and its runtime dependencies (no test or bench extras) ---------
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy/ proxy/
COPY shadow/ shadow/
# The venv gets no pip of its own: the base image's pip installs into it (pip --python).
RUN pip wheel --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/cutover \
 && pip --python /opt/cutover/bin/python install --no-index --find-links /wheels /wheels/cutover-*.whl

# --- runtime: the venv, a non-root user, two volumes ----------------------------------------------
FROM python:3.11-slim AS runtime
# A fixed uid/gid so that volumes and Kubernetes' runAsUser/fsGroup can name it.
RUN groupadd --system --gid 10001 cutover \
 && useradd --system --no-log-init --uid 10001 --gid cutover --no-create-home \
        --home-dir /var/lib/cutover --shell /usr/sbin/nologin cutover \
 && install -d -o cutover -g cutover -m 0750 /etc/cutover /var/lib/cutover
COPY --from=builder /opt/cutover /opt/cutover
# CUTOVER_CONFIG: `docker exec … cutover status` (and shift, rollback, …) find routes.yaml.
# CUTOVER_HEALTHCHECK_URL: the admin listener's /healthz (routes.yaml admin.listen, default
# 127.0.0.1:8081); change it with -e if admin.listen uses another port.
ENV PATH="/opt/cutover/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CUTOVER_CONFIG=/etc/cutover/routes.yaml \
    CUTOVER_HEALTHCHECK_URL=http://127.0.0.1:8081/healthz
WORKDIR /var/lib/cutover
# /etc/cutover: routes.yaml (writable by uid 10001 if the admin API's shift/rollback/resume
# should persist there); /var/lib/cutover: the store, state_dir and diff log, as absolute paths
# in routes.yaml (relative ones would land next to routes.yaml, in the config volume).
VOLUME ["/etc/cutover", "/var/lib/cutover"]
# 8080: the data path (listen). 8081: the admin API (admin.listen), which is on loopback unless
# routes.yaml says 0.0.0.0:8081; the HEALTHCHECK runs inside the container and reaches either.
EXPOSE 8080 8081
USER 10001:10001
STOPSIGNAL SIGTERM
# /healthz answers only when the admin listener runs: with the token from the variable named in
# admin.token_env (default CUTOVER_ADMIN_TOKEN). No curl in a slim image: Python's urllib, with
# any HTTP(S)_PROXY of the environment ignored.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.build_opener(r.ProxyHandler({})).open(os.environ['CUTOVER_HEALTHCHECK_URL'], timeout=4)"]
# Exec form: cutover is PID 1 and receives SIGTERM (graceful shutdown) and SIGHUP (reload).
ENTRYPOINT ["cutover"]
CMD ["--config", "/etc/cutover/routes.yaml", "run"]
