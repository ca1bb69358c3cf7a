"""`config/governance.yaml`: model roles, pins, prices, windows and thresholds.

Validated at start-up; any error names the field (`roles.fast.version: ...`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.decisions import ModelRole
from splitpin.errors import ConfigError, describe_validation_error

Encoding = Literal["cl100k_base", "o200k_base"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RoleConfig(_Frozen):
    """One model role: which model answers, at what price, within which limits."""

    provider: Literal["local", "anthropic", "openai"]
    model: str = Field(min_length=1)
    version: str | None = Field(default=None, description="Exact version pin, e.g. a dated id.")
    context_window: int = Field(gt=0, description="Tokens the model accepts, prompt + output.")
    max_output_tokens: int = Field(gt=0)
    price_in_per_mtok: float = Field(ge=0, description="USD per million input tokens.")
    price_out_per_mtok: float = Field(ge=0, description="USD per million output tokens.")
    tokenizer: Encoding = "cl100k_base"
    timeout_s: float = Field(default=30.0, gt=0)
    retry_budget: int = Field(default=2, ge=0, le=10)

    @model_validator(mode="after")
    def _output_fits_window(self) -> Self:
        if self.max_output_tokens >= self.context_window:
            msg = "max_output_tokens must be smaller than context_window"
            raise ValueError(msg)
        return self

    @property
    def pinned_id(self) -> str:
        return self.version or self.model


def _default_tag_pins() -> dict[str, ModelRole]:
    return {"compliance": "compliance"}


def _default_session_gaps() -> dict[Literal["chat", "email"], float]:
    return {"chat": 1800.0, "email": 7 * 86400.0}


class RoutingConfig(_Frozen):
    token_encoding: Encoding = Field(
        default="cl100k_base", description="Encoding used for tier thresholds."
    )
    fast_max_tokens: int = Field(
        default=2048, gt=0, description="Conversations under this go to the fast role."
    )
    tag_pins: dict[str, ModelRole] = Field(
        default_factory=_default_tag_pins,
        description="An event tag that pins the route to a role whatever its size.",
    )


class ConversationConfig(_Frozen):
    window_tokens: int = Field(default=4096, gt=0, description="Recent turns kept verbatim.")
    session_gap_s: dict[Literal["chat", "email"], float] = Field(
        default_factory=_default_session_gaps,
        description="A turn after this much silence starts a new session.",
    )
    idle_eviction_factor: float = Field(
        default=2.0, ge=1.0, description="State is dropped after gap x factor of wall-clock idle."
    )
    dedupe_capacity: int = Field(
        default=1024, gt=0, description="Event ids remembered per conversation for idempotency."
    )

    @model_validator(mode="after")
    def _both_channels(self) -> Self:
        missing = {"chat", "email"} - set(self.session_gap_s)
        if missing:
            msg = f"session_gap_s needs a gap for {sorted(missing)}"
            raise ValueError(msg)
        return self


class GovernanceConfig(_Frozen):
    schema_version: Literal[1] = 1
    require_version_pins: bool = True
    roles: dict[ModelRole, RoleConfig]
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    conversation: ConversationConfig = Field(default_factory=ConversationConfig)

    @model_validator(mode="after")
    def _roles_complete_and_pinned(self) -> Self:
        needed = {"fast", "long_context", "compliance"} | set(self.routing.tag_pins.values())
        missing = needed - set(self.roles)
        if missing:
            msg = f"roles missing: {sorted(missing)}"
            raise ValueError(msg)
        if self.require_version_pins:
            unpinned = sorted(name for name, role in self.roles.items() if not role.version)
            if unpinned:
                msg = f"version pin required (require_version_pins) for roles {unpinned}"
                raise ValueError(msg)
        return self


def load_governance(path: Path) -> GovernanceConfig:
    """Read and validate the governance file, raising ConfigError that names the field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        msg = f"cannot read governance config {path}: {exc}"
        raise ConfigError(msg) from exc
    except yaml.YAMLError as exc:
        msg = f"governance config {path} is not valid YAML: {exc}"
        raise ConfigError(msg) from exc
    try:
        return GovernanceConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(f"governance config {path}", exc)) from exc
