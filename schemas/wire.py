"""The shared base of every record on a topic, its orjson codec, and the strict field types
the door needs: ingest rejects at validation whatever a later stage could not handle."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeVar

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    GetJsonSchemaHandler,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

SCHEMA_VERSION: Final[Literal[1]] = 1
"""Bump when a wire model changes incompatibly; ingest rejects versions it does not know."""

SUPPORTED_SCHEMA_VERSIONS = frozenset({SCHEMA_VERSION})

M = TypeVar("M", bound="WireModel")

RFC3339_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
"""RFC 3339 date-time with a mandatory offset, the form the JSON Schema publishes (ASCII
digits only: Python's `\\d` would take any Unicode digit)."""
_RFC3339 = re.compile(RFC3339_PATTERN)

INVISIBLE_BMP: Final[tuple[tuple[int, int], ...]] = (
    (0x0000, 0x0020), (0x007F, 0x00A0), (0x00AD, 0x00AD), (0x034F, 0x034F),
    (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F),
    (0x0890, 0x0891), (0x08E2, 0x08E2), (0x115F, 0x1160), (0x1680, 0x1680),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x2000, 0x200F), (0x2028, 0x202F),
    (0x205F, 0x2064), (0x2066, 0x206F), (0x2800, 0x2800), (0x3000, 0x3000),
    (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0),
    (0xFFF9, 0xFFFB),
)  # fmt: skip
"""Basic-plane characters that show nothing: whitespace (Z*), controls (Cc), format characters
(Cf: zero-width space/joiners, word joiner, BOM, bidi marks), fillers and variation
selectors. Written out (Unicode 14, Python 3.11) so the published pattern does not change
with the interpreter's Unicode tables."""

VISIBLE_PATTERN: Final = (
    "[^"
    + "".join(
        f"\\u{lo:04x}" if lo == hi else f"\\u{lo:04x}-\\u{hi:04x}" for lo, hi in INVISIBLE_BMP
    )
    + "]"
)
"""JSON Schema `pattern`: at least one character outside INVISIBLE_BMP (ECMA-262 and Python
`re` read `\\uXXXX` alike). The model checks the same set plus every astral Z/Cc/Cf."""

_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf"})


def is_visible(char: str) -> bool:
    code = ord(char)
    if any(lo <= code <= hi for lo, hi in INVISIBLE_BMP):
        return False
    return unicodedata.category(char) not in _INVISIBLE_CATEGORIES


_PRINTABLE_ASCII = re.compile(r"[!-~]")
"""ASCII letters, digits and punctuation: visible by INVISIBLE_BMP and by category alike."""


def has_visible(text: str) -> bool:
    """True when a reader (or a model) would see something: not only spaces or invisibles.
    Nearly every text has a printable ASCII character: one C-level search settles it,
    instead of range and category checks per character from the start."""
    return _PRINTABLE_ASCII.search(text) is not None or any(is_visible(char) for char in text)


def require_visible(value: str) -> str:
    if not has_visible(value):
        msg = "is blank (only whitespace or invisible characters)"
        raise ValueError(msg)
    return value


def _rfc3339_string(value: object) -> object:
    """JSON gives a string; only Python callers may pass a datetime. Numbers, numeric
    strings and dates without an offset are refused before pydantic's lax parsing."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        msg = f"must be an RFC 3339 date-time string, got {type(value).__name__}"
        raise ValueError(msg)
    if not _RFC3339.fullmatch(value):
        msg = "must be an RFC 3339 date-time with a timezone, e.g. 2026-11-02T09:00:00Z"
        raise ValueError(msg)
    return value


def _representable_in_utc(value: datetime) -> datetime:
    """Later stages convert to UTC and POSIX seconds and back; refuse what would overflow.
    A UTC instant away from the calendar's ends converts by construction: every record
    splitpin builds carries one, so it skips the round trip."""
    if value.tzinfo is UTC and 1 < value.year < 9999:
        return value
    try:
        in_utc = value.astimezone(UTC)
        datetime.fromtimestamp(in_utc.timestamp(), UTC)
    except (OverflowError, ValueError, OSError):
        msg = "cannot be represented in UTC (outside years 1-9999 after applying its offset)"
        raise ValueError(msg) from None
    return value


def _json_integer(value: object) -> object:
    """`schema_version` is a JSON integer: 1.0, "1" and true are not 1."""
    if type(value) is not int:
        msg = f"must be a JSON integer, got {type(value).__name__}"
        raise ValueError(msg)
    return value


@dataclass(frozen=True, slots=True)
class JsonPattern:
    """Publish a `pattern` in the JSON Schema for a check the model does in Python."""

    pattern: str

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema["pattern"] = self.pattern
        return schema


EventTime = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339_string),
    AfterValidator(_representable_in_utc),
    JsonPattern(RFC3339_PATTERN),
]
"""An instant on the wire: an RFC 3339 string with an offset that converts to UTC."""

VisibleText = Annotated[str, AfterValidator(require_visible), JsonPattern(VISIBLE_PATTERN)]
"""Text with at least one visible character."""


class WireModel(BaseModel):
    """Frozen, strict about unknown fields, versioned."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Annotated[Literal[1], BeforeValidator(_json_integer)] = SCHEMA_VERSION


def encode(record: WireModel) -> bytes:
    """Serialize with orjson; keys keep declaration order so equal records are equal bytes."""
    return orjson.dumps(record.model_dump(mode="json"))


def decode(model: type[M], raw: bytes | str | dict[str, Any]) -> M:
    """Parse bytes (or an already-decoded dict) into `model`."""
    data = raw if isinstance(raw, dict) else orjson.loads(raw)
    return model.model_validate(data)
