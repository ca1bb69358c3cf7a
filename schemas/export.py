"""Export each wire model's JSON Schema into the repo, for consumers in any language."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from splitpin.schemas.audit_sample import AuditSample
from splitpin.schemas.dead_letter import DeadLetter
from splitpin.schemas.decisions import RoutingDecision
from splitpin.schemas.events import ConversationEvent
from splitpin.schemas.governance import GovernanceConfig
from splitpin.schemas.metrics import CostRecord, WindowedCost
from splitpin.schemas.replies import Reply
from splitpin.schemas.validation import ValidationFailure
from splitpin.schemas.wire import WireModel

SCHEMA_DIR = Path(__file__).resolve().parent / "json"

EXPORTED: dict[str, type[WireModel] | type[GovernanceConfig]] = {
    "conversation-event": ConversationEvent,
    "routing-decision": RoutingDecision,
    "reply": Reply,
    "validation-failure": ValidationFailure,
    "cost-record": CostRecord,
    "windowed-cost": WindowedCost,
    "dead-letter": DeadLetter,
    "audit-sample": AuditSample,
    "governance-config": GovernanceConfig,
}


def render_json_schemas() -> dict[str, bytes]:
    """File name -> bytes of each schema, deterministic so drift is a byte comparison."""
    rendered: dict[str, bytes] = {}
    for name, model in EXPORTED.items():
        schema: dict[str, Any] = model.model_json_schema(mode="serialization")
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
        rendered[f"{name}.schema.json"] = (
            orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )
    return rendered


def export_json_schemas(out_dir: Path) -> list[Path]:
    """Write every schema into `out_dir` (never into the installed package)."""
    target = out_dir
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, data in render_json_schemas().items():
        path = target / filename
        path.write_bytes(data)
        written.append(path)
    return written
