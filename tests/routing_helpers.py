"""Build real routing inputs for tests: governance variants, classifications, routed turns."""

from __future__ import annotations

from typing import Any

from splitpin.core.router.classifier import Classification
from splitpin.core.settings import REPO_ROOT
from splitpin.operators.conversation_state import ConversationState
from splitpin.operators.routing import RoutePlan, Router
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.governance import GovernanceConfig, load_governance
from tests.factories import event_dict

SHIPPED = load_governance(REPO_ROOT / "config" / "governance.yaml")
VERIFY_EVERY_ANSWER: dict[str, Any] = {"verify": "always", "hedging": {"enabled": False}}
"""`replies` for tests of the verified-answer mechanics (preliminary, verifier, correction,
timeouts) rather than of the selective policy or hedging the shipped config enables."""


def governance(**sections: dict[str, Any]) -> GovernanceConfig:
    """The shipped config with some sections (or roles) deep-updated."""
    data = SHIPPED.model_dump(mode="python")
    for name, update in sections.items():
        if name == "roles":
            for role, fields in update.items():
                data["roles"][role].update(fields)
        else:
            data[name].update(update)
    return GovernanceConfig.model_validate(data)


def classification(
    intent: str = "card_arrival",
    *,
    confidence: float = 0.9,
    trivial: bool = False,
    out_of_scope: bool = False,
    compliance: bool = False,
    rule: str | None = None,
) -> Classification:
    return Classification(
        intent=intent,
        intent_confidence=confidence,
        domain_intent="greeting" if trivial else ("oos" if out_of_scope else "balance"),
        domain_confidence=0.8,
        trivial=trivial,
        out_of_scope=out_of_scope,
        out_of_scope_score=0.9 if out_of_scope else 0.05,
        compliance=compliance,
        compliance_score=0.8 if compliance else 0.01,
        rule=rule,
    )


class Conversation:
    """Feeds turns of one conversation through a real Router, keeping its state."""

    def __init__(self, gov: GovernanceConfig, conversation_id: str = "c-1") -> None:
        self.router = Router(gov)
        self.tracker = self.router.tracker()
        self.state: ConversationState | None = None
        self.conversation_id = conversation_id
        self.turn = 0

    def say(
        self,
        text: str,
        klass: Classification | None = None,
        *,
        at_s: float | None = None,
        role: str = "customer",
        tags: tuple[str, ...] = (),
        tenant_id: str = "acme-bank",
    ) -> RoutePlan | None:
        event = ConversationEvent.model_validate(
            event_dict(
                f"{self.conversation_id}-{self.turn}",
                self.conversation_id,
                text=text,
                at_s=self.turn * 10 if at_s is None else at_s,
                role=role,
                tags=tags,
                tenant_id=tenant_id,
            )
        )
        self.turn += 1
        self.state, observation = self.tracker.observe(self.state, event)
        assert observation is not None and self.state is not None
        return self.router.route(self.state, observation, klass or classification())
