"""Claude through the official `anthropic` SDK (Messages API), errors typed for our policy.

The client is built with `max_retries=0`: retries, backoff and the breaker belong to
splitpin/providers/resilience.py, which must see every attempt. SDK exceptions are translated
into the typed errors of splitpin/providers/base.py and stripped of the API key
(splitpin/providers/sdk_errors.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anthropic
from anthropic.types import AssistantMessageParam, MessageParam, UserMessageParam
from anthropic.types import Message as AnthropicMessage

from splitpin.core.redaction import SECRETS
from splitpin.providers.base import (
    BadRequestError,
    ContextOverflowError,
    ModelRequest,
    ModelResult,
    ProviderError,
    TransientError,
    Usage,
)
from splitpin.providers.prompting import conversation, parse_citations, system_prompt
from splitpin.providers.resilience import parse_retry_after, safe_url
from splitpin.providers.sdk_errors import transport_error, vendor_call
from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.governance import RoleConfig

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.anthropic.com"
# error.type values that mean "try again later", also when they arrive inside a 200 stream.
TRANSIENT_TYPES = frozenset({"rate_limit_error", "overloaded_error", "api_error", "timeout_error"})
CONTEXT_OVERFLOW_MARKER = "prompt is too long"

FirstTokenHook = Callable[[ModelRequest, float], None]


class AnthropicProvider:
    """One role's Claude model. `stream=True` uses the streaming API and times the first token."""

    name = "anthropic"

    def __init__(
        self,
        role_name: ModelRole,
        role: RoleConfig,
        *,
        api_key: str,
        base_url: str | None,
        stream: bool = False,
        on_first_token: FirstTokenHook | None = None,
    ) -> None:
        self.role_name = role_name
        self.role = role
        self.stream = stream
        self.base_url = base_url or DEFAULT_BASE_URL
        self._on_first_token = on_first_token
        # An explicit base_url keeps the SDK from reading ANTHROPIC_BASE_URL from os.environ:
        # configuration comes from the env mapping the registry was given.
        SECRETS.register(api_key)  # whatever quotes it later is redacted
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=self.base_url,
            max_retries=0,
            timeout=role.timeout_s,
        )

    def __repr__(self) -> str:
        where = safe_url(self.base_url)
        return f"AnthropicProvider({self.role_name}: {self.role.pinned_id} at {where})"

    async def complete(self, request: ModelRequest) -> ModelResult:
        model = self.role.pinned_id
        started = time.perf_counter()
        message = await vendor_call(
            self._stream(request) if self.stream else self._create(request),
            vendor=self.name,
            model=model,
            api_error=anthropic.APIError,
            translate=translate_error,
        )
        latency_ms = (time.perf_counter() - started) * 1000
        text = "".join(block.text for block in message.content if block.type == "text")
        return ModelResult(
            request_id=request.request_id,
            role=self.role_name,
            text=text,
            citations=parse_citations(text, request.sources),
            usage=Usage(
                tokens_in=message.usage.input_tokens, tokens_out=message.usage.output_tokens
            ),
            latency_ms=latency_ms,
            model_version=str(message.model),
            provider=self.name,
        )

    def _params(self, request: ModelRequest) -> tuple[str, list[MessageParam], int]:
        messages: list[MessageParam] = [
            UserMessageParam(role="user", content=m.content)
            if m.role == "user"
            else AssistantMessageParam(role="assistant", content=m.content)
            for m in conversation(request)
        ]
        max_tokens = min(request.max_tokens, self.role.max_output_tokens)
        return system_prompt(request), messages, max_tokens

    async def _create(self, request: ModelRequest) -> AnthropicMessage:
        system, messages, max_tokens = self._params(request)
        return await self._client.messages.create(
            model=self.role.pinned_id, max_tokens=max_tokens, system=system, messages=messages
        )

    async def _stream(self, request: ModelRequest) -> AnthropicMessage:
        system, messages, max_tokens = self._params(request)
        started = time.perf_counter()
        first_token = True
        async with self._client.messages.stream(
            model=self.role.pinned_id, max_tokens=max_tokens, system=system, messages=messages
        ) as stream:
            async for event in stream:
                if first_token and event.type == "content_block_delta":
                    first_token = False
                    ttft_ms = (time.perf_counter() - started) * 1000
                    log.debug("%s first token after %.1f ms", request.request_id, ttft_ms)
                    if self._on_first_token is not None:
                        self._on_first_token(request, ttft_ms)
            message = await stream.get_final_message()
        if message.stop_reason is None:
            # The connection closed before message_delta: the SDK hands back a partial answer.
            msg = f"anthropic {self.role.pinned_id}: stream ended before the message was complete"
            raise TransientError(msg, model=self.role.pinned_id)
        return message

    async def aclose(self) -> None:
        await self._client.close()


def translate_error(exc: anthropic.APIError, model: str) -> ProviderError:
    """SDK exception -> typed error. The message names status, type and request id, no key."""
    transport = transport_error(
        exc,
        vendor="anthropic",
        model=model,
        timeout=anthropic.APITimeoutError,
        connection=anthropic.APIConnectionError,
    )
    if transport is not None:
        return transport
    if not isinstance(exc, anthropic.APIStatusError):
        # e.g. APIResponseValidationError: a garbled answer, worth one more try.
        return TransientError(
            f"anthropic {model}: {type(exc).__name__}: {exc.message}", model=model
        )
    status = exc.status_code
    kind = exc.type or ""
    detail = exc.api_message or exc.message
    where = f" (request-id {exc.request_id})" if exc.request_id else ""
    msg = f"anthropic {model}: {status} {kind}: {detail}{where}"
    # A stream that fails after its 200 raises APIStatusError with status 200: judge by type.
    if status in (408, 429) or status >= 500 or kind in TRANSIENT_TYPES:
        retry_after = parse_retry_after(exc.response.headers)
        return TransientError(msg, model=model, status=status, retry_after_s=retry_after)
    if status == 400 and CONTEXT_OVERFLOW_MARKER in detail.lower():
        return ContextOverflowError(msg, model=model, status=status)
    return BadRequestError(msg, model=model, status=status)
