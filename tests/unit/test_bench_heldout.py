"""bench/heldout.py: the incident bench's traffic is made only of rows training held out.

Offline: the data directory is written here (the shared data, when present, is checked too).
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bench.heldout import EMAIL_SHARE, HeldOut, build_traffic, heldout_rows
from splitpin.core.router.train import DEFAULT_DATA_DIR, load_training_data
from splitpin.core.settings import load_settings
from splitpin.providers.calibration import halves

COMPLIANCE = ("lost_or_stolen_card", "verify_my_identity")
INTENTS = ("card_arrival", "top_up_failed", *COMPLIANCE)


def write_data(directory: Path, rows: list[tuple[str, str]]) -> None:
    """The four files `load_training_data` reads, with `rows` as banking77 train.csv."""
    (directory / "banking77").mkdir()
    (directory / "clinc150").mkdir()
    with (directory / "banking77" / "train.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "category"])
        writer.writerows(rows)
    (directory / "banking77" / "categories.json").write_text(json.dumps(sorted(INTENTS)))
    clinc = {"train": [["hi there", "greeting"]], "oos_train": [], "val": [], "oos_val": []}
    (directory / "clinc150" / "data.json").write_text(json.dumps(clinc))
    domains = {"small_talk": ["greeting"], "meta": []}
    (directory / "clinc150" / "domains.json").write_text(json.dumps(domains))


texts = st.text(alphabet="abcdefgh ", min_size=1, max_size=12).filter(lambda t: t.strip())
labelled = st.lists(st.tuples(texts, st.sampled_from(INTENTS)), min_size=1, max_size=120)


@settings(max_examples=40, deadline=None)
@given(labelled)
@example([("where is my card", "card_arrival")] * 20)  # the held-out copies are dropped
def test_heldout_rows_are_training_held_out_rows_never_its_texts(
    rows: list[tuple[str, str]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_data(Path(tmp), rows)
        held, dropped = heldout_rows(Path(tmp))
        evaluation, _ = heldout_rows(Path(tmp), "evaluation")
        data = load_training_data(Path(tmp))
    trained = {" ".join(t.casefold().split()) for t, _ in data.banking_train}
    assert all(" ".join(r.text.casefold().split()) not in trained for r in held)
    assert len(held) + dropped == len(data.banking_val)
    if len(set(rows)) == 1 and len(rows) > 1:
        assert held == [] and dropped == len(data.banking_val) > 0
    # Every kept row is the held-out pair at its index, unchanged apart from stripping.
    for row in held:
        text, intent = data.banking_val[row.index]
        assert (row.text, row.intent) == (text.strip(), intent)
    # The evaluation part: the kept rows calibration did not fit on, and only those.
    fitted, _ = halves([t for t, _ in data.banking_val], [c for _, c in data.banking_val])
    assert evaluation == [r for r in held if r.index not in set(fitted)]


heldout = st.lists(
    st.builds(HeldOut, st.integers(0, 10**6), texts.map(str.strip), st.sampled_from(INTENTS)),
    min_size=0,
    max_size=200,
)


@settings(max_examples=60, deadline=None)
@given(heldout, st.integers(0, 2**32))
def test_traffic_is_deterministic_one_conversation_per_row_in_proportion(
    rows: list[HeldOut], seed: int
) -> None:
    traffic = build_traffic(rows, COMPLIANCE, seed=seed)
    again = build_traffic(rows, COMPLIANCE, seed=seed)
    assert [e.model_dump() for e in traffic.events] == [e.model_dump() for e in again.events]
    assert len(traffic.events) == len(rows) == len(traffic.gold)
    assert len({e.conversation_id for e in traffic.events}) == len(rows)
    assert sorted(traffic.gold.values()) == sorted(r.intent for r in rows)
    emails = sum(e.channel == "email" for e in traffic.events)
    assert emails == round(len(rows) * EMAIL_SHARE)
    assert traffic.compliance == {e for e, i in traffic.gold.items() if i in COMPLIANCE}
    for event in traffic.events:
        # The router must recognise compliance itself, and must not be able to read the gold.
        assert event.tags == () and event.role == "customer"
        assert "intent" not in event.metadata
        assert event.metadata["split"] == "heldout"


@pytest.mark.skipif(
    not (DEFAULT_DATA_DIR / "banking77" / "train.csv").is_file(), reason="no shared data"
)
def test_shared_data_gives_the_1003_heldout_rows_with_their_compliance_share() -> None:
    held, dropped = heldout_rows(DEFAULT_DATA_DIR)
    assert len(held) + dropped == 1003
    assert len(held) >= 990
    bound = load_settings().governance.routing.compliance_intents
    traffic = build_traffic(held, bound)
    share = len(traffic.compliance) / len(traffic.events)
    assert 0.08 <= share <= 0.13  # 8 of 77 intents, stratified
