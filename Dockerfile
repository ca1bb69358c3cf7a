# The splitpin image: the CLI and the Bytewax dataflow (`splitpin run`), used by docker-compose.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install from a scratch copy of the sources, then drop it: only the installed package runs.
WORKDIR /src
COPY pyproject.toml ./
COPY splitpin ./splitpin
COPY flows ./flows
COPY operators ./operators
COPY schemas ./schemas
RUN pip install . && rm -rf /src

# The governance file is configuration, not code: it lives beside the app, not in the wheel.
WORKDIR /app
COPY config ./config
ENV SPLITPIN_GOVERNANCE_PATH=/app/config/governance.yaml

# Unprivileged user; /recovery is created here so a named volume mounted on it is writable.
RUN useradd --system --uid 10001 --home-dir /app --no-create-home splitpin \
    && mkdir -p /recovery \
    && chown splitpin /recovery
USER splitpin

# 2101: Bytewax cluster communication; 9464: Prometheus /metrics.
EXPOSE 2101 9464
CMD ["splitpin", "--help"]
