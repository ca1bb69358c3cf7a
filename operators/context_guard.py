"""The context-window guard: count the prompt a role would receive before anything is sent.

A prompt is: the reserved system/sources tokens, the summary of turns that no longer fit,
the most recent turns verbatim (the new message last), and room for the role's maximum
output. A plan exists only if that total fits the role's context window, so a request over
a model's window is never dispatched, and therefore never retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from splitpin.core.summarizer import digest, summarize
from splitpin.core.tokens import count_tokens
from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.governance import ContextConfig, RoleConfig


class _HasContent(Protocol):
    @property
    def content(self) -> str: ...


T = TypeVar("T", bound=_HasContent)

MESSAGE_OVERHEAD_TOKENS = 4
"""Chat formats wrap each message in role markers; 4 tokens covers OpenAI's and Anthropic's."""


@dataclass(frozen=True, slots=True)
class PromptTurn:
    """A turn as the guard sees it: its text and its size in each encoding in use."""

    role: str
    text: str
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class PromptPlan:
    role: ModelRole
    prompt_tokens: int
    limit: int = 0
    """The role's context window, for the reasons and the overflow detail."""
    included_turns: int = 0
    compacted_turns: int = 0
    summary_tokens: int = 0
    summary: str = ""
    """The compacted older turns this prompt carries (sent to the model as context)."""
    summary_limit: int = 0
    """The most tokens (this role's tokenizer) a summary may take in this prompt and still
    fit: a model-written summary replacing `summary` is cut to it (operators/summaries.py)."""

    @property
    def max_prompt_tokens(self) -> int:
        """The prompt with a summary as long as `summary_limit`: what a budget reserves
        when a model may rewrite the summary."""
        return self.prompt_tokens + max(0, self.summary_limit - self.summary_tokens)


@dataclass(frozen=True, slots=True)
class Overflow:
    """Even the new message alone does not fit this role."""

    role: ModelRole
    needed_tokens: int
    limit: int


def plan_prompt(
    role_name: ModelRole,
    role: RoleConfig,
    context: ContextConfig,
    turns: Sequence[PromptTurn],
    earlier_digests: Sequence[str],
    *,
    allow_compaction: bool,
) -> PromptPlan | Overflow | None:
    """The largest faithful prompt for `role`; None if it only fits with compaction
    and compaction is not allowed; Overflow if the newest turn alone cannot fit."""
    enc = role.tokenizer
    budget = role.context_window - role.max_output_tokens - context.system_prompt_tokens
    sizes = [turn.counts[enc] + MESSAGE_OVERHEAD_TOKENS for turn in turns]
    fixed = context.system_prompt_tokens + role.max_output_tokens
    newest = sizes[-1] if sizes else 0
    if newest > budget:
        return Overflow(role_name, needed_tokens=newest + fixed, limit=role.context_window)

    summary, summary_tokens = _summary(earlier_digests, context.summary_max_tokens, enc)
    if summary_tokens + sum(sizes) <= budget:
        return PromptPlan(
            role_name,
            prompt_tokens=context.system_prompt_tokens + summary_tokens + sum(sizes),
            limit=role.context_window,
            included_turns=len(turns),
            summary_tokens=summary_tokens,
            summary=summary,
            summary_limit=min(context.summary_max_tokens, budget - sum(sizes)) if summary else 0,
        )
    if not allow_compaction:
        return None

    # Keep the newest turns that fit beside a summary; summarise the rest.
    room = budget - min(context.summary_max_tokens, budget - newest)
    included, used = 0, 0
    for size in reversed(sizes):
        if used + size > room and included > 0:
            break
        used += size
        included += 1
    dropped = turns[: len(turns) - included]
    digests = [*earlier_digests, *(digest(t.role, t.text, enc) for t in dropped)]
    limit = min(context.summary_max_tokens, budget - used)
    summary, summary_tokens = _summary(digests, limit, enc)
    return PromptPlan(
        role_name,
        prompt_tokens=context.system_prompt_tokens + summary_tokens + used,
        limit=role.context_window,
        included_turns=included,
        compacted_turns=len(dropped),
        summary_tokens=summary_tokens,
        summary=summary,
        summary_limit=max(0, limit) if summary else 0,
    )


def _summary(digests: Sequence[str], max_tokens: int, encoding_name: str) -> tuple[str, int]:
    if not digests or max_tokens <= 0:
        return "", 0
    return summarize(digests, max_tokens, encoding_name)


def fit_messages(
    messages: Sequence[T],
    summary: str,
    role: RoleConfig,
    context: ContextConfig,
    *,
    reserved: int = 0,
) -> tuple[tuple[T, ...], bool]:
    """The newest messages that fit `role` beside the summary (for a call to another role
    than the one the guard planned for, such as the verifier, whose prompt also carries
    `reserved` tokens of draft answers), and whether they fit: the newest always stays,
    so they do not when even it is too big for this role."""
    enc = role.tokenizer
    budget = role.context_window - role.max_output_tokens - context.system_prompt_tokens
    budget -= (count_tokens(summary, enc) if summary else 0) + reserved
    kept: list[T] = []
    used = 0
    for message in reversed(messages):
        size = count_tokens(message.content, enc) + MESSAGE_OVERHEAD_TOKENS
        if kept and used + size > budget:
            break
        kept.append(message)
        used += size
    return tuple(reversed(kept)), used <= budget
