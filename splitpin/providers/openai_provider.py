"""GPT (or any OpenAI-compatible server: vLLM, Ollama) through the official `openai` SDK.

Answers are requested with `logprobs`: their geometric-mean token probability is the
answer's confidence (splitpin/providers/prompting.py `logprob_confidence`); a server that sends
none leaves it unknown (None), never 1.0.

Chat Completions rather than the Responses API because that is what OpenAI-compatible
servers implement, so one provider covers OpenAI and a self-hosted model behind
`base_url`. As with Anthropic, `max_retries=0` leaves retries to splitpin/providers/resilience.py
and SDK exceptions are translated without the API key (splitpin/providers/sdk_errors.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import openai
from openai.types import CompletionUsage
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionUserMessageParam,
)

from splitpin.core.redaction import SECRETS
from splitpin.core.tokens import count_tokens
from splitpin.providers.base import (
    BadRequestError,
    ContextOverflowError,
    ModelRequest,
    ModelResult,
    ProviderError,
    TransientError,
    Usage,
)
from splitpin.providers.prompting import (
    conversation,
    logprob_confidence,
    parse_citations,
    system_prompt,
)
from splitpin.providers.resilience import parse_retry_after, safe_url
from splitpin.providers.sdk_errors import transport_error, vendor_call
from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.governance import RoleConfig

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Self-hosted servers ignore the key, but the SDK refuses to start without one.
PLACEHOLDER_KEY = "no-key-required"
CONTEXT_OVERFLOW_CODE = "context_length_exceeded"
# vLLM and other compatible servers say it in words, without OpenAI's code.
CONTEXT_OVERFLOW_MARKERS = ("maximum context length", "context length exceeded")

FirstTokenHook = Callable[[ModelRequest, float], None]


@dataclass(frozen=True)
class _Answer:
    text: str
    model: str
    usage: CompletionUsage | None
    logprobs: tuple[float, ...] = ()
    """The answer tokens' log-probabilities, when the server sent them."""


class OpenAIProvider:
    """One role's model behind the Chat Completions API; `stream=True` times the first token."""

    name = "openai"

    def __init__(
        self,
        role_name: ModelRole,
        role: RoleConfig,
        *,
        api_key: str | None,
        base_url: str | None,
        stream: bool = False,
        on_first_token: FirstTokenHook | None = None,
    ) -> None:
        self.role_name = role_name
        self.role = role
        self.stream = stream
        self.base_url = base_url or DEFAULT_BASE_URL
        self._on_first_token = on_first_token
        SECRETS.register(api_key)  # whatever quotes it later is redacted
        self._client = openai.AsyncOpenAI(
            api_key=api_key or PLACEHOLDER_KEY,
            base_url=self.base_url,
            max_retries=0,
            timeout=role.timeout_s,
        )

    def __repr__(self) -> str:
        return (
            f"OpenAIProvider({self.role_name}: {self.role.pinned_id} at {safe_url(self.base_url)})"
        )

    async def complete(self, request: ModelRequest) -> ModelResult:
        model = self.role.pinned_id
        system = system_prompt(request)
        messages: list[ChatCompletionMessageParam] = [
            ChatCompletionSystemMessageParam(role="system", content=system)
        ]
        for m in conversation(request):
            if m.role == "user":
                messages.append(ChatCompletionUserMessageParam(role="user", content=m.content))
            else:
                messages.append(
                    ChatCompletionAssistantMessageParam(role="assistant", content=m.content)
                )
        max_tokens = min(request.max_tokens, self.role.max_output_tokens)
        started = time.perf_counter()
        answer = await vendor_call(
            self._stream(request, messages, max_tokens)
            if self.stream
            else self._create(messages, max_tokens),
            vendor=self.name,
            model=model,
            api_error=openai.APIError,
            translate=translate_error,
        )
        latency_ms = (time.perf_counter() - started) * 1000
        return ModelResult(
            request_id=request.request_id,
            role=self.role_name,
            text=answer.text,
            citations=parse_citations(answer.text, request.sources),
            usage=self._usage(answer, messages),
            latency_ms=latency_ms,
            model_version=answer.model,
            provider=self.name,
            confidence=logprob_confidence(answer.logprobs),
        )

    async def _create(self, messages: list[ChatCompletionMessageParam], max_tokens: int) -> _Answer:
        completion = await self._client.chat.completions.create(
            model=self.role.pinned_id, messages=messages, max_tokens=max_tokens, logprobs=True
        )
        if not completion.choices:
            msg = f"openai {self.role.pinned_id}: completion without choices"
            raise TransientError(msg, model=self.role.pinned_id)
        text = completion.choices[0].message.content or ""
        logprobs = completion.choices[0].logprobs
        tokens = tuple(t.logprob for t in (logprobs.content or [])) if logprobs else ()
        return _Answer(text, completion.model, completion.usage, tokens)

    async def _stream(
        self,
        request: ModelRequest,
        messages: list[ChatCompletionMessageParam],
        max_tokens: int,
    ) -> _Answer:
        started = time.perf_counter()
        pieces: list[str] = []
        model = self.role.pinned_id
        usage: CompletionUsage | None = None
        stream = await self._client.chat.completions.create(
            model=self.role.pinned_id,
            messages=messages,
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
        )
        logprobs: list[float] = []
        finished = False
        async with stream:
            async for chunk in stream:
                model = chunk.model or model
                usage = chunk.usage or usage
                if not chunk.choices:
                    continue
                finished = finished or chunk.choices[0].finish_reason is not None
                chunk_logprobs = chunk.choices[0].logprobs
                if chunk_logprobs is not None and chunk_logprobs.content:
                    logprobs.extend(t.logprob for t in chunk_logprobs.content)
                piece = chunk.choices[0].delta.content
                if piece:
                    if not pieces:
                        ttft_ms = (time.perf_counter() - started) * 1000
                        log.debug("%s first token after %.1f ms", request.request_id, ttft_ms)
                        if self._on_first_token is not None:
                            self._on_first_token(request, ttft_ms)
                    pieces.append(piece)
        if not finished:
            # The connection closed before a finish_reason: a partial answer.
            msg = f"openai {self.role.pinned_id}: stream ended before the answer was complete"
            raise TransientError(msg, model=self.role.pinned_id)
        return _Answer("".join(pieces), model, usage, tuple(logprobs))

    def _usage(self, answer: _Answer, messages: list[ChatCompletionMessageParam]) -> Usage:
        """The server's counts; if it sent none (some compatible servers), our tokenizer's."""
        if answer.usage is not None:
            return Usage(
                tokens_in=answer.usage.prompt_tokens, tokens_out=answer.usage.completion_tokens
            )
        encoding = self.role.tokenizer
        prompt = "\n".join(str(m.get("content") or "") for m in messages)
        log.debug("openai %s reported no usage; counted with %s", answer.model, encoding)
        return Usage(
            tokens_in=count_tokens(prompt, encoding),
            tokens_out=count_tokens(answer.text, encoding),
        )

    async def aclose(self) -> None:
        await self._client.close()


def translate_error(exc: openai.APIError, model: str) -> ProviderError:
    """SDK exception -> typed error. The message names status, code and request id, no key."""
    transport = transport_error(
        exc,
        vendor="openai",
        model=model,
        timeout=openai.APITimeoutError,
        connection=openai.APIConnectionError,
    )
    if transport is not None:
        return transport
    code = exc.code or ""
    body = exc.body if isinstance(exc.body, dict) else {}
    detail = str(body.get("message") or exc.message)
    overflow = code == CONTEXT_OVERFLOW_CODE or any(
        marker in detail.lower() for marker in CONTEXT_OVERFLOW_MARKERS
    )
    if not isinstance(exc, openai.APIStatusError):
        # An error event inside a 200 stream, or a garbled response: no status to judge by.
        msg = f"openai {model}: {code or type(exc).__name__}: {detail}"
        if overflow:
            return ContextOverflowError(msg, model=model)
        return TransientError(msg, model=model)
    status = exc.status_code
    where = f" (request-id {exc.request_id})" if exc.request_id else ""
    msg = f"openai {model}: {status} {code or exc.type or ''}: {detail}{where}".replace("  ", " ")
    if status in (408, 429) or status >= 500:
        retry_after = parse_retry_after(exc.response.headers)
        return TransientError(msg, model=model, status=status, retry_after_s=retry_after)
    if status == 400 and overflow:
        return ContextOverflowError(msg, model=model, status=status)
    return BadRequestError(msg, model=model, status=status)
