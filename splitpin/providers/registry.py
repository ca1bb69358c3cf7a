"""Which backend answers each role: remote SDK providers or the local fleet, decided once.

Built at start-up from the governance file and an environment mapping (not os.environ
directly, so tests and the CLI decide what the process sees). Remote providers are
wrapped in the retry/breaker policy, with one breaker per model version at one endpoint,
shared by the roles that use it (compliance and verifier pin the same Sonnet: when it is
down, it is down for both). The local fleet is an opaque factory owned elsewhere.

Each role reads its key from its own variable (`api_key_env`, default the vendor's) and
may name its own endpoint (`base_url`), so two OpenAI-compatible servers with different
keys coexist. `check_remote` (`splitpin config check --remote`) asks each endpoint which
models it serves and flags pins it does not.

The vendor SDKs (anthropic, openai) are imported only where a remote provider is built or
an endpoint is checked: importing both took 3-5 s of every `splitpin run` start-up on the
reference box, also when the local fleet answers every role (bench/README.md,
`whole_path.py`; tests/unit/test_lazy_sdks.py).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from splitpin.core import metrics
from splitpin.core.redaction import (
    SECRETS,
    check_secret_env,
    redact,
    register_secret_variable,
)
from splitpin.errors import ConfigError
from splitpin.providers.base import ModelRequest, ModelResult, Provider
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
MODELS_PAGE_SIZE = 1000
"""The largest page Anthropic's `GET /v1/models` returns (the SDK pages through the rest)."""


class ProviderRegistry:
    """Every role's provider and fallback chain; `complete` is what the model operator calls."""

    def __init__(
        self,
        governance: GovernanceConfig,
        providers: Mapping[ModelRole, Provider],
        descriptions: Mapping[ModelRole, str],
        breakers: Mapping[str, CircuitBreaker],
        local_roles: frozenset[ModelRole] = frozenset(),
    ) -> None:
        self.governance = governance
        self.providers = dict(providers)
        self.breakers = dict(breakers)
        self.local_roles = local_roles
        """The roles `build` gave to the local fleet (see `is_local`)."""
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
                metrics.declare_role(name, metrics.LOCAL_PROVIDER, local_model(name))
                continue
            metrics.declare_role(name, role.provider, role.pinned_id)
            api_key, base_url = remote
            inner: Provider
            # The SDKs are imported here, lazily (module doc).
            if role.provider == "anthropic":
                from splitpin.providers.anthropic_provider import AnthropicProvider

                inner = AnthropicProvider(
                    name, role, api_key=api_key or "", base_url=base_url, stream=stream
                )
            else:
                from splitpin.providers.openai_provider import OpenAIProvider

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
        return cls(governance, providers, descriptions, breakers, frozenset(needs_local))

    async def complete(self, request: ModelRequest) -> ModelResult:
        """Answer with the request's role, falling back along its chain."""
        chain = self.chains.get(request.role)
        if chain is None:
            msg = f"role {request.role} is not configured"
            raise KeyError(msg)
        return await chain.complete(request)

    def is_local(self, role: ModelRole) -> bool:
        """Whether the local fleet answers `role` (decided once, in `build`): the answering
        policy asks here rather than re-reading the environment."""
        return role in self.local_roles

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


def key_variable(role: RoleConfig) -> str:
    """The environment variable holding this role's key: its `api_key_env`, else the vendor's."""
    if role.api_key_env:
        return role.api_key_env
    return ANTHROPIC_KEY if role.provider == "anthropic" else OPENAI_KEY


def key_variables(governance: GovernanceConfig) -> tuple[str, ...]:
    """Every key variable a remote role reads, each once (for the start-up secret check)."""
    names = (key_variable(r) for r in governance.roles.values() if r.provider != "local")
    return tuple(dict.fromkeys(names))


def endpoint_settings(
    name: ModelRole, role: RoleConfig, env: Mapping[str, str]
) -> tuple[str | None, str | None, str | None]:
    """(api_key, base_url, missing) for a remote role, whatever providers.mode says.

    `missing` names what the environment lacks for the role to be called, None when it can
    be: Anthropic always needs its key; an OpenAI-compatible server without a key is fine
    when an endpoint is given (vLLM, Ollama), unless the role names its own `api_key_env`.
    The key is registered with the redaction layer as it is read.
    """
    variable = key_variable(role)
    register_secret_variable(variable)
    key = env.get(variable) or None
    SECRETS.register(key)
    if role.provider == "anthropic":
        base_url = role.base_url or env.get(ANTHROPIC_BASE_URL) or None
        return key, base_url, None if key is not None else variable
    base_url = role.base_url or env.get(OPENAI_BASE_URL) or None
    if key is not None or (base_url is not None and role.api_key_env is None):
        return key, base_url, None
    if role.api_key_env is not None:
        return key, base_url, variable
    return key, base_url, f"{variable} (or {OPENAI_BASE_URL}, or roles.{name}.base_url)"


def remote_settings(
    name: ModelRole, role: RoleConfig, env: Mapping[str, str], mode: str
) -> tuple[str | None, str | None] | None:
    """(api_key, base_url) when this role goes to its remote API, None for the local fleet."""
    if role.provider == "local" or mode == "local":
        return None
    key, base_url, missing = endpoint_settings(name, role, env)
    if missing is None:
        return key, base_url
    if mode == "remote":
        msg = (
            f"roles.{name}.provider: {role.provider} in providers.mode remote needs {missing} "
            "in the environment"
        )
        raise ConfigError(msg)
    return None


def local_model(name: ModelRole) -> str:
    """The model label of a role answered by the local fleet (as its cost records name it)."""
    return f"local-{name}"


# -- `splitpin config check --remote` -----------------------------------------------------

CheckStatus = Literal["ok", "missing_pins", "skipped", "error"]


@dataclass(frozen=True)
class EndpointCheck:
    """One remote endpoint (provider, URL, key variable) and the pins of the roles using it."""

    provider: str
    base_url: str
    key_variable: str
    pins: dict[str, str]
    """role -> pinned model id."""
    status: CheckStatus = "skipped"
    message: str = ""
    served: tuple[str, ...] = ()
    missing: dict[str, str] = field(default_factory=dict)
    """role -> pinned model id the endpoint does not serve."""


@dataclass(frozen=True)
class _Endpoint:
    provider: str
    base_url: str | None
    variable: str
    api_key: str | None
    missing_env: str | None
    timeout_s: float
    pins: dict[str, str]


def plan_endpoints(governance: GovernanceConfig, env: Mapping[str, str]) -> list[_Endpoint]:
    """Every remote role grouped by (provider, endpoint, key variable), whatever the mode."""
    grouped: dict[tuple[str, str | None, str], _Endpoint] = {}
    for name, role in sorted(governance.roles.items()):
        if role.provider == "local":
            continue
        key, base_url, missing = endpoint_settings(name, role, env)
        variable = key_variable(role)
        at = (role.provider, base_url, variable)
        known = grouped.get(at)
        if known is None:
            grouped[at] = _Endpoint(
                role.provider, base_url, variable, key, missing, role.timeout_s, {}
            )
        else:
            grouped[at] = replace(known, timeout_s=max(known.timeout_s, role.timeout_s))
        grouped[at].pins[name] = role.pinned_id
    return list(grouped.values())


def list_models(
    provider: str, api_key: str | None, base_url: str | None, timeout_s: float
) -> set[str]:
    """The model ids an endpoint serves, through the vendor's SDK (`GET /v1/models`)."""
    import anthropic  # lazily (module doc)
    import openai

    from splitpin.providers.anthropic_provider import DEFAULT_BASE_URL as ANTHROPIC_DEFAULT_URL
    from splitpin.providers.openai_provider import DEFAULT_BASE_URL as OPENAI_DEFAULT_URL
    from splitpin.providers.openai_provider import PLACEHOLDER_KEY

    if provider == "anthropic":
        with anthropic.Anthropic(
            api_key=api_key or "",
            base_url=base_url or ANTHROPIC_DEFAULT_URL,
            max_retries=0,
            timeout=timeout_s,
        ) as claude:
            return {model.id for model in claude.models.list(limit=MODELS_PAGE_SIZE)}
    with openai.OpenAI(
        api_key=api_key or PLACEHOLDER_KEY,
        base_url=base_url or OPENAI_DEFAULT_URL,
        max_retries=0,
        timeout=timeout_s,
    ) as gpt:
        return {model.id for model in gpt.models.list()}


def check_endpoint(endpoint: _Endpoint) -> EndpointCheck:
    """Ask one endpoint for its models and compare them with the pins; never raises for
    the endpoint's own failures (they become status `error`, redacted)."""
    import anthropic  # lazily (module doc)
    import openai

    from splitpin.providers.anthropic_provider import DEFAULT_BASE_URL as ANTHROPIC_DEFAULT_URL
    from splitpin.providers.openai_provider import DEFAULT_BASE_URL as OPENAI_DEFAULT_URL

    default = ANTHROPIC_DEFAULT_URL if endpoint.provider == "anthropic" else OPENAI_DEFAULT_URL
    report = EndpointCheck(
        endpoint.provider,
        safe_url(endpoint.base_url or default),
        endpoint.variable,
        dict(endpoint.pins),
    )
    if endpoint.missing_env is not None:
        message = f"{endpoint.variable} is not set, so this endpoint's models cannot be listed"
        return replace(report, message=message)
    try:
        served = list_models(
            endpoint.provider, endpoint.api_key, endpoint.base_url, endpoint.timeout_s
        )
    except (anthropic.APIError, openai.APIError) as exc:
        message = redact(f"{type(exc).__name__}: {exc}")
        return replace(report, status="error", message=message)
    missing = {role: pin for role, pin in endpoint.pins.items() if pin not in served}
    if missing:
        absent = ", ".join(f"roles.{role} pins {pin}" for role, pin in missing.items())
        message = f"not served: {absent}"
        status: CheckStatus = "missing_pins"
    else:
        message = f"{len(endpoint.pins)} pin(s) served"
        status = "ok"
    return replace(
        report, status=status, message=message, served=tuple(sorted(served)), missing=missing
    )


def check_remote(governance: GovernanceConfig, env: Mapping[str, str]) -> list[EndpointCheck]:
    """Every remote endpoint's check; refuses a malformed key first (naming its variable)."""
    check_secret_env(env, key_variables(governance))
    return [check_endpoint(endpoint) for endpoint in plan_endpoints(governance, env)]
