"""The context-window guard: over-limit prompts are impossible by construction."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpin.core.summarizer import HEADER, digest, summarize
from splitpin.core.tokens import count_tokens
from splitpin.operators.context_guard import (
    MESSAGE_OVERHEAD_TOKENS,
    Overflow,
    PromptPlan,
    PromptTurn,
    plan_prompt,
)
from splitpin.schemas.governance import ContextConfig, RoleConfig

CONTEXT = ContextConfig(system_prompt_tokens=600, summary_max_tokens=512, fit_order=("fast",))
INCIDENT_ROLE = RoleConfig(
    provider="openai",
    model="gpt-incident",
    version="gpt-incident-1",
    context_window=65_536,
    max_output_tokens=4_096,
    price_in_per_mtok=1.0,
    price_out_per_mtok=2.0,
    tokenizer="cl100k_base",
)


def _turns(sizes: list[int]) -> list[PromptTurn]:
    return [
        PromptTurn("customer", f"Turn {i}. More words follow here.", {"cl100k_base": size})
        for i, size in enumerate(sizes)
    ]


def test_small_conversation_fits_whole() -> None:
    plan = plan_prompt(
        "long_context", INCIDENT_ROLE, CONTEXT, _turns([100, 200, 300]), [], allow_compaction=False
    )
    assert isinstance(plan, PromptPlan)
    assert plan.compacted_turns == 0 and plan.included_turns == 3
    assert plan.prompt_tokens == 600 + 600 + 3 * MESSAGE_OVERHEAD_TOKENS


def test_the_incident_conversation_is_compacted_to_fit() -> None:
    # tokens=131072 limit=65536: the request that overflowed, retried and cascaded.
    turns = _turns([4_096] * 32)
    assert sum(t.counts["cl100k_base"] for t in turns) == 131_072
    assert (
        plan_prompt("long_context", INCIDENT_ROLE, CONTEXT, turns, [], allow_compaction=False)
        is None
    )

    plan = plan_prompt("long_context", INCIDENT_ROLE, CONTEXT, turns, [], allow_compaction=True)
    assert isinstance(plan, PromptPlan)
    assert plan.prompt_tokens + INCIDENT_ROLE.max_output_tokens <= 65_536
    assert plan.compacted_turns > 0
    assert plan.included_turns + plan.compacted_turns == 32
    assert 0 < plan.summary_tokens <= CONTEXT.summary_max_tokens


def test_a_single_message_over_the_window_overflows() -> None:
    result = plan_prompt(
        "long_context", INCIDENT_ROLE, CONTEXT, _turns([10, 131_072]), [], allow_compaction=True
    )
    assert isinstance(result, Overflow)
    assert result.limit == 65_536
    assert result.needed_tokens > 131_072


@pytest.mark.parametrize("seed", range(25))
def test_no_plan_ever_exceeds_the_window(seed: int) -> None:
    rng = random.Random(seed)
    window = rng.choice([2_048, 8_192, 65_536])
    role = INCIDENT_ROLE.model_copy(
        update={"context_window": window, "max_output_tokens": rng.choice([256, 1_024])}
    )
    context = ContextConfig(
        system_prompt_tokens=rng.choice([0, 300, 600]),
        summary_max_tokens=rng.choice([64, 512]),
        fit_order=("fast",),
    )
    turns = _turns([rng.randint(1, window // 2) for _ in range(rng.randint(1, 40))])
    digests = [f"- customer: earlier point {i}" for i in range(rng.randint(0, 10))]
    result = plan_prompt("fast", role, context, turns, digests, allow_compaction=True)
    if isinstance(result, PromptPlan):
        assert result.prompt_tokens + role.max_output_tokens <= window
        assert result.included_turns >= 1  # the newest message is always kept verbatim
    else:
        assert isinstance(result, Overflow)
        assert turns[-1].counts["cl100k_base"] + MESSAGE_OVERHEAD_TOKENS > (
            window - role.max_output_tokens - context.system_prompt_tokens
        )


def test_summary_keeps_newest_digests_within_budget() -> None:
    lines = [
        digest("customer", f"Question number {i}. With detail.", "cl100k_base") for i in range(50)
    ]
    text, tokens = summarize(lines, 60, "cl100k_base")
    assert text.startswith(HEADER)
    assert "Question number 49" in text and "Question number 0." not in text
    assert tokens <= 60
    assert count_tokens(text, "cl100k_base") <= tokens


def test_digest_takes_the_first_sentence_and_caps_it() -> None:
    assert digest("agent", "Your card ships today.  It arrives soon.", "cl100k_base") == (
        "- agent: Your card ships today."
    )
    long_line = digest("customer", "word " * 500, "cl100k_base")
    assert long_line.endswith("...") and count_tokens(long_line, "cl100k_base") < 60


@given(
    sizes=st.lists(st.integers(1, 30_000), min_size=1, max_size=30),
    digests=st.integers(0, 12),
    window=st.sampled_from([2_048, 8_192, 65_536]),
    summary_max=st.sampled_from([16, 64, 512]),
    compact=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_a_summary_as_long_as_its_limit_still_fits(
    sizes: list[int], digests: int, window: int, summary_max: int, compact: bool
) -> None:
    """A model may rewrite the summary up to `summary_limit` tokens: the plan with that
    summary (`max_prompt_tokens`) still fits the window, and the limit never exceeds
    `summary_max_tokens` nor falls below the extractive summary it may replace."""
    role = INCIDENT_ROLE.model_copy(update={"context_window": window, "max_output_tokens": 512})
    context = ContextConfig(system_prompt_tokens=300, summary_max_tokens=summary_max)
    earlier = [f"- customer: earlier point {i}." for i in range(digests)]
    result = plan_prompt("fast", role, context, _turns(sizes), earlier, allow_compaction=compact)
    if not isinstance(result, PromptPlan):
        return
    assert result.max_prompt_tokens + role.max_output_tokens <= window
    if result.summary:
        assert result.summary_tokens <= result.summary_limit <= summary_max
    else:
        assert result.summary_limit == 0 and result.max_prompt_tokens == result.prompt_tokens
