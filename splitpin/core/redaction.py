"""Secrets never leave memory: a registry of secret values, and redaction wherever text leaves.

API keys are handed to the SDK clients only, but text *about* a failed call can quote them:
the HTTP library refuses a key that ends in a newline with "Illegal header value
b'Bearer sk-...\\n'", and that text used to be copied into a provider error, a WARNING log
line and a `replies.validation-failures` record. So:

* every place a key is read registers it here (`SECRETS.register`), with the forms it
  takes in text: as is, stripped, repr/bytes-repr escaped, JSON escaped;
* provider errors are redacted where they are translated (splitpin/providers/), log records by
  `RedactingFilter` on the root handlers (installed by the CLI), and every value written
  to Kafka by `redact_bytes` in the sink, as a last line;
* `check_secret_env` refuses at start-up a key with whitespace or control characters,
  naming the variable and never the value.
"""

from __future__ import annotations

import json
import logging
import threading
import unicodedata
from collections.abc import Iterable, Mapping
from typing import TypeVar

from splitpin.errors import ConfigError

REDACTED = "[REDACTED]"

SECRET_VARIABLES: tuple[str, ...] = (
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "SPLITPIN_KAFKA__SASL_PASSWORD",
)
"""Environment variables holding secrets: the provider keys read by splitpin/providers/registry.py
and the Kafka SASL password (Settings.kafka, also registered by `security_config`)."""

_extra_variables: list[str] = []


def register_secret_variable(name: str) -> None:
    """Add a variable holding a secret (a role's `api_key_env`) to the start-up check."""
    if name not in SECRET_VARIABLES and name not in _extra_variables:
        _extra_variables.append(name)


def secret_variables() -> tuple[str, ...]:
    """Every variable `check_secret_env` checks by default: the vendors' and the registered."""
    return (*SECRET_VARIABLES, *_extra_variables)


MIN_SECRET_CHARS = 8
"""Shorter forms are not redacted: they would blank ordinary words in every log line, and
no provider issues keys that short (test keys such as `test-key` are exactly 8)."""


def _bad_characters(value: str) -> bool:
    """Whitespace or any Unicode control/format character (newline, CR, NUL, zero-width)."""
    return any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in value)


def _stripped(value: str) -> str:
    start, end = 0, len(value)
    while start < end and _bad_characters(value[start]):
        start += 1
    while end > start and _bad_characters(value[end - 1]):
        end -= 1
    return value[start:end]


def variants(value: str) -> set[str]:
    """The forms a secret takes in text: raw, stripped, and as repr, bytes repr or JSON
    escape it (b'...\\n', "...\\n"), each also for the stripped core."""
    forms: set[str] = set()
    for form in {value, _stripped(value)}:
        forms |= {
            form,
            repr(form)[1:-1],
            repr(form.encode("utf-8"))[2:-1],
            json.dumps(form)[1:-1],
            json.dumps(form, ensure_ascii=False)[1:-1],
        }
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


class SecretRegistry:
    """Secret values known to this process; `redact` replaces every form of each.

    Registration is rare (start-up) and locked; redaction reads an immutable snapshot, so
    the hot path (every log record, every produced value) takes no lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._text: tuple[str, ...] = ()
        self._bytes: tuple[bytes, ...] = ()

    def __bool__(self) -> bool:
        return bool(self._text)

    def __repr__(self) -> str:
        return f"SecretRegistry({len(self._text)} forms)"

    def register(self, value: str | None) -> None:
        """Remember `value` (and its forms); None or empty is ignored."""
        if not value:
            return
        with self._lock:
            forms = set(self._text) | variants(value)
            # Longest first, so a whole form ("key\n") goes before its core ("key").
            self._text = tuple(sorted(forms, key=lambda f: (-len(f), f)))
            self._bytes = tuple(
                sorted({f.encode("utf-8") for f in forms}, key=lambda b: (-len(b), b))
            )

    def clear(self) -> None:
        """Forget every secret (tests only)."""
        with self._lock:
            self._text, self._bytes = (), ()

    def redact(self, text: str) -> str:
        for form in self._text:
            if form in text:
                text = text.replace(form, REDACTED)
        return text

    def redact_bytes(self, data: bytes) -> bytes:
        for form in self._bytes:
            if form in data:
                data = data.replace(form, REDACTED.encode())
        return data


SECRETS = SecretRegistry()
"""The process-wide registry: keys are registered where they are read."""


def redact(text: str) -> str:
    """`text` with every registered secret replaced by [REDACTED]."""
    return SECRETS.redact(text)


def redact_bytes(data: bytes) -> bytes:
    """A record value with every registered secret replaced (UTF-8 and escaped forms)."""
    return SECRETS.redact_bytes(data)


E = TypeVar("E", bound=BaseException)


def redact_exception(exc: E) -> E:
    """`exc` with its string arguments redacted in place (its message is what gets copied)."""
    exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
    return exc


def check_secret_env(env: Mapping[str, str], names: Iterable[str] | None = None) -> None:
    """Register every configured secret; refuse one with whitespace or control characters.

    `names` defaults to `secret_variables()`: the vendors' variables plus every role's
    `api_key_env` registered so far (splitpin/providers/registry.py registers them).

    A key read from a mounted secret file often ends in a newline: the HTTP library then
    rejects the header and quotes the key in its error. Refusing at start-up is clearer
    than a storm of failed calls. The error names the variable, never the value.
    """
    bad: list[str] = []
    for name in secret_variables() if names is None else names:
        value = env.get(name)
        if not value:
            continue
        SECRETS.register(value)
        if _bad_characters(value):
            bad.append(name)
    if bad:
        msg = (
            f"{', '.join(bad)}: contains whitespace or control characters (a trailing newline "
            "from a secret file?); strip the value and start again"
        )
        raise ConfigError(msg)


class RedactingFilter(logging.Filter):
    """Removes registered secrets from a record's message, arguments, exception and stack.

    Installed on handlers (not loggers), because a handler's filters also see records
    propagated from child loggers. Never drops a record.
    """

    def __init__(self, secrets: SecretRegistry = SECRETS) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # bad format args: the handler would print them raw; ours won't
            message = f"{record.msg!s} {record.args!r}"
        redacted = self._secrets.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._secrets.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._secrets.redact(record.stack_info)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add a RedactingFilter to each of `logger`'s handlers (default: root), once."""
    target = logger if logger is not None else logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
