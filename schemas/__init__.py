"""Pydantic v2 models for every topic and for the governance config.

Wire models are frozen, carry `schema_version`, and travel as JSON encoded by orjson.
"""

from splitpin.schemas.dead_letter import DeadLetter
from splitpin.schemas.decisions import RoutingDecision, TokenCounts
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.metrics import CostRecord, WindowedCost
from splitpin.schemas.replies import Citation, Reply
from splitpin.schemas.validation import ValidationFailure
from splitpin.schemas.wire import SCHEMA_VERSION, WireModel, decode, encode

__all__ = [
    "SCHEMA_VERSION",
    "Citation",
    "ConversationEvent",
    "CostRecord",
    "DeadLetter",
    "Reply",
    "RoutingDecision",
    "TokenCounts",
    "ValidationFailure",
    "WindowedCost",
    "WireModel",
    "decode",
    "encode",
]
