# The splitpin image: exactly what the wheel holds, run as an unprivileged user.
# Stage 1 builds the wheel from the sources (the same `pip wheel` that
# tests/unit/test_wheel_contents.py checks); stage 2 installs only that wheel.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY config ./config
COPY data/LICENSES.md ./data/LICENSES.md
COPY flows ./flows
COPY operators ./operators
COPY schemas ./schemas
COPY splitpin ./splitpin
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/app \
    XDG_CACHE_HOME=/app/.cache

COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels

# Unprivileged user with a writable cache (tokenizer encodings); /recovery is created here
# so a named volume mounted on it is writable.
RUN useradd --system --uid 10001 --home-dir /app --create-home splitpin \
    && mkdir -p /recovery \
    && chown splitpin /recovery
USER splitpin
WORKDIR /app

# Seed the tokenizer encodings at build time (checked against tiktoken's sha256) and check
# that the packaged governance config validates: a broken image fails here, not at run time.
RUN python -c "from splitpin.core import tokens; [tokens.encoding(n) for n in tokens.EXPECTED_SHA256]" \
    && splitpin --version \
    && splitpin config validate

# The packaged governance is the default; mount your own and set SPLITPIN_GOVERNANCE_PATH.
# 2101: Bytewax cluster communication; 9464: Prometheus /metrics.
EXPOSE 2101 9464
CMD ["splitpin", "--help"]
