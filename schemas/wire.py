"""The shared base of every record on a topic, and its orjson codec."""

from __future__ import annotations

from typing import Any, Final, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION: Final[Literal[1]] = 1
"""Bump when a wire model changes incompatibly; ingest rejects versions it does not know."""

SUPPORTED_SCHEMA_VERSIONS = frozenset({SCHEMA_VERSION})

M = TypeVar("M", bound="WireModel")


class WireModel(BaseModel):
    """Frozen, strict about unknown fields, versioned."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION


def encode(record: WireModel) -> bytes:
    """Serialize with orjson; keys keep declaration order so equal records are equal bytes."""
    return orjson.dumps(record.model_dump(mode="json"))


def decode(model: type[M], raw: bytes | str | dict[str, Any]) -> M:
    """Parse bytes (or an already-decoded dict) into `model`."""
    data = raw if isinstance(raw, dict) else orjson.loads(raw)
    return model.model_validate(data)
