"""Records of governance changes: the governance topic's value and the audit trail.

`<prefix>governance` is compacted: key `current` holds the config in force (with the one
before it, so a rollback needs nothing else), key `pending` a change held for a
maintenance window. `<prefix>governance.audit` keeps one GovernanceAudit per change.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from splitpin.schemas.wire import WireModel

GovernanceAction = Literal["applied", "held", "rolled_back"]


class GovernanceChange(BaseModel):
    """One changed setting: its dotted path, and its JSON value before and after (None when
    absent on that side, e.g. a role added or removed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(description="Dotted path, e.g. roles.fast.version.")
    old: Any = None
    new: Any = None
    swap: bool = Field(
        default=False, description="Changes which model answers a role (maintenance-window gated)."
    )


class GovernanceRecord(WireModel):
    """A governance config on the compacted topic, with the version it replaced."""

    version: str = Field(description="GovernanceConfig.version_id() of `config`.")
    name: str | None = None
    config: dict[str, Any] = Field(description="The validated config, as JSON.")
    previous_version: str | None = None
    previous_config: dict[str, Any] | None = Field(
        default=None, description="What `governance rollback` returns to."
    )
    applied_at: AwareDatetime
    command: str = Field(description="The CLI command that wrote it.")


class GovernanceAudit(WireModel):
    """What changed, when, from which version to which, by which command."""

    audit_id: str = Field(description="to_version plus the time: unique per change.")
    action: GovernanceAction
    at: AwareDatetime
    command: str
    from_version: str | None
    to_version: str
    to_name: str | None = None
    forced: bool = False
    changes: tuple[GovernanceChange, ...] = ()
    message: str = Field(description="Human summary, e.g. why a change is held.")
