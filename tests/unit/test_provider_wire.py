"""The real anthropic and openai SDK clients against a fake of their wire protocols.

No model API is reachable here, so tests/model_api_server.py plays the server: success,
SSE streaming, 429 storms, 529/5xx, context-length errors and slow answers. Counting the
requests it received is how these tests prove there is no retry storm. Backoff sleeps
and the breaker clock are fakes, so nothing here waits for real except the one timeout.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpin.core.redaction import (
    REDACTED,
    RedactingFilter,
    check_secret_env,
    redact,
    secret_variables,
)
from splitpin.errors import ConfigError
from splitpin.providers.anthropic_provider import AnthropicProvider
from splitpin.providers.base import (
    BadRequestError,
    CircuitOpenError,
    ContextOverflowError,
    Message,
    ModelRequest,
    ModelResult,
    Provider,
    SourceDoc,
    TransientError,
    Usage,
)
from splitpin.providers.openai_provider import OpenAIProvider
from splitpin.providers.registry import ProviderRegistry, endpoint_settings, key_variables
from splitpin.providers.resilience import CircuitBreaker, ResilientProvider
from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.governance import GovernanceConfig, ResilienceConfig, RoleConfig
from tests.model_api_server import (
    ANTHROPIC_PATH,
    OPENAI_PATH,
    ModelApiServer,
    context_length,
    midstream_error,
    overloaded,
    rate_limited,
    server_error,
    slow,
    stream,
    succeed,
    truncated_stream,
)
from tests.time_fakes import FakeClock, FakeSleep

T = TypeVar("T")
P = TypeVar("P", bound=Provider)

GOVERNANCE_FILE = Path(__file__).resolve().parents[2] / "config" / "governance.yaml"
ANTHROPIC_KEY = "sk-ant-api03-SECRET-never-print-me"
OPENAI_KEY = "sk-proj-SECRET-never-print-me"
HAIKU = "claude-3-5-haiku-20241022"
GPT = "gpt-4.1-2025-04-14"
RESILIENCE = ResilienceConfig(
    backoff_base_s=0.25, backoff_max_s=8.0, breaker_failures=3, breaker_reset_s=30.0
)
FAST = RoleConfig(
    provider="anthropic",
    model="claude-3-5-haiku",
    version=HAIKU,
    context_window=200_000,
    max_output_tokens=1024,
    price_in_per_mtok=0.8,
    price_out_per_mtok=4.0,
    timeout_s=5.0,
    retry_budget=2,
)
LONG = RoleConfig(
    provider="openai",
    model="gpt-4.1",
    version=GPT,
    context_window=1_047_576,
    max_output_tokens=2048,
    price_in_per_mtok=2.0,
    price_out_per_mtok=8.0,
    tokenizer="o200k_base",
    timeout_s=5.0,
    retry_budget=2,
)
CARD = SourceDoc(
    doc_id="InternalDoc-3",
    title="Card delivery",
    text="Cards arrive within 5 working days.",
    source="kb:banking77/InternalDoc-3",
    score=0.8,
)
ANSWER = "Your card arrives within 5 working days [InternalDoc-3].\nReferences: 1) InternalDoc-3"


def _request(role: ModelRole = "fast", max_tokens: int = 100_000) -> ModelRequest:
    return ModelRequest(
        request_id="e-1:0",
        role=role,
        tenant_id="acme-bank",
        messages=(Message(role="user", content="Where is my card?"),),
        max_tokens=max_tokens,
        sources=(CARD,),
    )


class LocalEcho:
    """Stands in for the local fleet, which another module provides."""

    name = "local"

    def __init__(self, role_name: ModelRole, role: RoleConfig) -> None:
        self.role_name = role_name
        self.role = role
        self.closed = False

    async def complete(self, request: ModelRequest) -> ModelResult:
        return ModelResult(
            request_id=request.request_id,
            role=self.role_name,
            text="local answer",
            usage=Usage(tokens_in=1, tokens_out=1),
            latency_ms=0.0,
            model_version=self.role.pinned_id,
            provider=self.name,
        )

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
def api() -> Iterator[ModelApiServer]:
    with ModelApiServer() as server:
        yield server


def _run(make: Callable[[], P], body: Callable[[P], Awaitable[T]]) -> T:
    """Build the provider inside the loop that uses it, and always close it."""

    async def main() -> T:
        provider = make()
        try:
            return await body(provider)
        finally:
            await provider.aclose()

    return asyncio.run(main())


def _complete(request: ModelRequest) -> Callable[[Provider], Awaitable[ModelResult]]:
    async def call(provider: Provider) -> ModelResult:
        return await provider.complete(request)

    return call


def _anthropic(api: ModelApiServer, *, stream: bool = False) -> AnthropicProvider:
    return AnthropicProvider(
        "fast", FAST, api_key=ANTHROPIC_KEY, base_url=api.anthropic_url, stream=stream
    )


def _openai(api: ModelApiServer, *, stream: bool = False) -> OpenAIProvider:
    return OpenAIProvider(
        "long_context", LONG, api_key=OPENAI_KEY, base_url=api.openai_url, stream=stream
    )


def _resilient(
    inner: Provider, role: RoleConfig, sleep: FakeSleep, clock: FakeClock | None = None
) -> ResilientProvider:
    breaker = CircuitBreaker.from_config(role.pinned_id, RESILIENCE, clock=clock or FakeClock())
    return ResilientProvider(
        inner, "fast", role, RESILIENCE, breaker, sleep=sleep, rng=random.Random(3)
    )


# -- success -----------------------------------------------------------------------------


def test_anthropic_success(api: ModelApiServer) -> None:
    api.script(succeed(ANSWER, model=f"{HAIKU}-served", tokens_in=321, tokens_out=45))
    result = _run(lambda: _anthropic(api), _complete(_request()))
    assert (result.usage.tokens_in, result.usage.tokens_out) == (321, 45)
    assert result.model_version == f"{HAIKU}-served"
    assert (result.provider, result.role, result.text) == ("anthropic", "fast", ANSWER)
    assert [(c.doc_id, c.source) for c in result.citations] == [
        ("InternalDoc-3", "kb:banking77/InternalDoc-3")
    ]
    [sent] = api.requests
    assert sent.path == ANTHROPIC_PATH
    assert sent.body["model"] == HAIKU
    assert sent.body["max_tokens"] == FAST.max_output_tokens  # clamped to the role's limit
    assert "[InternalDoc-3] Card delivery:" in sent.body["system"]
    assert sent.body["messages"] == [{"role": "user", "content": "Where is my card?"}]
    assert sent.headers["authorization"] == "<redacted>"  # a key was sent ...
    assert sent.headers["x-stainless-retry-count"] == "0"


def test_anthropic_streaming_success(api: ModelApiServer) -> None:
    api.script(stream(ANSWER, tokens_in=50, tokens_out=20))
    first_tokens: list[float] = []

    def make() -> AnthropicProvider:
        return AnthropicProvider(
            "fast",
            FAST,
            api_key=ANTHROPIC_KEY,
            base_url=api.anthropic_url,
            stream=True,
            on_first_token=lambda _request, ms: first_tokens.append(ms),
        )

    result = _run(make, _complete(_request()))
    assert result.text == ANSWER
    assert (result.usage.tokens_in, result.usage.tokens_out) == (50, 20)
    assert result.model_version == HAIKU
    assert [c.doc_id for c in result.citations] == ["InternalDoc-3"]
    assert len(first_tokens) == 1
    assert api.requests[0].body["stream"] is True


def test_openai_success(api: ModelApiServer) -> None:
    api.script(succeed(ANSWER, model=f"{GPT}-served", tokens_in=400, tokens_out=60))
    result = _run(lambda: _openai(api), _complete(_request("long_context")))
    assert (result.usage.tokens_in, result.usage.tokens_out) == (400, 60)
    assert (result.model_version, result.provider) == (f"{GPT}-served", "openai")
    assert [c.doc_id for c in result.citations] == ["InternalDoc-3"]
    [sent] = api.requests
    assert sent.path == OPENAI_PATH
    assert (sent.body["model"], sent.body["max_tokens"]) == (GPT, LONG.max_output_tokens)
    assert sent.body["messages"][0]["role"] == "system"
    assert sent.body["messages"][1:] == [{"role": "user", "content": "Where is my card?"}]


def test_openai_streaming_success_with_usage(api: ModelApiServer) -> None:
    api.script(stream(ANSWER, tokens_in=70, tokens_out=25))
    result = _run(lambda: _openai(api, stream=True), _complete(_request("long_context")))
    assert result.text == ANSWER
    assert (result.usage.tokens_in, result.usage.tokens_out) == (70, 25)
    assert result.model_version == GPT
    assert api.requests[0].body["stream_options"] == {"include_usage": True}


def test_openai_compatible_server_without_a_key(api: ModelApiServer) -> None:
    """vLLM/Ollama: base_url only; the SDK still needs some key, a placeholder is sent."""
    api.script(succeed("ok"))
    result = _run(
        lambda: OpenAIProvider("long_context", LONG, api_key=None, base_url=api.openai_url),
        _complete(_request("long_context")),
    )
    assert result.text == "ok"


@pytest.mark.parametrize("streaming", [False, True])
def test_openai_compatible_server_without_usage_is_counted_locally(
    api: ModelApiServer, streaming: bool
) -> None:
    """Some compatible servers report no usage; cost accounting then uses the role's tokenizer."""
    api.script(succeed("Cards arrive within five working days.", omit_usage=True))
    result = _run(lambda: _openai(api, stream=streaming), _complete(_request("long_context")))
    assert result.usage.tokens_in > 20  # the system prompt alone is longer than that
    assert 5 <= result.usage.tokens_out <= 12


# -- errors, retries and the breaker ------------------------------------------------------


def test_rate_limit_storm_makes_exactly_budget_plus_one_requests(api: ModelApiServer) -> None:
    api.rate_limit_storm(10, retry_after_s=2)
    sleep = FakeSleep()
    with pytest.raises(TransientError) as caught:
        _run(lambda: _resilient(_anthropic(api), FAST, sleep), _complete(_request()))
    assert api.count() == FAST.retry_budget + 1
    assert caught.value.status == 429
    assert caught.value.retry_after_s == 2.0
    assert sleep.durations and all(2.0 <= d <= RESILIENCE.backoff_max_s for d in sleep.durations)
    assert ANTHROPIC_KEY not in str(caught.value)


def test_openai_rate_limit_then_success(api: ModelApiServer) -> None:
    api.rate_limit_storm(2, retry_after_s=1)
    sleep = FakeSleep()
    result = _run(
        lambda: _resilient(_openai(api), LONG, sleep), _complete(_request("long_context"))
    )
    assert result.attempts == 3
    assert api.count(OPENAI_PATH) == 3


@pytest.mark.parametrize("which", ["anthropic", "openai"])
def test_context_length_is_one_request_and_no_retry(api: ModelApiServer, which: str) -> None:
    api.script(context_length())
    make: Callable[[], Provider] = (
        (lambda: _anthropic(api)) if which == "anthropic" else (lambda: _openai(api))
    )
    with pytest.raises(ContextOverflowError) as caught:
        _run(lambda: _resilient(make(), FAST, FakeSleep()), _complete(_request()))
    assert api.count() == 1
    assert caught.value.status == 400


def test_other_client_errors_are_bad_requests(api: ModelApiServer) -> None:
    api.script(server_error(401))
    with pytest.raises(BadRequestError) as caught:
        _run(lambda: _resilient(_anthropic(api), FAST, FakeSleep()), _complete(_request()))
    assert api.count() == 1
    assert caught.value.status == 401
    assert ANTHROPIC_KEY not in str(caught.value)


def test_overload_and_5xx_retried_then_breaker_opens_until_half_open(api: ModelApiServer) -> None:
    api.script(overloaded(), server_error(503), overloaded())
    clock, sleep = FakeClock(), FakeSleep()

    async def scenario(provider: ResilientProvider) -> ModelResult:
        with pytest.raises(TransientError) as first:
            await provider.complete(_request())
        assert first.value.status == 529
        assert api.count() == 3  # budget 2 + 1, and 3 failures open the breaker
        assert provider.breaker.state == "open"
        for _ in range(5):
            with pytest.raises(CircuitOpenError):
                await provider.complete(_request())
        assert api.count() == 3  # an open breaker makes no request
        clock.now += RESILIENCE.breaker_reset_s
        result = await provider.complete(_request())  # the half-open trial succeeds
        assert provider.breaker.state == "closed"
        return result

    result = _run(lambda: _resilient(_anthropic(api), FAST, sleep, clock), scenario)
    assert result.attempts == 1
    assert api.count() == 4


def test_error_inside_a_200_stream_is_transient(api: ModelApiServer) -> None:
    api.script(midstream_error())
    with pytest.raises(TransientError) as caught:
        _run(lambda: _anthropic(api, stream=True), _complete(_request()))
    assert "overloaded_error" in str(caught.value)


@pytest.mark.parametrize("which", ["anthropic", "openai"])
def test_stream_cut_short_is_transient_not_a_partial_answer(
    api: ModelApiServer, which: str
) -> None:
    api.script(truncated_stream("Your card is on its way and"))
    make: Callable[[], Provider] = (
        (lambda: _anthropic(api, stream=True))
        if which == "anthropic"
        else (lambda: _openai(api, stream=True))
    )
    with pytest.raises(TransientError, match="stream ended before"):
        _run(make, _complete(_request()))


def test_slow_answer_beyond_the_timeout_is_transient(api: ModelApiServer) -> None:
    role = FAST.model_copy(update={"timeout_s": 0.3, "retry_budget": 0})
    api.script(slow(30))

    def make() -> ResilientProvider:
        inner = AnthropicProvider("fast", role, api_key=ANTHROPIC_KEY, base_url=api.anthropic_url)
        return _resilient(inner, role, FakeSleep())

    with pytest.raises(TransientError):
        _run(make, _complete(_request()))
    assert api.count() == 1


def test_reprs_never_show_the_key(api: ModelApiServer) -> None:
    async def reprs(provider: ResilientProvider) -> str:
        return repr(provider) + repr(provider.inner)

    text = _run(lambda: _resilient(_anthropic(api), FAST, FakeSleep()), reprs)
    assert ANTHROPIC_KEY not in text
    assert HAIKU in text


# -- registry ----------------------------------------------------------------------------


def _governance(
    mode: str = "auto", *, fallback: dict[str, list[str]] | None = None, **role_changes: Any
) -> GovernanceConfig:
    raw = yaml.safe_load(GOVERNANCE_FILE.read_text(encoding="utf-8"))
    raw.setdefault("providers", {})["mode"] = mode
    for name, chain in (fallback or {}).items():
        raw["roles"][name]["fallback"] = chain
    for name, changes in role_changes.items():
        raw["roles"][name].update(changes)
    return GovernanceConfig.model_validate(raw)


def _build(governance: GovernanceConfig, env: dict[str, str], **kwargs: Any) -> ProviderRegistry:
    """A registry over the real SDK providers, with LocalEcho standing in for the fleet."""
    return ProviderRegistry.build(governance, env=env, local=LocalEcho, **kwargs)


def _describe(governance: GovernanceConfig, env: dict[str, str]) -> dict[ModelRole, str]:
    async def main() -> dict[ModelRole, str]:
        registry = _build(governance, env)
        try:
            return registry.describe()
        finally:
            await registry.aclose()

    return asyncio.run(main())


def test_auto_without_keys_is_all_local() -> None:
    described = _describe(_governance(), {})
    assert set(described.values()) == {f"local {name}" for name in described}


def test_auto_uses_remote_only_where_configured() -> None:
    described = _describe(_governance(), {"ANTHROPIC_API_KEY": ANTHROPIC_KEY})
    assert described["fast"] == f"anthropic {HAIKU}"
    assert described["compliance"] == "anthropic claude-3-5-sonnet-20241022"
    assert described["long_context"] == "local long_context"  # no OpenAI key or base_url
    assert all(ANTHROPIC_KEY not in text for text in described.values())


def test_auto_openai_base_url_alone_makes_openai_roles_remote() -> None:
    described = _describe(_governance(), {"OPENAI_BASE_URL": "http://vllm:8000/v1"})
    assert described["long_context"] == f"openai {GPT} at http://vllm:8000/v1"
    assert described["fast"] == "local fast"


def test_local_mode_ignores_keys() -> None:
    env = {"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "OPENAI_API_KEY": OPENAI_KEY}
    described = _describe(_governance("local"), env)
    assert all(text.startswith("local ") for text in described.values())


def test_remote_mode_names_the_role_and_the_missing_variable() -> None:
    with pytest.raises(ConfigError, match=r"roles\.fast\.provider.*ANTHROPIC_API_KEY"):
        _build(_governance("remote"), {"OPENAI_API_KEY": OPENAI_KEY})


def test_missing_local_factory_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"roles\.fast\.provider"):
        ProviderRegistry.build(_governance(), env={}, local=None)


def test_local_provider_role_always_uses_the_fleet() -> None:
    governance = _governance("remote", summarizer={"provider": "local"})
    env = {"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "OPENAI_API_KEY": OPENAI_KEY}
    assert _describe(governance, env)["summarizer"] == "local summarizer"


def test_one_breaker_per_model_version_shared_across_roles() -> None:
    async def main() -> None:
        registry = _build(_governance(), {"ANTHROPIC_API_KEY": ANTHROPIC_KEY})
        try:
            compliance = registry.providers["compliance"]
            verifier = registry.providers["verifier"]
            fast = registry.providers["fast"]
            assert isinstance(compliance, ResilientProvider)
            assert isinstance(verifier, ResilientProvider)
            assert isinstance(fast, ResilientProvider)
            assert compliance.breaker is verifier.breaker
            assert compliance.breaker is not fast.breaker
        finally:
            await registry.aclose()

    asyncio.run(main())


def _wire_env(api: ModelApiServer) -> dict[str, str]:
    return {
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": api.anthropic_url,
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": api.openai_url,
    }


def _registry_complete(
    api: ModelApiServer, governance: GovernanceConfig, request: ModelRequest
) -> ModelResult:
    async def main() -> ModelResult:
        registry = _build(governance, _wire_env(api), sleep=FakeSleep(), rng=random.Random(5))
        try:
            return await registry.complete(request)
        finally:
            await registry.aclose()

    return asyncio.run(main())


def test_registry_falls_back_to_the_next_model_after_a_storm(api: ModelApiServer) -> None:
    governance = _governance("remote", fallback={"fast": ["verifier", "fast", "long_context"]})
    budget = governance.roles["fast"].retry_budget
    verifier_budget = governance.roles["verifier"].retry_budget
    api.rate_limit_storm(budget + 1 + verifier_budget + 1)
    api.script(succeed(ANSWER, tokens_in=11, tokens_out=7))
    result = _registry_complete(api, governance, _request())
    assert result.role == "long_context"
    assert result.provider == "openai"
    assert api.count(ANTHROPIC_PATH) == (budget + 1) + (verifier_budget + 1)
    assert api.count(OPENAI_PATH) == 1
    models = [r.body["model"] for r in api.requests]
    assert models.count(HAIKU) == budget + 1  # "fast" again in the chain is not revisited


def test_registry_does_not_fall_back_on_context_overflow(api: ModelApiServer) -> None:
    governance = _governance("remote", fallback={"fast": ["long_context"]})
    api.script(context_length())
    with pytest.raises(ContextOverflowError):
        _registry_complete(api, governance, _request())
    assert api.count() == 1


# -- retry-after against the deadline, over the real SDKs --------------------------------


def test_retry_after_within_the_deadline_is_honoured_in_full_over_the_wire(
    api: ModelApiServer,
) -> None:
    governance = _governance("remote", fallback={"fast": ["long_context"]})
    api.script(rate_limited(retry_after_s=20), succeed(ANSWER))
    sleep = FakeSleep()

    async def main() -> ModelResult:
        registry = _build(governance, _wire_env(api), sleep=sleep, rng=random.Random(5))
        try:
            return await registry.complete(_request())
        finally:
            await registry.aclose()

    result = asyncio.run(main())
    assert result.role == "fast" and result.attempts == 2
    assert sleep.durations == [20.0]  # was cut to backoff_max_s (8 s): a retry 12 s early


def test_retry_after_beyond_the_deadline_moves_to_the_next_model_over_the_wire(
    api: ModelApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    governance = _governance("remote", fallback={"fast": ["long_context"]})
    api.script(rate_limited(retry_after_s=600), succeed(ANSWER))
    caplog.set_level(logging.WARNING, logger="splitpin.providers.resilience")
    result = _registry_complete(api, governance, _request())
    assert result.role == "long_context"
    assert (api.count(ANTHROPIC_PATH), api.count(OPENAI_PATH)) == (1, 1)  # no early retry
    assert any("retry-after 600 s exceeds" in r.getMessage() for r in caplog.records)


# -- secrets -----------------------------------------------------------------------------


@pytest.mark.parametrize("tail", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("stream_mode", [False, True])
def test_a_key_ending_in_a_newline_is_never_printed_nor_copied(
    api: ModelApiServer, caplog: pytest.LogCaptureFixture, tail: str, stream_mode: bool
) -> None:
    """Through the real SDK clients: the HTTP library refuses the header and quotes the key;
    the error text, every log line and the failure that the job would record carry none of it."""
    anthropic_core = f"sk-ant-api03-{secrets.token_hex(16)}"
    openai_core = f"sk-proj-{secrets.token_hex(16)}"
    env = {
        **_wire_env(api),
        "ANTHROPIC_API_KEY": anthropic_core + tail,
        "OPENAI_API_KEY": openai_core + tail,
    }
    governance = _governance("remote", fallback={"fast": ["long_context"]})
    # Everything, the HTTP library's debug trace included (it logs the refused header),
    # through the filter the CLI installs on the root handlers.
    caplog.set_level(logging.DEBUG)
    caplog.handler.addFilter(RedactingFilter())

    async def main() -> None:
        registry = _build(governance, env, sleep=FakeSleep(), stream=stream_mode)
        try:
            await registry.complete(_request())
        finally:
            await registry.aclose()

    with pytest.raises(TransientError) as caught:
        asyncio.run(main())
    assert api.count() == 0, "the client refused to send the malformed header"
    # Redacted where the provider error is translated: this text becomes the failure
    # record's detail (operators/answering.py) whatever logging is configured.
    error = f"{caught.value} {caught.value!r}"
    assert "Illegal header value" in error  # the error that used to quote the key
    logged = "\n".join([caplog.text, *(r.getMessage() for r in caplog.records)])
    assert "Illegal header value" in logged
    for core in (anthropic_core, openai_core):
        assert core not in error
        assert core not in logged


# -- providers per role: api_key_env and base_url ----------------------------------------

FAST_KEY = "sk-fast-endpoint-SECRET-0001"
LONG_KEY = "sk-long-endpoint-SECRET-0002"


def test_two_openai_compatible_servers_each_see_only_their_own_key() -> None:
    """Two roles, two OpenAI-compatible servers, two keys: each server is sent its own key
    only (either server answers 401 to any other), never the vendor-wide OPENAI_API_KEY."""
    with (
        ModelApiServer(api_key=FAST_KEY) as first,
        ModelApiServer(api_key=LONG_KEY) as second,
    ):
        governance = _governance(
            "auto",
            fast={"provider": "openai", "base_url": first.openai_url, "api_key_env": "FAST_KEY"},
            long_context={"base_url": second.openai_url, "api_key_env": "LONG_KEY"},
        )
        env = {"FAST_KEY": FAST_KEY, "LONG_KEY": LONG_KEY, "OPENAI_API_KEY": OPENAI_KEY}

        async def main() -> list[ModelResult]:
            registry = _build(governance, env, sleep=FakeSleep())
            try:
                described = registry.describe()
                assert described["fast"] == f"openai {HAIKU} at {first.openai_url}"
                assert described["long_context"] == f"openai {GPT} at {second.openai_url}"
                assert not any(k in str(described) for k in (FAST_KEY, LONG_KEY, OPENAI_KEY))
                return [
                    await registry.complete(_request(role))
                    for role in ("fast", "long_context", "fast")
                ]
            finally:
                await registry.aclose()

        results = asyncio.run(main())
        assert [r.role for r in results] == ["fast", "long_context", "fast"]
        assert first.keys_seen == [FAST_KEY, FAST_KEY]
        assert second.keys_seen == [LONG_KEY]
        assert [r.body["model"] for r in first.requests] == [HAIKU, HAIKU]
        assert [r.body["model"] for r in second.requests] == [GPT]


def test_a_role_naming_its_key_variable_needs_that_variable() -> None:
    """An explicit api_key_env is not satisfied by the vendor's variable nor a base_url."""
    governance = _governance(
        "remote",
        long_context={"base_url": "http://vllm:8000/v1", "api_key_env": "LONG_KEY"},
    )
    env = {"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "OPENAI_API_KEY": OPENAI_KEY}
    with pytest.raises(ConfigError, match=r"roles\.long_context\.provider.*LONG_KEY"):
        _build(governance, env)


def test_a_role_key_with_a_newline_is_refused_naming_its_variable() -> None:
    governance = _governance("auto", long_context={"api_key_env": "LONG_KEY"})
    with pytest.raises(ConfigError, match="LONG_KEY") as caught:
        check_secret_env({"LONG_KEY": LONG_KEY + "\n"}, key_variables(governance))
    assert LONG_KEY not in str(caught.value)


# The vendors' variables are drawn often, so "own vs vendor-wide key" is really exercised.
VARIABLE = st.sampled_from(["ANTHROPIC_API_KEY", "OPENAI_API_KEY", "FAST_KEY"]) | st.from_regex(
    r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True
).filter(lambda name: not name.endswith("_BASE_URL"))
KEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=8, max_size=24)


@settings(max_examples=200, deadline=None)
@given(
    env=st.dictionaries(VARIABLE, KEY, max_size=6),
    variable=st.none() | VARIABLE,
    provider=st.sampled_from(["anthropic", "openai"]),
    base_url=st.none() | st.just("http://vllm:8000/v1"),
)
def test_a_role_is_only_ever_given_the_value_of_its_own_variable(
    env: dict[str, str], variable: str | None, provider: str, base_url: str | None
) -> None:
    role = FAST.model_copy(
        update={"provider": provider, "api_key_env": variable, "base_url": base_url}
    )
    own = variable or ("ANTHROPIC_API_KEY" if provider == "anthropic" else "OPENAI_API_KEY")
    key, url, missing = endpoint_settings("fast", role, env)
    assert key == (env.get(own) or None)
    assert (missing is None) == (
        own in env or (provider == "openai" and variable is None and base_url is not None)
    )
    if missing is not None:
        assert own in missing
    assert url == base_url
    if key is not None:
        assert redact(f"header {key}") == f"header {REDACTED}"
    assert own in secret_variables()
