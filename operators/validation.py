"""Checks a model's answer must pass before it is delivered.

The incident: a lightweight model wrote `References: 1) InternalDoc-42` with no document
attached. So a citation counts only if it names a source retrieved for this very request,
compliance-bound replies must cite at least one, and configured policy patterns (asking
for a PIN, echoing a card number) withhold a reply outright. A citation of a doc id the
customer's own text names is withheld too (ForgedReference). A reply to a pinned decision
from a role outside the compliance roles is withheld too: a pin cannot be lifted.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

from splitpin.providers.base import ModelResult, SourceDoc
from splitpin.providers.prompting import canonical_doc_id, mentioned_doc_ids
from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.governance import PolicyCheck


@dataclass(frozen=True, slots=True)
class Violation:
    check: str
    error: str
    detail: str


POLICY_MEMO_TEXTS = 4096
"""(pattern, reply text) pairs whose first match is remembered: local answers are article
texts, so the same few hundred texts are searched again at every reply."""


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


@lru_cache(maxsize=POLICY_MEMO_TEXTS)
def _first_match(pattern: str, text: str) -> tuple[str, int] | None:
    """The first match of a policy pattern in `text` (its text and offset), or None: a pure
    function of both, so a remembered one is what searching again would find."""
    match = _compiled(pattern).search(text)
    return None if match is None else (match.group(0), match.start())


def validate_answer(
    result: ModelResult,
    sources: Sequence[SourceDoc],
    *,
    require_citation: bool,
    policy_checks: Sequence[PolicyCheck],
    pinned_to: Collection[ModelRole] | None = None,
    customer_ids: Collection[str] = (),
) -> list[Violation]:
    """Every reason not to deliver `result`; empty when it may go out.

    `pinned_to`: for a pinned decision, the roles allowed to answer it (governance
    `compliance_roles()`). Config validation already keeps pinned fallback chains inside
    it; this is the last line, at the answer, should anything else let a pin slip.

    `customer_ids`: doc ids the customer's own text names (`customer_doc_ids`). An answer
    that cites or names one of them is a ForgedReference, attached or not: the customer
    may have pasted a fake block under that label, and its words are not the source's.
    """
    attached = {doc.doc_id: doc.source for doc in sources}
    violations: list[Violation] = []
    if pinned_to is not None and result.role not in pinned_to:
        violations.append(
            Violation(
                "pinned-role",
                "PinViolation",
                f"answered by {result.role} ({result.model_version}) but the decision is "
                f"pinned to [{', '.join(sorted(pinned_to))}]",
            )
        )
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
    named = {canonical_doc_id(c.doc_id) for c in result.citations}
    forged = sorted(set(customer_ids) & (named | mentioned_doc_ids(result.text)))
    if forged:
        violations.append(
            Violation(
                "citation-provenance",
                "ForgedReference",
                f"cites {', '.join(forged)}, which the customer's own message names: a "
                "citation must rest on the source splitpin attached, not on text the "
                "customer supplied under its label",
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
        match = _first_match(check.pattern, result.text)
        if match is not None:
            violations.append(
                Violation(check.name, check.error, f"matched {match[0]!r} at {match[1]}")
            )
    return violations
