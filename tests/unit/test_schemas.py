"""Wire models: versioned, frozen, orjson round-trip, committed JSON Schema files in sync."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from splitpin.schemas import ConversationEvent, DeadLetter, decode, encode
from splitpin.schemas.export import EXPORTED, SCHEMA_DIR, render_json_schemas
from splitpin.schemas.wire import RFC3339_PATTERN, VISIBLE_PATTERN, WireModel, has_visible
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


# --- Strictness: the published schema says what the model enforces -----------------------

JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def _schema_accepts(schema: dict[str, Any], value: Any) -> bool:
    """The keywords the door relies on (type, enum, const, pattern, lengths, items), as JSON Schema
    2020-12 defines them; `format` is an annotation there, so it is not applied."""
    expected = schema.get("type")
    if expected is not None:
        if isinstance(value, bool) and expected not in ("boolean",):
            return False
        integral_float = isinstance(value, float) and value.is_integer()
        if not isinstance(value, JSON_TYPES[expected]) and not (
            expected == "integer" and integral_float
        ):
            return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "const" in schema and not (value == schema["const"] and not isinstance(value, bool)):
        return False
    if isinstance(value, str):
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            return False
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1e9):
            return False
    if isinstance(value, list) and "items" in schema:
        return all(_schema_accepts(schema["items"], item) for item in value)
    return True


def _published(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = orjson.loads((SCHEMA_DIR / f"{name}.schema.json").read_bytes())
    return schema


def test_every_published_schema_version_is_the_integer_one() -> None:
    for name, model in EXPORTED.items():
        if not issubclass(model, WireModel):
            continue
        version = _published(name)["properties"]["schema_version"]
        assert (version["type"], version["const"]) == ("integer", 1), name


def test_instants_are_published_as_rfc3339_strings_with_an_offset() -> None:
    for name, field in [("conversation-event", "sent_at"), ("cost-record", "occurred_at")]:
        prop = _published(name)["properties"][field]
        assert (prop["type"], prop["format"], prop["pattern"]) == (
            "string",
            "date-time",
            RFC3339_PATTERN,
        )


def test_text_fields_publish_the_visible_character_pattern() -> None:
    props = _published("conversation-event")["properties"]
    for field in ("text", "event_id", "conversation_id", "tenant_id"):
        assert props[field]["pattern"] == VISIBLE_PATTERN, field
    assert props["tags"]["items"]["pattern"] == VISIBLE_PATTERN


# (field, value): each rejected by the model, and each must be rejected by the schema too.
HOSTILE: list[tuple[str, Any]] = [
    ("schema_version", "1"),
    ("schema_version", True),
    ("schema_version", [1]),
    ("schema_version", {"v": 1}),
    ("schema_version", 2),
    ("sent_at", 0),
    ("sent_at", 1.5),
    ("sent_at", "1764151200"),
    ("sent_at", "2026-11-02T09:00:00"),
    ("sent_at", "2026-11-02"),
    ("sent_at", ["2026-11-02T09:00:00Z"]),
    ("text", ""),
    ("text", "   "),
    ("text", "\u200b\u200c\u200d"),
    ("text", "\ufeff\u2060"),
    ("text", "\x00\x07\u00ad"),
    ("text", 42),
    ("tenant_id", "\u200b"),
    ("event_id", " \ufeff "),
    ("tags", ["\u2060"]),
    ("tags", "compliance"),
    ("channel", "fax"),
]


@pytest.mark.parametrize(("field", "value"), HOSTILE)
def test_what_the_model_rejects_the_published_schema_rejects(field: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        ConversationEvent.model_validate({**event_dict(), field: value})
    prop = _published("conversation-event")["properties"][field]
    assert not _schema_accepts(prop, value), f"schema accepts {field}={value!r}"


def test_the_one_known_gap_is_an_integral_float_version() -> None:
    """JSON Schema's data model has one number 1 (1.0 is an integer there), so the schema
    cannot refuse `1.0`; the model does, as the issue asks: a producer writing floats is
    broken and should hear about it."""
    with pytest.raises(ValidationError):
        ConversationEvent.model_validate({**event_dict(), "schema_version": 1.0})
    assert _schema_accepts(_published("conversation-event")["properties"]["schema_version"], 1.0)


@given(st.text(alphabet=st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"])))
def test_visible_pattern_and_model_agree_on_the_basic_plane(text: str) -> None:
    assert (re.search(VISIBLE_PATTERN, text) is not None) == has_visible(text)


@given(st.text(max_size=40) | st.datetimes(timezones=st.timezones()).map(datetime.isoformat))
def test_every_instant_the_model_accepts_matches_the_published_pattern(text: str) -> None:
    try:
        ConversationEvent.model_validate({**event_dict(), "sent_at": text})
    except ValidationError:
        return
    assert re.search(RFC3339_PATTERN, text) is not None
