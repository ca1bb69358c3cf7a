"""Wire models: versioned, frozen, orjson round-trip, committed JSON Schema files in sync."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from schemas import ConversationEvent, DeadLetter, decode, encode
from schemas.export import EXPORTED, SCHEMA_DIR, render_json_schemas
from tests.factories import event_dict


def test_committed_json_schemas_match_the_models() -> None:
    rendered = render_json_schemas()
    committed = {path.name for path in SCHEMA_DIR.glob("*.schema.json")}
    assert committed == set(rendered), "run `splitpin schemas export` and commit the result"
    for name, data in rendered.items():
        assert (SCHEMA_DIR / name).read_bytes() == data, (
            f"{name} drifted from its model: run `splitpin schemas export`"
        )


def test_every_wire_model_carries_schema_version() -> None:
    for name, model in EXPORTED.items():
        assert "schema_version" in model.model_fields, name


def test_event_round_trips_through_orjson() -> None:
    event = ConversationEvent.model_validate(event_dict(tags=("compliance",)))
    assert decode(ConversationEvent, encode(event)) == event
    assert orjson.loads(encode(event))["schema_version"] == 1


def test_encoding_is_deterministic() -> None:
    event = ConversationEvent.model_validate(event_dict(metadata={"b": 1, "a": 2}))
    assert encode(event) == encode(ConversationEvent.model_validate_json(encode(event)))


def test_wire_models_are_frozen() -> None:
    letter = DeadLetter(
        reason="not_json",
        detail="x",
        source_topic="t",
        source_partition=0,
        source_offset=1,
        value_bytes=0,
    )
    with pytest.raises(ValidationError):
        letter.detail = "changed"  # type: ignore[misc]
