"""Conversation turns as the model stage carries them: one `Message` per turn, by role.

A system event (support-platform notice) keeps its own role all the way to the provider's
prompt builder, which renders it under a header customer text cannot produce: a customer
message that starts with `[system]` stays a customer message (docs/architecture.md,
"Sources come from splitpin"). The text is kept verbatim here; neutralising it is the
prompt builder's job (splitpin/providers/prompting.py), so validation still sees what was written.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from splitpin.operators.conversation_state import Turn
from splitpin.providers.base import Message

MESSAGE_ROLES: dict[str, Literal["user", "assistant", "system"]] = {
    "customer": "user",
    "agent": "assistant",
    "system": "system",
}
"""Sender role -> message role; an unknown sender is treated as the customer (least trust)."""


def turn_messages(turns: Iterable[Turn]) -> tuple[Message, ...]:
    """The planned turns, oldest first, each under its sender's message role."""
    return tuple(
        Message(role=MESSAGE_ROLES.get(turn.role, "user"), content=turn.text) for turn in turns
    )
