"""Benchmark traffic the router never trained on: banking77 rows held out by training.

`splitpin router train` holds back, per intent, 10 % of banking77 `train.csv` with a fixed
seed (`load_training_data`: 1,003 rows) and fits the heads on the rest. This module takes
exactly those rows (through the same function, so the selection cannot drift), drops any
whose text also occurs among the training rows, and turns each into a one-question
conversation: chat or email in the sample's proportions (28 % email). Compliance-bound
questions (governance `routing.compliance_intents`) keep their natural share (~10 %) and
carry no tag: the router has to recognise them, as it would in production. The gold intent
is returned beside the events, never inside them, so nothing in the flow can read it.

Caveat, stated in the bench output: training chose hyper-parameters on these rows, and
`splitpin router calibrate` fits its confidence maps on one half of them
(`calibration.halves`); `part="evaluation"` keeps only the other half, which nothing fitted.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from splitpin.core.router.train import load_training_data
from splitpin.providers.calibration import halves
from splitpin.schemas.events import ConversationEvent

START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
EMAIL_SHARE = 0.28
"""Share of bank conversations that are email in data/sample/events.jsonl."""
TENANT = "acme-bank"
_GREETINGS = ("Hello,", "Hi,", "Dear team,")
_SIGN_OFFS = ("Thanks,", "Regards,", "Best,")
_NAMES = ("Dana Okafor", "Priya Raman", "Tomasz Nowak", "Leah Fischer", "Marcus Bell")


@dataclass(frozen=True, slots=True)
class HeldOut:
    """One held-out banking77 question and its gold intent."""

    index: int
    """Position in training's held-out split (`TrainingData.banking_val`)."""
    text: str
    intent: str


@dataclass(frozen=True, slots=True)
class Traffic:
    events: list[ConversationEvent]
    gold: dict[str, str]
    """event_id -> gold banking77 intent."""
    compliance: set[str]
    """event_ids whose gold intent is compliance-bound."""


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


Part = Literal["all", "calibration", "evaluation"]


def heldout_rows(data_dir: Path, part: Part = "all") -> tuple[list[HeldOut], int]:
    """The rows training held out (`calibration` / `evaluation`: only that half of
    `calibration.halves`; constants are chosen on the first, quoted on the second), minus
    texts also present in training; and how many were dropped for that.

    Raises ConfigError (naming the file) when the shared data is absent.
    """
    data = load_training_data(data_dir)
    trained = {_norm(text) for text, _ in data.banking_train}
    wanted = set(range(len(data.banking_val)))
    if part != "all":
        split = halves([t for t, _ in data.banking_val], [c for _, c in data.banking_val])
        wanted = set(split[1] if part == "evaluation" else split[0])
    kept: list[HeldOut] = []
    dropped = 0
    for n, (text, intent) in enumerate(data.banking_val):
        if n not in wanted:
            continue
        if _norm(text) in trained:
            dropped += 1
            continue
        kept.append(HeldOut(n, text.strip(), intent))
    return kept, dropped


def as_email(text: str, rng: random.Random) -> str:
    """The question wrapped as a short email: a greeting, the question as a sentence, a
    sign-off and a name, each drawn from `rng` (the lists above)."""
    sentence = text if text[-1:] in ".?!" else f"{text}."
    greeting = rng.choice(_GREETINGS)
    return f"{greeting}\n\n{sentence}\n\n{rng.choice(_SIGN_OFFS)}\n{rng.choice(_NAMES)}"


def build_traffic(
    rows: Sequence[HeldOut],
    compliance_intents: Sequence[str],
    *,
    seed: int = 14,
    email_share: float = EMAIL_SHARE,
    spacing: timedelta = timedelta(seconds=2),
) -> Traffic:
    """One conversation per row, shuffled with `seed`; exactly round(n x email_share) emails."""
    rng = random.Random(seed)
    order = list(rows)
    rng.shuffle(order)
    emails = set(rng.sample(range(len(order)), round(len(order) * email_share)))
    bound = set(compliance_intents)
    events: list[ConversationEvent] = []
    gold: dict[str, str] = {}
    compliance: set[str] = set()
    for i, row in enumerate(order):
        channel = "email" if i in emails else "chat"
        text = row.text
        if channel == "email":
            text = as_email(text, rng)
        conversation_id = f"heldout-{channel}-{i:04d}"
        event_id = f"{conversation_id}-001"
        events.append(
            ConversationEvent(
                event_id=event_id,
                conversation_id=conversation_id,
                tenant_id=TENANT,
                channel=channel,
                role="customer",
                text=text,
                sent_at=START + spacing * i,
                metadata={"source": "banking77", "split": "heldout", "row": row.index},
            )
        )
        gold[event_id] = row.intent
        if row.intent in bound:
            compliance.add(event_id)
    return Traffic(events, gold, compliance)
