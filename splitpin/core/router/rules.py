"""Cheap rules that settle obvious turns before the transformer runs.

A chat is full of "hi", "thanks!", "ok" and "👍": answering them needs no model choice, and
running MiniLM on them costs milliseconds for nothing. Each rule is one anchored regex on
the whole (normalized) message, so a message that says anything more ("thanks, but my card
still hasn't arrived") never matches and goes through the model. Each rule names the
CLINC150 intent it stands for, so a rule hit yields the same kind of Classification as
the model would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Trailing punctuation and emoticons. Possessive (`*+`): no backtracking, so a long run of
# "!!!!" cannot make a match quadratic.
_END = r"(?:[:;]-?[)(DPp]|[\s!.,:;)(*~\-])*+"
MAX_RULE_CHARS = 80
"""Longer messages are never pleasantries; skipping them keeps the rules O(1) per message."""


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    domain_intent: str  # a CLINC150 label, or "oos"
    pattern: re.Pattern[str]

    @property
    def out_of_scope(self) -> bool:
        return self.domain_intent == "oos"


def _rule(name: str, domain_intent: str, body: str) -> Rule:
    return Rule(name, domain_intent, re.compile(rf"^(?:{body}){_END}$", re.IGNORECASE))


RULES: tuple[Rule, ...] = (
    _rule(
        "greeting",
        "greeting",
        r"(?:hi|hello|hey|hiya|howdy|yo|good (?:morning|afternoon|evening|day))"
        r"(?:,? (?:there|all|team|again|everyone|folks))?",
    ),
    _rule(
        "thanks",
        "thank_you",
        r"(?:thanks|thank you|thank u|thx|ty|cheers|many thanks|thanks again)"
        r"(?:,? (?:so much|very much|a lot|again|all|team))?",
    ),
    _rule(
        "goodbye",
        "goodbye",
        r"(?:bye|goodbye|bye bye|see you|see ya|talk (?:to you )?later"
        r"|have a (?:nice|good|great) (?:day|evening|weekend))",
    ),
    _rule(
        "acknowledgement",
        "yes",
        r"(?:ok|okay|k|kk|alright|all right|got it|sounds good|great|cool|perfect|sure"
        r"|yes|yep|yeah|yup|understood|noted|fine)(?:,? (?:thanks|thank you))?",
    ),
    _rule("refusal", "no", r"(?:no|nope|nah|no thanks|no thank you)"),
    # Nothing but punctuation, symbols or emoji: no words to classify.
    Rule("no_words", "oos", re.compile(r"^[^\w]*+$")),
)


def match(text: str) -> Rule | None:
    """The first rule whose pattern matches the whole normalized text, if any."""
    if len(text) > MAX_RULE_CHARS:
        return None
    for rule in RULES:
        if rule.pattern.match(text):
            return rule
    return None
