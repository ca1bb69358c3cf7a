"""Routing policy and guard on real conversation state: pins, tiers, fits, compaction, cache."""

from __future__ import annotations

from dataclasses import replace

from tests.routing_helpers import SHIPPED, Conversation, classification, governance


def test_short_bounded_request_goes_to_fast() -> None:
    plan = Conversation(SHIPPED).say("Where is my new card?")
    assert plan is not None and plan.plan is not None
    assert (plan.choice.tier, plan.choice.role, plan.plan.role) == ("bounded", "fast", "fast")
    assert not plan.choice.pinned
    assert plan.plan.prompt_tokens > 0
    assert plan.choice.features["intent"] == "card_arrival"


def test_small_talk_goes_to_the_trivial_role() -> None:
    plan = Conversation(SHIPPED).say("hi there!", classification(trivial=True, rule="greeting"))
    assert plan is not None
    assert plan.choice.tier == "trivial"
    assert plan.choice.role == SHIPPED.routing.trivial_role
    assert "rule greeting" in plan.choice.reasons[0]


def test_compliance_intent_pins_whatever_the_size() -> None:
    conversation = Conversation(SHIPPED)
    conversation.say("statement line " * 1500)
    plan = conversation.say(
        "someone used my card", classification("compromised_card", compliance=True)
    )
    assert plan is not None and plan.plan is not None
    assert plan.choice.tier == "extended"
    assert (plan.choice.role, plan.plan.role, plan.choice.pinned) == ("compliance",) * 2 + (True,)
    assert any("compliance intent compromised_card" in r for r in plan.choice.reasons)


def test_compliance_tag_pins_even_without_a_compliance_intent() -> None:
    plan = Conversation(SHIPPED).say("hello", classification(trivial=True), tags=("compliance",))
    assert plan is not None
    assert plan.choice.role == "compliance" and plan.choice.pinned


def test_extended_conversation_goes_to_long_context() -> None:
    plan = Conversation(SHIPPED).say("statement line " * 1500)
    assert plan is not None and plan.plan is not None
    assert (plan.choice.tier, plan.plan.role) == ("extended", "long_context")


def test_out_of_scope_is_recorded_in_the_reasons() -> None:
    plan = Conversation(SHIPPED).say("how tall is everest", classification(out_of_scope=True))
    assert plan is not None
    assert any(r.startswith("out of scope") for r in plan.choice.reasons)


def test_a_role_whose_window_is_too_small_is_replaced_by_one_that_fits() -> None:
    # fast: 3,000-token window, 1,000 output, 600 reserved -> 1,400 for the conversation.
    gov = governance(roles={"fast": {"context_window": 3_000, "max_output_tokens": 1_000}})
    conversation = Conversation(gov)
    conversation.say("hello " * 900)
    plan = conversation.say("hello " * 900)
    assert plan is not None and plan.plan is not None
    assert plan.choice.tier == "bounded" and plan.choice.role == "fast"
    assert plan.plan.role == "long_context" and plan.plan.compacted_turns == 0
    assert any("fast window 3000 too small" in r for r in plan.reasons)


def test_a_pinned_role_compacts_instead_of_switching() -> None:
    gov = governance(roles={"compliance": {"context_window": 3_000, "max_output_tokens": 1_000}})
    conversation = Conversation(gov)
    for _ in range(3):
        conversation.say("my card was stolen and I need help " * 60, tags=("compliance",))
    plan = conversation.say("please answer", tags=("compliance",))
    assert plan is not None and plan.plan is not None
    assert plan.plan.role == "compliance"
    assert plan.plan.compacted_turns >= 1
    assert plan.plan.prompt_tokens + 1_000 <= 3_000
    assert any(r.startswith("compacted") for r in plan.reasons)


def test_a_message_no_window_can_hold_is_refused_before_dispatch() -> None:
    small = {"context_window": 4_096, "max_output_tokens": 512}
    gov = governance(roles={"fast": small, "long_context": small, "compliance": small})
    plan = Conversation(gov).say("statement line " * 2_000)
    assert plan is not None
    assert plan.plan is None and plan.overflow is not None
    assert plan.overflow.limit == 4_096 and plan.overflow.needed_tokens > 4_096
    assert any(r.startswith("ContextOverflow: tokens=") for r in plan.reasons)


def test_repeated_question_within_ttl_reuses_the_decision() -> None:
    conversation = Conversation(SHIPPED)
    first = conversation.say("Where is my card?", classification("card_arrival"), at_s=0)
    again = conversation.say("where is my card", classification("card_delivery_estimate"), at_s=60)
    late = conversation.say(
        "Where is my card??", classification("card_delivery_estimate"), at_s=60 + 601
    )
    assert first is not None and again is not None and late is not None
    assert first.cache_hit_of is None
    assert again.cache_hit_of == "c-1-0"
    assert again.choice == first.choice  # reused, not recomputed from the new classification
    assert late.cache_hit_of is None  # past the 600 s TTL
    assert late.choice.intent == "card_delivery_estimate"


def test_agent_turns_are_not_routed() -> None:
    assert Conversation(SHIPPED).say("Let me check that for you.", role="agent") is None


def test_cached_untagged_choice_never_serves_the_tagged_repeat() -> None:
    """Issue 10: the same text first untagged then tagged `compliance` went to fast."""
    conversation = Conversation(SHIPPED)
    first = conversation.say("Can you help me with something?", at_s=0)
    tagged = conversation.say("Can you help me with something?", at_s=30, tags=("compliance",))
    assert first is not None and tagged is not None
    assert first.choice.role == "fast" and not first.choice.pinned
    assert (tagged.choice.role, tagged.choice.pinned) == ("compliance", True)
    assert tagged.plan is not None and tagged.plan.role == "compliance"


def test_cache_hit_never_lifts_a_pin_from_the_current_classification() -> None:
    conversation = Conversation(SHIPPED)
    conversation.say("my card", classification("card_arrival"), at_s=0)
    again = conversation.say(
        "My card!", classification("lost_or_stolen_card", compliance=True), at_s=10
    )
    assert again is not None and again.cache_hit_of == "c-1-0"  # the base choice is reused
    assert (again.choice.role, again.choice.pinned) == ("compliance", True)


def test_pinning_tags_are_compared_normalised() -> None:
    """Ingest normalises tags too; the router does not rely on it (events built raw here)."""
    conversation = Conversation(SHIPPED)
    plan = conversation.say("hello", classification(trivial=True))
    assert plan is not None and not plan.choice.pinned
    state, observation = conversation.tracker.observe(
        conversation.state,
        plan.observation.event.model_copy(
            update={
                "event_id": "raw",
                "tags": ("Compliance ",),
                "sent_at": plan.observation.event.sent_at,
            }
        ),
    )
    assert observation is not None and state is not None
    pinned = conversation.router.route(state, observation, classification(trivial=True))
    assert pinned is not None and pinned.choice.pinned and pinned.choice.role == "compliance"
    assert any(r.startswith("tag:compliance pins") for r in pinned.choice.reasons)


def test_a_compliance_piece_pins_and_names_the_piece() -> None:
    klass = replace(
        classification("exchange_rate"), compliance=True, compliance_score=0.96, compliance_piece=2
    )
    plan = Conversation(SHIPPED).say("Hi! Lovely app. My card was stolen...", klass)
    assert plan is not None and plan.choice.pinned and plan.choice.role == "compliance"
    assert any("compliance piece 2 of the message" in r for r in plan.choice.reasons)


def test_an_unscanned_message_is_pinned_and_says_why() -> None:
    klass = replace(classification("exchange_rate"), compliance=True, unscanned_pieces=500)
    plan = Conversation(SHIPPED).say("a. " * 500, klass)
    assert plan is not None and plan.choice.pinned and plan.choice.role == "compliance"
    assert any("compliance unscanned: 500 pieces" in r for r in plan.choice.reasons)
