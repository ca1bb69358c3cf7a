"""Secrets never leave memory: every form of a registered key is removed from text, bytes
and log records, and a malformed key stops start-up naming the variable, never the value."""

from __future__ import annotations

import io
import json
import logging
import secrets
import string

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from splitpin.core.redaction import (
    MIN_SECRET_CHARS,
    REDACTED,
    SECRET_VARIABLES,
    SECRETS,
    RedactingFilter,
    SecretRegistry,
    check_secret_env,
    install_log_redaction,
    redact_exception,
)
from splitpin.errors import ConfigError

KEY_CHARS = string.ascii_letters + string.digits + "-_"
keys = st.text(KEY_CHARS, min_size=MIN_SECRET_CHARS, max_size=64)
# What a mounted secret file or a careless paste leaves around a key.
junk = st.text(" \t\r\n\x00\x0b\x0c\u200b\u00a0", max_size=3)
context = st.text(max_size=40)


def _renderings(text: str) -> list[str]:
    """Ways an error text reaches a log line or a record: as is, repr'd, as bytes repr'd,
    JSON-encoded (standard and orjson), and JSON inside JSON."""
    return [
        text,
        repr(text),
        repr(text.encode("utf-8")),
        json.dumps(text),
        json.dumps({"detail": text}, ensure_ascii=False),
        orjson.dumps({"detail": text}).decode(),
        json.dumps(json.dumps({"detail": text})),
    ]


@settings(max_examples=500)
@given(core=keys, before=junk, after=junk, prefix=context, suffix=context)
def test_no_form_of_a_registered_key_survives_redaction(
    core: str, before: str, after: str, prefix: str, suffix: str
) -> None:
    assume(core not in REDACTED and core not in prefix and core not in suffix)
    registry = SecretRegistry()
    registry.register(before + core + after)  # registered as read, junk and all
    for text in _renderings(f"{prefix}Bearer {before}{core}{after}{suffix}"):
        assert core in text
        assert core not in registry.redact(text)
        assert core.encode() not in registry.redact_bytes(text.encode("utf-8"))


@given(core=keys, text=context)
def test_redaction_leaves_text_without_secrets_alone(core: str, text: str) -> None:
    assume(core not in text)
    registry = SecretRegistry()
    registry.register(core)
    assert registry.redact(text) == text
    assert registry.redact_bytes(text.encode()) == text.encode()


def test_the_header_error_an_http_library_raises_is_redacted() -> None:
    key = f"sk-ant-api03-{secrets.token_hex(8)}\n"
    registry = SecretRegistry()
    registry.register(key)
    quoted = f"connection error: Illegal header value {('Bearer ' + key).encode()!r}"
    assert registry.redact(quoted) == f"connection error: Illegal header value b'Bearer {REDACTED}'"


def test_short_values_are_not_redacted_everywhere() -> None:
    registry = SecretRegistry()
    registry.register("abc")
    registry.register("")
    registry.register(None)
    assert not registry
    assert registry.redact("abc abc") == "abc abc"


def _logger_to(stream: io.StringIO) -> logging.Logger:
    logger = logging.getLogger(f"test.redaction.{secrets.token_hex(4)}")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    install_log_redaction(logger)
    install_log_redaction(logger)  # idempotent: one filter per handler
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    return logger


def test_log_filter_redacts_message_args_and_exception() -> None:
    key = f"sk-proj-{secrets.token_hex(12)}\r\n"
    core = key.strip()
    SECRETS.register(key)
    stream = io.StringIO()
    logger = _logger_to(stream)
    logger.warning("calling with %s and %r", key, key)
    logger.warning(f"inline {key!r} in the message")
    try:
        raise ValueError(f"Illegal header value {('Bearer ' + key).encode()!r}")
    except ValueError:
        logger.exception("call failed")
    logger.warning("bad format %d", key)  # a broken call still goes out, redacted
    out = stream.getvalue()
    assert core not in out
    assert out.count(REDACTED) >= 5
    assert "call failed" in out and "ValueError: Illegal header value" in out


def test_provider_error_messages_are_redacted_in_place() -> None:
    key = f"sk-{secrets.token_hex(10)}\n"
    SECRETS.register(key)
    error = redact_exception(RuntimeError(f"connection error: {key!r}", 3))
    assert key.strip() not in str(error) and error.args[1] == 3


def test_a_key_with_whitespace_or_control_characters_stops_start_up_by_name() -> None:
    newline = f"sk-ant-{secrets.token_hex(8)}\n"
    zero_width = f"sk-proj-{secrets.token_hex(8)}\u200b"
    with pytest.raises(ConfigError) as caught:
        check_secret_env({"ANTHROPIC_API_KEY": newline, "OPENAI_API_KEY": zero_width})
    message = str(caught.value)
    assert "ANTHROPIC_API_KEY" in message and "OPENAI_API_KEY" in message
    assert newline.strip() not in message and zero_width.strip("\u200b") not in message
    # Registered even though refused: nothing that quotes it later can leak it.
    assert newline.strip() not in SECRETS.redact(f"x {newline!r}")


def test_clean_keys_pass_and_are_registered() -> None:
    key = f"sk-ant-{secrets.token_hex(8)}"
    check_secret_env({"ANTHROPIC_API_KEY": key, "UNRELATED": "a b\n"})
    assert SECRETS.redact(key) == REDACTED


def test_every_provider_key_variable_is_a_secret() -> None:
    from splitpin.providers.registry import ANTHROPIC_KEY, OPENAI_KEY

    assert {ANTHROPIC_KEY, OPENAI_KEY} <= set(SECRET_VARIABLES)
