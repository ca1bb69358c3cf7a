"""Which backend answers each role: remote SDK providers or the local fleet, decided once.

Built at start-up from the governance file and an environment mapping (not os.environ
directly, so tests and the CLI decide what the process sees). Remote providers are
wrapped in the retry/breaker policy, with one breaker per model version at one endpoint,
shared by the roles that use it (compliance and verifier pin the same Sonnet: when it is
down, it is down for both). The local fleet is an opaque factory owned elsewhere.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping

from splitpin.core.redaction import SECRETS
from splitpin.errors import ConfigError
from splitpin.providers.anthropic_provider import AnthropicProvider
from splitpin.providers.base import ModelRequest, ModelResult, Provider
from splitpin.providers.openai_provider import OpenAIProvider
from splitpin.providers.resilience import (
    CircuitBreaker,
    Clock,
    FallbackChain,
    ResilientProvider,
    Sleep,
    safe_url,
)
from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.governance import GovernanceConfig, RoleConfig

LocalFactory = Callable[[ModelRole, RoleConfig], Provider]

ANTHROPIC_KEY = "ANTHROPIC_API_KEY"
ANTHROPIC_BASE_URL = "ANTHROPIC_BASE_URL"
OPENAI_KEY = "OPENAI_API_KEY"
OPENAI_BASE_URL = "OPENAI_BASE_URL"


class ProviderRegistry:
    """Every role's provider and fallback chain; `complete` is what the model operator calls."""

    def __init__(
        self,
        governance: GovernanceConfig,
        providers: Mapping[ModelRole, Provider],
        descriptions: Mapping[ModelRole, str],
        breakers: Mapping[str, CircuitBreaker],
    ) -> None:
        self.governance = governance
        self.providers = dict(providers)
        self.breakers = dict(breakers)
        self._descriptions = dict(descriptions)
        self.chains: dict[ModelRole, FallbackChain] = {
            name: FallbackChain(
                [
                    (link, self.providers[link], governance.roles[link])
                    for link in (name, *role.fallback)
                ]
            )
            for name, role in governance.roles.items()
        }

    @classmethod
    def build(
        cls,
        governance: GovernanceConfig,
        *,
        env: Mapping[str, str],
        local: LocalFactory | None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        stream: bool = False,
    ) -> ProviderRegistry:
        """Decide remote vs local per role (see ProvidersConfig.mode); raise ConfigError early.

        Keys are read from `env` and handed to the SDK clients only; they never appear in
        descriptions, reprs or error messages. Each is registered with splitpin.core.redaction
        as it is read, so any text that quotes it anyway (an HTTP library's header error)
        is redacted before it is logged or written to Kafka. Refusing a malformed key is
        the CLI's start-up check (splitpin.core.redaction.check_secret_env).
        """
        mode = governance.providers.mode
        resilience = governance.providers.resilience
        rng = rng if rng is not None else random.Random()
        # Decide every role before building anything, so a ConfigError leaves nothing open.
        for name, role in governance.roles.items():
            unknown = [link for link in role.fallback if link not in governance.roles]
            if unknown:
                msg = f"roles.{name}.fallback: {', '.join(unknown)} not configured under roles"
                raise ConfigError(msg)
        plan: dict[ModelRole, tuple[str | None, str | None] | None] = {}
        problems: list[str] = []
        for name, role in governance.roles.items():
            try:
                plan[name] = remote_settings(name, role, env, mode)
            except ConfigError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigError("\n".join(problems))
        needs_local = sorted(name for name, remote in plan.items() if remote is None)
        if needs_local and local is None:
            fields = ", ".join(f"roles.{name}.provider" for name in needs_local)
            msg = f"{fields}: served by the local fleet, but no local provider factory was given"
            raise ConfigError(msg)
        providers: dict[ModelRole, Provider] = {}
        descriptions: dict[ModelRole, str] = {}
        breakers: dict[str, CircuitBreaker] = {}
        for name, remote in plan.items():
            role = governance.roles[name]
            if remote is None:
                assert local is not None  # checked above
                providers[name] = local(name, role)
                descriptions[name] = f"local {name}"
                continue
            api_key, base_url = remote
            inner: Provider
            if role.provider == "anthropic":
                inner = AnthropicProvider(
                    name, role, api_key=api_key or "", base_url=base_url, stream=stream
                )
            else:
                inner = OpenAIProvider(
                    name, role, api_key=api_key, base_url=base_url, stream=stream
                )
            endpoint = safe_url(base_url) if base_url else "default"
            key = f"{role.provider} {endpoint} {role.pinned_id}"
            breaker = breakers.get(key)
            if breaker is None:
                breaker = CircuitBreaker.from_config(role.pinned_id, resilience, clock=clock)
                breakers[key] = breaker
            providers[name] = ResilientProvider(
                inner, name, role, resilience, breaker, sleep=sleep, rng=rng, clock=clock
            )
            where = f" at {safe_url(base_url)}" if base_url else ""
            descriptions[name] = f"{role.provider} {role.pinned_id}{where}"
        return cls(governance, providers, descriptions, breakers)

    async def complete(self, request: ModelRequest) -> ModelResult:
        """Answer with the request's role, falling back along its chain."""
        chain = self.chains.get(request.role)
        if chain is None:
            msg = f"role {request.role} is not configured"
            raise KeyError(msg)
        return await chain.complete(request)

    def describe(self) -> dict[ModelRole, str]:
        """Role -> what answers it, e.g. "anthropic claude-3-5-haiku-20241022", "local fast"."""
        return dict(self._descriptions)

    async def aclose(self) -> None:
        """Close every provider once (a shared instance is closed once)."""
        seen: set[int] = set()
        for provider in self.providers.values():
            if id(provider) in seen:
                continue
            seen.add(id(provider))
            await provider.aclose()


def remote_settings(
    name: ModelRole, role: RoleConfig, env: Mapping[str, str], mode: str
) -> tuple[str | None, str | None] | None:
    """(api_key, base_url) when this role goes to its remote API, None for the local fleet."""
    if role.provider == "local" or mode == "local":
        return None
    if role.provider == "anthropic":
        key = env.get(ANTHROPIC_KEY) or None
        SECRETS.register(key)
        base_url = role.base_url or env.get(ANTHROPIC_BASE_URL) or None
        if key is not None:
            return key, base_url
        missing = ANTHROPIC_KEY
    else:
        key = env.get(OPENAI_KEY) or None
        SECRETS.register(key)
        base_url = role.base_url or env.get(OPENAI_BASE_URL) or None
        if key is not None or base_url is not None:
            return key, base_url
        missing = f"{OPENAI_KEY} (or {OPENAI_BASE_URL}, or roles.{name}.base_url)"
    if mode == "remote":
        msg = (
            f"roles.{name}.provider: {role.provider} in providers.mode remote needs {missing} "
            "in the environment"
        )
        raise ConfigError(msg)
    return None
