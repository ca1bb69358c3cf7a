"""The prompt every remote model gets, and the citations read back from its answer.

One builder for all providers so that a fallback from Claude to GPT (or to a local
model) asks the same question with the same sources: the answer's `References:` line
then means the same thing whichever model wrote it. Citations are parsed, not trusted:
a doc id that was never attached is kept with an empty source so the validation stage
can flag it (MissingReference) rather than have it silently disappear here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from providers.base import CONFIRM, Message, ModelRequest, SourceDoc
from schemas.replies import Citation

INSTRUCTIONS = (
    "You are a customer-support assistant. Answer the customer's last message using only "
    "the sources below; if they do not contain the answer, say so and offer to escalate "
    "to a human agent. Do not invent policies, fees, or timelines. Cite a source inline as "
    "[InternalDoc-N] and end your answer with one line listing the sources you used, "
    "for example:\nReferences: 1) InternalDoc-3 2) InternalDoc-7"
)
NO_SOURCES = "No sources were found for this question."

_DOC_ID = re.compile(r"InternalDoc-(\d+)", re.IGNORECASE)
_BRACKETED = re.compile(r"\[([^\[\]\n]*)\]")
_REFERENCES = re.compile(r"^[ \t>*_#-]*references?[ \t*_]*:", re.IGNORECASE | re.MULTILINE)


def canonical_doc_id(raw: str) -> str:
    """`internaldoc-007` -> `InternalDoc-7`, so a model's spelling still matches the KB's."""
    match = _DOC_ID.fullmatch(raw.strip())
    return f"InternalDoc-{int(match.group(1))}" if match else raw


def format_source(doc: SourceDoc) -> str:
    text = " ".join(doc.text.split())
    return f"[{doc.doc_id}] {doc.title}: {text}"


def system_prompt(request: ModelRequest) -> str:
    """Instructions, the attached sources, the summary of older turns, any draft answers."""
    parts = [INSTRUCTIONS]
    if request.sources:
        parts.append("Sources:\n" + "\n".join(format_source(doc) for doc in request.sources))
    else:
        parts.append(NO_SOURCES)
    if request.summary.strip():
        parts.append(request.summary.strip())
    leading = _leading_assistant_turns(request.messages)
    if leading:
        said = "\n".join(f"- {m.content}" for m in leading)
        parts.append(f"Earlier in this conversation the support agent wrote:\n{said}")
    if request.candidates:
        drafts = "\n".join(
            f"{i}) (confidence {c.confidence:.2f}, cites {', '.join(c.doc_ids) or 'nothing'}) "
            f"{c.text}"
            for i, c in enumerate(request.candidates, start=1)
        )
        parts.append(
            "Draft answers written earlier; check them against the sources. If draft 1 is "
            f"correct and cites the right source, reply with exactly {CONFIRM} and nothing "
            "else. Otherwise write the best corrected answer, ending with its References "
            f"line:\n{drafts}"
        )
    return "\n\n".join(parts)


def conversation(request: ModelRequest) -> list[Message]:
    """The turns to send: consecutive same-role turns merged, starting with the customer.

    Both APIs want alternating turns that open with the user; an opening agent turn is
    carried in the system prompt instead (see `system_prompt`).
    """
    turns: list[Message] = []
    for message in request.messages[len(_leading_assistant_turns(request.messages)) :]:
        if turns and turns[-1].role == message.role:
            merged = f"{turns[-1].content}\n\n{message.content}"
            turns[-1] = Message(role=message.role, content=merged)
        else:
            turns.append(message)
    return turns


def _leading_assistant_turns(messages: Sequence[Message]) -> list[Message]:
    leading: list[Message] = []
    for message in messages:
        if message.role != "assistant":
            break
        leading.append(message)
    return leading


def parse_citations(text: str, sources: Sequence[SourceDoc]) -> tuple[Citation, ...]:
    """Every doc id cited inline as [InternalDoc-N] or in the References section, in order.

    De-duplicated by canonical id. A cited doc that was not attached keeps `source=""`;
    the validation stage reports it as a MissingReference.
    """
    found: list[tuple[int, str]] = []
    for bracket in _BRACKETED.finditer(text):
        for cited in _DOC_ID.finditer(bracket.group(1)):
            found.append((bracket.start(1) + cited.start(), cited.group(0)))
    references = _REFERENCES.search(text)
    if references:
        for cited in _DOC_ID.finditer(text, references.end()):
            found.append((cited.start(), cited.group(0)))
    attached = {canonical_doc_id(doc.doc_id): doc for doc in sources}
    citations: dict[str, Citation] = {}
    for _, raw in sorted(found):
        key = canonical_doc_id(raw)
        if key in citations:
            continue
        source = attached.get(key)
        citations[key] = (
            Citation(doc_id=source.doc_id, source=source.source)
            if source is not None
            else Citation(doc_id=key, source="")
        )
    return tuple(citations.values())
