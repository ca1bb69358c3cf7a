"""One interface for every model backend: a request in, a result or a typed error out.

Providers are async (`complete` is a coroutine) because the model operator runs them on
an event loop off the Bytewax worker thread. Everything crossing this boundary is a frozen
pydantic model: requests are pickled into snapshots and re-issued on resume, results
become replies and cost records.

Errors are typed so that policy lives in one place (splitpin/providers/resilience.py):
`TransientError` may be retried within the role's budget, `ContextOverflowError` and
`BadRequestError` never are, `CircuitOpenError` moves on along the fallback chain.
"""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.replies import Citation

CONFIRM = "CONFIRM"
"""A verifier that finds the first draft answer correct replies exactly this, so a
confirmation costs a few output tokens instead of a rewritten answer."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceDoc(_Frozen):
    """A knowledge-base article retrieved for this request and attached to the prompt."""

    doc_id: str = Field(description="e.g. InternalDoc-12")
    title: str
    text: str
    source: str = Field(description="Where it came from, e.g. kb:banking77/InternalDoc-12")
    score: float = Field(description="Retrieval similarity, higher is closer.")
    compliance: bool = False


class Message(_Frozen):
    """A conversation turn. `system` is a support-platform event, carried as its own role
    (never as a user turn with a prefix a customer could type); the prompt builder renders
    it under a header customer text cannot produce (splitpin/providers/prompting.py)."""

    role: Literal["user", "assistant", "system"]
    content: str


class Candidate(_Frozen):
    """An earlier answer to the same request (the fast pass), for the verifier to re-rank."""

    text: str
    doc_ids: tuple[str, ...]
    confidence: float | None = Field(description="None: the model gave no signal.")
    model_version: str


class ModelRequest(_Frozen):
    request_id: str = Field(description="event_id + call ordinal: stable across replays.")
    role: ModelRole
    tenant_id: str
    messages: tuple[Message, ...] = Field(description="Oldest first; the last is the question.")
    summary: str = Field(default="", description="Compacted older turns, if any.")
    max_tokens: int = Field(gt=0)
    sources: tuple[SourceDoc, ...] = ()
    candidates: tuple[Candidate, ...] = ()


class Usage(_Frozen):
    tokens_in: int = Field(ge=0)
    tokens_out: int = Field(ge=0)


class ModelResult(_Frozen):
    request_id: str
    role: ModelRole = Field(description="The role that answered (a fallback may differ).")
    text: str
    citations: tuple[Citation, ...] = ()
    usage: Usage
    latency_ms: float = Field(ge=0, description="Wall time of the call (emulated if flagged).")
    model_version: str = Field(description="The exact version the provider reports.")
    provider: str
    confidence: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="A measured signal (the local fleet's score margin, token logprobs where "
        "a provider offers them); None when the provider gives none: unknown, not certain.",
    )
    emulated: bool = False
    attempts: int = Field(default=1, ge=1, description="Calls made, retries included.")


ErrorKind = Literal["transient", "context_overflow", "bad_request", "circuit_open"]


class ProviderError(Exception):
    """A call that produced no result; `kind` decides retry and fallback."""

    kind: ErrorKind = "bad_request"
    retryable: bool = False

    def __init__(self, message: str, *, model: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.model = model
        self.status = status


class TransientError(ProviderError):
    """429, 529, 5xx, timeouts, connection errors: worth another attempt later."""

    kind: ErrorKind = "transient"
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        model: str = "",
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, model=model, status=status)
        self.retry_after_s = retry_after_s


class ContextOverflowError(ProviderError):
    """The provider says the prompt is too long: deterministic, never retried."""

    kind: ErrorKind = "context_overflow"


class BadRequestError(ProviderError):
    """Any other 4xx (auth, validation): deterministic, never retried."""

    kind: ErrorKind = "bad_request"


class CircuitOpenError(ProviderError):
    """The model's breaker is open: not called at all; the chain moves on."""

    kind: ErrorKind = "circuit_open"


class Provider(Protocol):
    """A model backend. `name` labels metrics and cost records (local, anthropic, openai)."""

    name: str

    async def complete(self, request: ModelRequest) -> ModelResult: ...

    async def aclose(self) -> None: ...
