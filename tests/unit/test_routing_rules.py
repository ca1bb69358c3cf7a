"""The incident's rule: size picks fast vs long-context; the compliance tag pins."""

from __future__ import annotations

from pathlib import Path

import pytest

from operators.conversation_state import ConversationTracker
from operators.routing import decide
from schemas.events import ConversationEvent
from schemas.governance import GovernanceConfig, load_governance
from splitpin.settings import REPO_ROOT
from tests.factories import event_dict


@pytest.fixture(scope="module")
def governance() -> GovernanceConfig:
    return load_governance(REPO_ROOT / "config" / "governance.yaml")


def _decide(governance: GovernanceConfig, **kwargs: object):  # type: ignore[no-untyped-def]
    tracker = ConversationTracker(governance.conversation, governance.routing.token_encoding)
    event = ConversationEvent.model_validate(event_dict(**kwargs))  # type: ignore[arg-type]
    _, observation = tracker.observe(None, event)
    assert observation is not None
    return decide(observation, governance)


def test_short_conversation_goes_to_fast(governance: GovernanceConfig) -> None:
    decision = _decide(governance, text="Where is my card?")
    assert decision is not None
    assert (decision.tier, decision.role) == ("bounded", "fast")
    assert decision.model_version == governance.roles["fast"].version
    assert decision.tokens.conversation < 2048
    assert "fast_max_tokens=2048" in decision.reasons[0]


def test_long_conversation_goes_to_long_context(governance: GovernanceConfig) -> None:
    decision = _decide(governance, text="statement line " * 1500, channel="email")
    assert decision is not None
    assert (decision.tier, decision.role) == ("extended", "long_context")
    assert decision.tokens.conversation >= 2048
    assert decision.model == "gpt-4.1"


@pytest.mark.parametrize("text", ["My card was stolen", "statement line " * 1500])
def test_compliance_tag_pins_whatever_the_size(governance: GovernanceConfig, text: str) -> None:
    decision = _decide(governance, text=text, tags=("compliance",))
    assert decision is not None
    assert decision.role == "compliance"
    assert any(reason.startswith("tag:compliance") for reason in decision.reasons)


def test_agent_turns_are_not_routed(governance: GovernanceConfig) -> None:
    assert _decide(governance, role="agent") is None


def test_threshold_comes_from_config(governance: GovernanceConfig, tmp_path: Path) -> None:
    tight = governance.model_copy(
        update={"routing": governance.routing.model_copy(update={"fast_max_tokens": 3})}
    )
    decision = _decide(tight, text="Where is my card please?")
    assert decision is not None
    assert decision.role == "long_context"
