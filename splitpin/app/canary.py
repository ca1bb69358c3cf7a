"""`splitpin run --canary CANDIDATE.yaml`: a second, independent topology on the same stream.

The canary is the routing flow run with the candidate governance file, in its own process
with its own recovery directory (`canary_recovery_dir`) and metrics port
(`canary_metrics_port`). It reads the primary's events topic and writes only to topics
named with the candidate's `canary.topic_prefix` in front of the primary's names (its
metrics topic too, from which its budget gate reconciles), creating them at start. Nothing
it does reaches a customer or a tenant's budget: the flow refuses any other topic
(operators/sampling.py), its CostRecords are `shadow`, and its gate admits against one
`canary.shadow_budget_usd` per budget window. The primary never reads a canary topic, so
starting, stopping or killing the canary cannot change what the primary does.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from splitpin.core.kafka.admin import check_flow_topics, create_topics, topic_record_counts
from splitpin.core.kafka.client_config import client_config
from splitpin.core.settings import Settings
from splitpin.errors import BrokerError, ConfigError
from splitpin.flows.routing_flow import CanaryMode
from splitpin.schemas.governance import load_governance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CanaryPlan:
    """The canary's settings and flow mode, derived from the primary's settings."""

    settings: Settings
    mode: CanaryMode

    def output_topics(self) -> list[str]:
        """Every topic the canary writes or reads besides the primary's events topic."""
        return [topic for name, topic in self.settings.all_topics().items() if name != "events"]


def plan_canary(primary: Settings, candidate: Path) -> CanaryPlan:
    """The canary's settings: the candidate's governance, topics prefixed, own state.

    Raises ConfigError when the candidate would share a topic or the recovery directory
    with the primary."""
    governance = load_governance(candidate)
    prefix = governance.canary.topic_prefix + primary.topic_prefix
    settings = primary.model_copy(
        update={
            "governance_path": candidate,
            "topic_prefix": prefix,
            "recovery_dir": primary.canary_recovery_dir,
            "metrics_port": primary.canary_metrics_port,
        }
    )
    if settings.recovery_dir.resolve() == primary.recovery_dir.resolve():
        msg = (
            f"the canary's recovery directory {settings.recovery_dir} is the primary's; "
            "set SPLITPIN_CANARY_RECOVERY_DIR to another one"
        )
        raise ConfigError(msg)
    plan = CanaryPlan(settings, CanaryMode(primary.topic("events"), prefix))
    shared = set(plan.output_topics()) & set(primary.all_topics().values())
    if shared:
        msg = f"canary.topic_prefix {governance.canary.topic_prefix!r} makes the canary "
        msg += f"write to the primary's topic(s) {sorted(shared)}; choose another prefix"
        raise ConfigError(msg)
    return plan


def prepare_canary(primary: Settings, plan: CanaryPlan) -> list[str]:
    """Fail fast unless the primary's topics exist; create the canary's (`topics create`
    semantics: existing ones are left as they are). One line per canary topic.

    A topic just created can answer "not leader" to a watermark read for a moment (the
    start-up check reads them), so wait until every one of them answers."""
    check_flow_topics(primary)
    lines = create_topics(plan.settings, names=plan.output_topics())
    settings = plan.settings
    deadline = time.monotonic() + settings.startup_timeout_s
    while True:
        try:
            topic_record_counts(
                settings.bootstrap_servers,
                plan.output_topics(),
                settings.startup_timeout_s,
                config=client_config(settings),
            )
        except BrokerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        else:
            return lines


def run_canary(
    primary: Settings,
    candidate: Path,
    *,
    workers: int = 1,
    recovery: bool = True,
    tail: bool = True,
    reset: bool = False,
) -> None:
    """Plan, prepare, then run the canary flow (one process)."""
    from splitpin.app.runner import run_flow

    plan = plan_canary(primary, candidate)
    for line in prepare_canary(primary, plan):
        log.info("canary topic: %s", line)
    canary = plan.settings.governance.canary
    log.warning(
        "canary: mirroring %.1f%% of conversations from %s to %s* (shadow budget $%.2f)",
        canary.sample_fraction * 100,
        plan.mode.events_topic,
        plan.mode.topic_prefix,
        canary.shadow_budget_usd,
    )
    run_flow(
        plan.settings,
        workers=workers,
        recovery=recovery,
        tail=tail,
        reset=reset,
        canary=plan.mode,
    )
