"""Checks a model's answer must pass before it is delivered.

The incident: a lightweight model wrote `References: 1) InternalDoc-42` with no document
attached. So a citation counts only if it names a source retrieved for this very request,
compliance-bound replies must cite at least one, and configured policy patterns (asking
for a PIN, echoing a card number) withhold a reply outright.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from providers.base import ModelResult, SourceDoc
from schemas.governance import PolicyCheck


@dataclass(frozen=True, slots=True)
class Violation:
    check: str
    error: str
    detail: str


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def validate_answer(
    result: ModelResult,
    sources: Sequence[SourceDoc],
    *,
    require_citation: bool,
    policy_checks: Sequence[PolicyCheck],
) -> list[Violation]:
    """Every reason not to deliver `result`; empty when it may go out."""
    attached = {doc.doc_id: doc.source for doc in sources}
    violations: list[Violation] = []
    unattached = [c.doc_id for c in result.citations if attached.get(c.doc_id) != c.source]
    if unattached:
        violations.append(
            Violation(
                "citation-sources",
                "MissingReference",
                f"cites {', '.join(unattached)} but the sources retrieved for this reply "
                f"were [{', '.join(attached) or 'none'}]",
            )
        )
    cited = len(result.citations) - len(unattached)
    if require_citation and cited < 1:
        violations.append(
            Violation(
                "citation-required",
                "MissingReference",
                f"citation_sources_count={cited} expected>=1 (compliance-bound reply)",
            )
        )
    for check in policy_checks:
        match = _compiled(check.pattern).search(result.text)
        if match is not None:
            violations.append(
                Violation(check.name, check.error, f"matched {match.group(0)!r} at {match.start()}")
            )
    return violations
