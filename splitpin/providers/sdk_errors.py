"""The vendor SDKs' edge: every exception typed for the retry policy and stripped of keys.

The anthropic and openai SDKs come from one generator, so a timeout, a refused
connection and a stream cut mid-read look alike in both; only their status errors need
each vendor's own reading (the providers' `translate_error`). Everything is re-raised
without its cause, because an SDK exception carries the HTTP request, and the request
carries the API key. Redaction happens here, where the text is made: it is logged and
copied into validation-failure records.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx2

from splitpin.core.redaction import redact_exception
from splitpin.providers.base import ProviderError, TransientError
from splitpin.providers.resilience import AttemptTimeoutError

T = TypeVar("T")
E = TypeVar("E", bound=Exception)


async def vendor_call(
    call: Awaitable[T],
    *,
    vendor: str,
    model: str,
    api_error: type[E],
    translate: Callable[[E, str], ProviderError],
) -> T:
    """Await one SDK call; its errors come out typed (`translate`) and redacted."""
    try:
        return await call
    except api_error as exc:
        raise redact_exception(translate(exc, model)) from None
    except httpx2.RequestError as exc:
        # Raised unwrapped by the SDKs while reading a stream (dropped connection, read
        # timeout); its request carries the key, so only its class and text go on.
        msg = f"{vendor} {model}: stream broke: {type(exc).__name__}: {exc}"
        raise redact_exception(TransientError(msg, model=model)) from None


def transport_error(
    exc: Exception,
    *,
    vendor: str,
    model: str,
    timeout: type[Exception],
    connection: type[Exception],
) -> ProviderError | None:
    """A timeout or a failed connection (both worth another try), else None. The SDKs'
    timeout class derives from their connection class, so it is asked first."""
    if isinstance(exc, timeout):
        return AttemptTimeoutError(f"{vendor} {model}: request timed out", model=model)
    if isinstance(exc, connection):
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        return TransientError(f"{vendor} {model}: connection error{cause}", model=model)
    return None
