"""The SDK edge: whatever an SDK raises comes out typed for the retry policy, without its
cause (which holds the request, and the request holds the key) and without the key in
its text, for both vendors' exception classes."""

from __future__ import annotations

import asyncio
import secrets
import string

import anthropic
import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpin.core.redaction import MIN_SECRET_CHARS, REDACTED, SECRETS
from splitpin.providers import anthropic_provider, openai_provider
from splitpin.providers.base import ProviderError, TransientError
from splitpin.providers.resilience import AttemptTimeoutError
from splitpin.providers.sdk_errors import vendor_call

KEY_CHARS = string.ascii_letters + string.digits + "-_"
keys = st.text(KEY_CHARS, min_size=MIN_SECRET_CHARS, max_size=48)


async def _raise(exc: BaseException) -> None:
    raise exc


def _call(vendor: str, exc: BaseException) -> ProviderError:
    if vendor == "anthropic":
        call = vendor_call(
            _raise(exc),
            vendor=vendor,
            model="m",
            api_error=anthropic.APIError,
            translate=anthropic_provider.translate_error,
        )
    else:
        call = vendor_call(
            _raise(exc),
            vendor=vendor,
            model="m",
            api_error=openai.APIError,
            translate=openai_provider.translate_error,
        )
    with pytest.raises(ProviderError) as caught:
        asyncio.run(call)
    return caught.value


def _request(key: str) -> httpx2.Request:
    return httpx2.Request("POST", "https://api.example/v1", headers={"x-api-key": key})


@settings(max_examples=40, deadline=None)
@given(key=keys, vendor=st.sampled_from(["anthropic", "openai"]))
def test_a_stream_broken_mid_read_is_transient_and_never_quotes_the_key(
    key: str, vendor: str
) -> None:
    SECRETS.register(key)
    try:
        error = _call(vendor, httpx2.ReadError(f"peer reset while sending {key}"))
    finally:
        SECRETS.clear()
    assert isinstance(error, TransientError)
    assert key not in str(error) and REDACTED in str(error)
    assert error.__cause__ is None and error.__suppress_context__


@pytest.mark.parametrize(
    ("vendor", "timeout", "connection"),
    [
        ("anthropic", anthropic.APITimeoutError, anthropic.APIConnectionError),
        ("openai", openai.APITimeoutError, openai.APIConnectionError),
    ],
)
def test_timeouts_and_refused_connections_are_retryable_and_carry_no_request(
    vendor: str, timeout: type[Exception], connection: type[Exception]
) -> None:
    key = secrets.token_urlsafe(24)
    SECRETS.register(key)
    try:
        timed_out = _call(vendor, timeout(request=_request(key)))  # type: ignore[call-arg]
        refused = connection(request=_request(key))  # type: ignore[call-arg]
        refused.__cause__ = OSError(f"refused, header {key}")
        failed = _call(vendor, refused)
    finally:
        SECRETS.clear()
    assert isinstance(timed_out, AttemptTimeoutError)
    assert type(failed) is TransientError
    assert f"{vendor} m: connection error" in str(failed)
    for error in (timed_out, failed):
        assert key not in str(error) and error.__cause__ is None
