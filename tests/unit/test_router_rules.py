"""The cheap rules settle only whole-message pleasantries; anything with content goes on."""

from __future__ import annotations

import pytest

from splitpin.core.router import rules
from splitpin.core.router.heads import normalize


@pytest.mark.parametrize(
    ("text", "rule", "domain_intent"),
    [
        ("hi", "greeting", "greeting"),
        ("Hello there!", "greeting", "greeting"),
        ("good morning :)", "greeting", "greeting"),
        ("Thanks so much!", "thanks", "thank_you"),
        ("thank you.", "thanks", "thank_you"),
        ("bye", "goodbye", "goodbye"),
        ("have a nice day!", "goodbye", "goodbye"),
        ("OK", "acknowledgement", "yes"),
        ("got it, thanks", "acknowledgement", "yes"),
        ("nope", "refusal", "no"),
        ("👍", "no_words", "oos"),
        ("?!", "no_words", "oos"),
        ("", "no_words", "oos"),
    ],
)
def test_obvious_turns_match(text: str, rule: str, domain_intent: str) -> None:
    hit = rules.match(normalize(text))
    assert hit is not None
    assert (hit.name, hit.domain_intent) == (rule, domain_intent)
    assert hit.out_of_scope == (domain_intent == "oos")


@pytest.mark.parametrize(
    "text",
    [
        "hi, my card still hasn't arrived",
        "thanks, but I was charged twice",
        "ok so where is my refund",
        "no I did not make this payment",
        "hello? is anyone there to help me with a transfer",
        "1234",
        "my pin is blocked",
    ],
)
def test_messages_with_content_go_to_the_model(text: str) -> None:
    assert rules.match(normalize(text)) is None


def test_rule_names_are_unique() -> None:
    names = [r.name for r in rules.RULES]
    assert len(names) == len(set(names))


def test_emoticons_and_long_punctuation_runs() -> None:
    assert rules.match("hi :D") is not None
    assert rules.match("thanks!!! :-)") is not None
    assert rules.match("hi" + "!" * 70) is not None
    # Over MAX_RULE_CHARS nothing is a pleasantry: the model decides.
    assert rules.match("hi" + "!" * rules.MAX_RULE_CHARS) is None
    assert rules.match("!" * (rules.MAX_RULE_CHARS + 1)) is None
