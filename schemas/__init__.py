"""Pydantic v2 models for every topic and for the governance config.

Wire models are frozen, carry `schema_version`, and travel as JSON encoded by orjson.
"""

from schemas.dead_letter import DeadLetter
from schemas.decisions import RoutingDecision, TokenCounts
from schemas.events import ConversationEvent
from schemas.metrics import CostRecord, WindowedCost
from schemas.replies import Citation, Reply
from schemas.validation import ValidationFailure
from schemas.wire import SCHEMA_VERSION, WireModel, decode, encode

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
