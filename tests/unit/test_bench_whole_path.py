"""The whole-path bench's workload: N distinct one-question chat conversations of acme-bank.

A rate is only honest if every event is a fresh conversation with its own ids (a reused id
would be deduplicated by the flow, a shared conversation would change routing), and the
questions are the held-out rows, cycled in order when N exceeds them.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.heldout import HeldOut
from bench.whole_path import build_events, cycle_rows

ROWS = st.lists(
    st.builds(
        HeldOut,
        index=st.integers(0, 2000),
        text=st.text(alphabet="abcdefgh ?", min_size=1, max_size=30).map(str.strip).filter(bool),
        intent=st.sampled_from(["card_arrival", "lost_or_stolen_card", "top_up_failed"]),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=100, deadline=None)
@given(rows=ROWS, count=st.integers(1, 80))
def test_cycled_rows_repeat_the_held_out_rows_in_order(rows: list[HeldOut], count: int) -> None:
    cycled = cycle_rows(rows, count)
    assert [row for _, row in cycled] == [rows[n % len(rows)] for n in range(count)]
    assert [copy for copy, _ in cycled] == [n // len(rows) for n in range(count)]


@settings(max_examples=60, deadline=None)
@given(rows=ROWS, count=st.integers(1, 80))
def test_every_event_is_a_fresh_chat_conversation(rows: list[HeldOut], count: int) -> None:
    events = build_events(rows, count, ["lost_or_stolen_card"], seed=14)
    assert len(events) == count
    assert len({e.event_id for e in events}) == count
    assert len({e.conversation_id for e in events}) == count
    assert all(e.channel == "chat" and e.tenant_id == "acme-bank" for e in events)
    assert all(e.role == "customer" and not e.tags for e in events)  # compliance untagged
    texts = sorted(e.text for e in events)
    assert texts == sorted(rows[n % len(rows)].text for n in range(count))
