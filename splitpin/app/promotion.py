"""Promotion closes the loop: a canary's candidate config goes into force only when the
comparison with the primary says PROMOTE, and a model swap in it only inside a maintenance
window (splitpin/core/governance_store.py gates and audits that, as for any apply)."""

from __future__ import annotations

from dataclasses import dataclass

from splitpin.core import governance_store as store
from splitpin.core.settings import Settings
from splitpin.operators.comparison import Comparison
from splitpin.schemas.governance import GovernanceConfig


@dataclass(frozen=True, slots=True)
class Promotion:
    """What `splitpin canary promote` did: nothing (HOLD, with the failed criteria) or the
    governance outcome (applied, held for a window, or already in force)."""

    failed: tuple[str, ...]
    outcome: store.Outcome | None


def promote(
    settings: Settings,
    candidate: GovernanceConfig,
    comparison: Comparison,
    *,
    command: str,
    force: bool = False,
) -> Promotion:
    """Apply `candidate` only when every promotion criterion passed."""
    failed = tuple(check.criterion for check in comparison.checks if not check.passed)
    if failed:
        return Promotion(failed, None)
    return Promotion((), store.apply_config(settings, candidate, command=command, force=force))
