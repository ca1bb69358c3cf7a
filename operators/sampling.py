"""What a canary topology mirrors and where it may write (see splitpin/app/canary.py).

A canary sees only whole conversations: the sample is decided by a hash of the
conversation_id alone, so every turn of a sampled conversation is mirrored and no turn of
another one is, on every worker, in every process and across restarts (no state, no seed).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from splitpin.operators.isolation import Failed
from splitpin.schemas.dead_letter import DeadLetter
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.metrics import CostRecord

_POINT_BYTES = 8
_POINT_SCALE = float(1 << (8 * _POINT_BYTES))


def sample_point(conversation_id: str) -> float:
    """The conversation's place in [0, 1): the first 8 bytes of sha256(id, UTF-8), big-endian,
    over 2**64. Uniform, and the same everywhere."""
    digest = hashlib.sha256(conversation_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:_POINT_BYTES], "big") / _POINT_SCALE


def in_sample(conversation_id: str, fraction: float) -> bool:
    """True when the conversation is mirrored: its point is below `fraction` (0: none, 1: all)."""
    return sample_point(conversation_id) < fraction


def mirrored(item: ConversationEvent | DeadLetter | Failed, fraction: float) -> bool:
    """Events by their conversation; ingest's dead letters (and records ingest failed on)
    by their record key (what the producer keyed the conversation by), those without a
    key are left to the primary."""
    if isinstance(item, ConversationEvent):
        return in_sample(item.conversation_id, fraction)
    if isinstance(item, Failed):
        item = item.letter
    if item.key_b64 is None:
        return False
    try:
        key = base64.b64decode(item.key_b64).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return in_sample(key, fraction)


def mark_shadow(item: object) -> object:
    """A canary's CostRecord is a shadow one: never counted against a tenant's budget."""
    if isinstance(item, CostRecord) and not item.shadow:
        return item.model_copy(update={"shadow": True})
    return item


class ForeignTopicError(RuntimeError):
    """A canary tried to write outside its prefix: the flow stops rather than reach customers."""


def require_prefix(topic: str, prefix: str) -> None:
    """Refuse any topic that does not start with the canary's prefix."""
    if not prefix or not topic.startswith(prefix):
        msg = f"canary refuses to write to {topic!r}: only topics prefixed {prefix!r} are its own"
        raise ForeignTopicError(msg)
