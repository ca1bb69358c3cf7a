"""`config/governance.yaml`: model roles, pins, prices, windows and thresholds.

Validated at start-up; any error names the field (`roles.fast.version: ...`).
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal, Self

import orjson
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from splitpin.errors import ConfigError, describe_validation_error
from splitpin.schemas.decisions import ModelRole
from splitpin.schemas.normalize import normalize_tenant_id

Encoding = Literal["cl100k_base", "o200k_base"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EmulationProfile(_Frozen):
    """A production model's timing, for the local fleet to imitate (seeded per request)."""

    ttft_ms_median: float = Field(gt=0, description="Median time to first token.")
    ttft_sigma: float = Field(default=0.35, ge=0, description="Log-normal spread of the TTFT.")
    tokens_per_s: float = Field(gt=0, description="Output speed after the first token.")


class RoleConfig(_Frozen):
    """One model role: which model answers, at what price, within which limits."""

    provider: Literal["local", "anthropic", "openai"]
    model: str = Field(min_length=1)
    version: str | None = Field(default=None, description="Exact version pin, e.g. a dated id.")
    context_window: int = Field(gt=0, description="Tokens the model accepts, prompt + output.")
    max_output_tokens: int = Field(gt=0)
    price_in_per_mtok: float = Field(ge=0, description="USD per million input tokens.")
    price_out_per_mtok: float = Field(ge=0, description="USD per million output tokens.")
    tokenizer: Encoding = "cl100k_base"
    timeout_s: float = Field(default=30.0, gt=0)
    retry_budget: int = Field(default=2, ge=0, le=10)
    base_url: str | None = Field(
        default=None,
        description="Provider endpoint override, e.g. a vLLM or Ollama OpenAI-compatible URL.",
    )
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding this role's API key (the variable's name, "
        "never the key); default the vendor's ANTHROPIC_API_KEY / OPENAI_API_KEY. Lets two "
        "OpenAI-compatible endpoints with different keys coexist.",
    )
    fallback: tuple[ModelRole, ...] = Field(
        default=(), description="Roles tried, in order, when this one fails (never revisited)."
    )
    emulation: EmulationProfile | None = Field(
        default=None,
        description="Latency profile the local fleet emulates for this role (benchmarks only).",
    )

    @model_validator(mode="after")
    def _output_fits_window(self) -> Self:
        if self.max_output_tokens >= self.context_window:
            msg = "max_output_tokens must be smaller than context_window"
            raise ValueError(msg)
        return self

    @property
    def pinned_id(self) -> str:
        return self.version or self.model

    def cost_usd(self, tokens_in: int, tokens_out: int) -> float:
        """The one pricing rule: list prices per million tokens, in and out."""
        return (tokens_in * self.price_in_per_mtok + tokens_out * self.price_out_per_mtok) / 1e6


def _default_tag_pins() -> dict[str, ModelRole]:
    return {"compliance": "compliance"}


def _default_session_gaps() -> dict[Literal["chat", "email"], float]:
    return {"chat": 1800.0, "email": 7 * 86400.0}


class RoutingConfig(_Frozen):
    token_encoding: Encoding = Field(
        default="cl100k_base", description="Encoding used for tier thresholds."
    )
    fast_max_tokens: int = Field(
        default=2048, gt=0, description="Conversations under this go to the fast role."
    )
    trivial_role: ModelRole = Field(
        default="fast", description="Role for greetings, thanks and other small talk."
    )
    tag_pins: dict[str, ModelRole] = Field(
        default_factory=_default_tag_pins,
        description="An event tag that pins the route to a role whatever its size.",
    )
    compliance_role: ModelRole = Field(
        default="compliance", description="Role that compliance-bound requests are pinned to."
    )
    compliance_intents: tuple[str, ...] = Field(
        default=(),
        description="Intents (banking77 labels) that make a request compliance-bound.",
    )
    force_role: ModelRole | None = Field(
        default=None,
        description="Single-model topology: every request is pinned to this role (the "
        "baseline the split topology is measured against).",
    )
    compliance_min_confidence: float = Field(
        default=0.35,
        ge=0,
        le=1,
        description="A compliance intent pins only when the classifier is at least this sure.",
    )
    compliance_roles: tuple[ModelRole, ...] | None = Field(
        default=None,
        description="Roles allowed to answer compliance-bound (pinned) requests: the only "
        "roles a pinned role may fall back to. None: exactly the pinned roles "
        "(compliance_role, tag_pins targets, replies.reroute_role, force_role).",
    )


class ClassifierConfig(_Frozen):
    """The in-process transformer: all-MiniLM-L6-v2 int8 ONNX plus trained linear heads."""

    artifacts_dir: Path | None = Field(
        default=None,
        description="Trained heads and their manifest; default: the heads shipped in the "
        "package. A relative path is from the working directory.",
    )
    max_seq_tokens: int = Field(default=128, gt=8, le=512, description="WordPiece truncation.")
    intra_op_threads: int = Field(default=1, ge=1, description="onnxruntime threads per worker.")
    parallel_calls: int = Field(
        default=1,
        ge=1,
        description="ONNX calls one embedding request runs at once, each on its own thread "
        "(its length groups, halves of a large one); the same bits for any value.",
    )
    batch_size: int = Field(default=32, ge=1, description="Texts per ONNX call in the flow.")
    out_of_scope_threshold: float = Field(
        default=0.5, ge=0, le=1, description="Out-of-scope probability above which a text is OOS."
    )
    memo_size: int = Field(
        default=4096, ge=0, description="Worker-local memo of classifications by normalized text."
    )
    embedding_memo_size: int = Field(
        default=4096,
        ge=0,
        description="Texts whose embeddings one process remembers (router pieces, retrieval "
        "queries, responders share them); 0: every embedding is computed.",
    )
    max_pieces: int = Field(
        default=128,
        ge=1,
        description="Pieces (sentences, windows) of one message classified for compliance; a "
        "message with more is compliance-bound unscanned (fail closed), which bounds the "
        "transformer's work per message.",
    )


class ContextConfig(_Frozen):
    """What the context-window guard counts besides the conversation itself."""

    system_prompt_tokens: int = Field(
        default=900, ge=0, description="Reserved for the system prompt and retrieved sources."
    )
    summary_max_tokens: int = Field(
        default=512, gt=0, description="Budget for the compacted summary of older turns."
    )
    sources_max_tokens: int = Field(
        default=640,
        gt=0,
        description="Retrieved sources attached to a request, at most; they are part of "
        "system_prompt_tokens (never more than it), the rest is the instructions.",
    )
    fit_order: tuple[ModelRole, ...] = Field(
        default=("fast", "long_context"),
        description="Roles tried, in order, when the routed role's window is too small.",
    )
    summarizer: Literal["model", "extractive"] = Field(
        default="extractive",
        description="model: the summarizer role writes the summary of compacted turns (off "
        "the worker, cached per conversation, extractive on failure); extractive: the first "
        "sentence of each turn, written locally.",
    )
    summary_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Deadline of a summary call; past it the extractive summary is used.",
    )
    summary_cache_entries: int = Field(
        default=10_000,
        ge=0,
        description="Conversations whose model-written summary a process keeps for reuse.",
    )


class TenantBudget(_Frozen):
    limit_usd: float = Field(gt=0, description="Spend allowed per budget window.")
    allowed_roles: tuple[ModelRole, ...] | None = Field(
        default=None, description="Roles this tenant may use; None means all."
    )

    def allows(self, role: ModelRole) -> bool:
        return self.allowed_roles is None or role in self.allowed_roles


class BudgetConfig(_Frozen):
    """Per-tenant spend caps. A request reserves the most its calls may cost (see
    operators/budget.py), so these fields bound what a reservation must cover."""

    window_s: float = Field(
        default=3600.0,
        gt=0,
        description="Budget window, in processing time (the gate's clock, never sent_at).",
    )
    default: TenantBudget = Field(default_factory=lambda: TenantBudget(limit_usd=10.0))
    tenants: dict[str, TenantBudget] = Field(default_factory=dict)
    max_output_tokens_per_call: int = Field(
        default=1024,
        gt=0,
        description="max_tokens sent on every model call is min(the role's "
        "max_output_tokens, this): the output a reservation covers per call.",
    )
    input_token_margin: float = Field(
        default=0.25,
        ge=0,
        le=4,
        description="Reserved input is splitpin's token count x (1 + this): room for a "
        "provider whose tokenizer counts more than splitpin's (and a fallback's other "
        "tokenizer).",
    )

    def for_tenant(self, tenant_id: str) -> TenantBudget:
        return self.tenants.get(normalize_tenant_id(tenant_id), self.default)

    def output_cap(self, role: RoleConfig) -> int:
        """The max_tokens a call to `role` is sent with, and that its reservation covers."""
        return min(role.max_output_tokens, self.max_output_tokens_per_call)

    def input_bound(self, counted_tokens: int) -> int:
        """Input tokens reserved for a prompt splitpin counted at `counted_tokens`."""
        return math.ceil(counted_tokens * (1 + self.input_token_margin))


class CacheConfig(_Frozen):
    ttl_s: float = Field(
        default=600.0, ge=0, description="A repeat within this (event time) reuses the decision."
    )
    max_entries: int = Field(default=32, ge=0, description="Cached texts per conversation.")


class ConversationConfig(_Frozen):
    window_tokens: int = Field(
        default=65_536,
        gt=0,
        description="Recent turns kept verbatim (routing encoding); older ones are summarised. "
        "The largest prompt any role gets; the guard compacts further for smaller windows.",
    )
    session_gap_s: dict[Literal["chat", "email"], float] = Field(
        default_factory=_default_session_gaps,
        description="A turn after this much silence starts a new session.",
    )
    idle_eviction_factor: float = Field(
        default=2.0, ge=1.0, description="State is dropped after gap x factor of wall-clock idle."
    )
    dedupe_capacity: int = Field(
        default=1024, gt=0, description="Event ids remembered per conversation for idempotency."
    )
    summary_source_tokens: int = Field(
        default=16_384,
        ge=0,
        description="Turns that left the window kept in full (routing encoding) as the "
        "summarizer's material; older ones only as one-line digests.",
    )

    @model_validator(mode="after")
    def _both_channels(self) -> Self:
        missing = {"chat", "email"} - set(self.session_gap_s)
        if missing:
            msg = f"session_gap_s needs a gap for {sorted(missing)}"
            raise ValueError(msg)
        return self


class ResilienceConfig(_Frozen):
    """Retry and circuit-breaker policy shared by every remote model."""

    backoff_base_s: float = Field(default=0.25, gt=0, description="First retry waits ~this.")
    backoff_max_s: float = Field(default=8.0, gt=0, description="Cap on one backoff sleep.")
    breaker_failures: int = Field(
        default=5, ge=1, description="Consecutive failed calls that open a model's breaker."
    )
    breaker_reset_s: float = Field(
        default=30.0, gt=0, description="An open breaker lets one trial call through after this."
    )


class ProvidersConfig(_Frozen):
    mode: Literal["auto", "local", "remote"] = Field(
        default="auto",
        description="auto: a role uses its remote provider when its API key (or base_url) "
        "is configured, else the local fleet; local: always the fleet; remote: fail at "
        "start-up if a key is missing.",
    )
    max_in_flight: int = Field(
        default=16, ge=1, description="Concurrent model calls per worker process."
    )
    call_shards: int = Field(
        default=8, ge=1, description="Keys the answering step polls under (spread over workers)."
    )
    poll_interval_ms: float = Field(
        default=5.0, gt=0, description="How often the operator collects finished calls."
    )
    emulate: bool = Field(
        default=False, description="Local fleet sleeps per each role's emulation profile."
    )
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)


SHIPPED_KBS: tuple[str, ...] = ("banking77", "abcd", "smalltalk")
"""Knowledge bases shipped as package data: usable by name, without a path."""
KB_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
"""A KB name is part of every attached source (`kb:<name>/<doc_id>`): no `/` or `:`."""
KnowledgeBaseName = Annotated[str, Field(pattern=KB_NAME_PATTERN)]


class PolicyCheck(_Frozen):
    """A pattern no delivered reply may contain (e.g. asking for a full PIN)."""

    name: str = Field(min_length=1)
    pattern: str = Field(min_length=1, description="Python regex, searched case-insensitively.")
    error: str = Field(default="PolicyViolation", description="The failure's error name.")

    @model_validator(mode="after")
    def _compiles(self) -> Self:
        try:
            re.compile(self.pattern)
        except re.error as exc:
            msg = f"pattern does not compile: {exc}"
            raise ValueError(msg) from exc
        return self


def _default_policy_checks() -> tuple[PolicyCheck, ...]:
    return (
        PolicyCheck(
            name="asks-for-secret",
            # A request for the customer's secret, not a warning never to share it.
            pattern=(
                r"(?<!never )(?<!not )(?<!n't )\b(send|tell|give|share|provide|confirm)\b"
                r"[^.?!]{0,20}\byour\b[^.?!]{0,20}"
                r"\b(full pin|pin code|password|cvv|one-time code)\b"
            ),
        ),
        PolicyCheck(name="card-number", pattern=r"\b\d(?:[ -]?\d){12,18}\b", error="DataLeak"),
    )


HedgeMode = Literal["off", "immediate", "after_quantile"]


class HedgingConfig(_Frozen):
    """Hedged verification: start the verifier before the fast pass has answered, so the
    tail is the faster of the two paths; the first valid final answer wins."""

    enabled: bool = Field(default=False, description="The off-switch: false never hedges.")
    chat: HedgeMode = Field(
        default="after_quantile",
        description="immediate: verifier with the fast pass; after_quantile: once the fast "
        "pass is slower than `quantile` of its recent latencies; off: one after the other.",
    )
    email: HedgeMode = Field(
        default="immediate",
        description="Email only ever shows the verified reply: waiting for the draft is "
        "pure latency.",
    )
    quantile: float = Field(
        default=0.9, gt=0, lt=1, description="Of the routed role's latency, per role."
    )
    prior_s: float = Field(
        default=2.0, gt=0, description="The hedge delay until `min_samples` latencies are seen."
    )
    min_samples: int = Field(default=20, ge=1, description="Latencies before the estimate.")
    window: int = Field(default=256, ge=1, description="Recent latencies kept per role.")

    def mode(self, channel: str) -> HedgeMode:
        if not self.enabled:
            return "off"
        return self.email if channel == "email" else self.chat


class VerifierFirstConfig(_Frozen):
    """Predicted verification: a fast answer that cannot clear `verify_min_probability`
    whatever it says (the router is too unsure of the intent for the calibration's
    agreement map to reach the bound) is not waited for; the verifier is asked at once."""

    mode: Literal["off", "direct", "hedge"] = Field(
        default="off",
        description="off: always the fast pass first; direct: the verifier answers alone "
        "(no fast call, final and verified); hedge: fast pass and verifier at once, the first "
        "valid final wins (replies.hedging's `immediate`, whatever its off-switch says).",
    )
    margin: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Predicted when even the best fast answer (citing the router intent's "
        "article at full confidence) would be judged less likely right than "
        "verify_min_probability + margin. 0: only answers that cannot clear the bound; "
        "more: also those that rarely do. Fit on the calibration half (bench/incident.py "
        "--rows calibration, bench/README.md).",
    )

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        """YAML 1.1 reads a bare `off` as false: take it as the off value it was."""
        return "off" if value is False else value


class RepliesConfig(_Frozen):
    """Two-phase replies: when a fast answer goes out, and what happens when checks fail."""

    preliminary_min_confidence: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="A chat's fast answer goes out as a preliminary reply at or above this; "
        "below it the request escalates straight to the verifier.",
    )
    verifier_role: ModelRole = Field(
        default="verifier", description="Re-ranks the fast candidates and writes the final reply."
    )
    verify_trivial: bool = Field(
        default=False,
        description="Small talk has nothing to verify: the fast answer is final unless true.",
    )
    verification_timeout_s: float = Field(
        default=45.0, gt=0, description="Deadline for one verification, retries included."
    )
    on_verification_timeout: Literal["release_preliminary", "safe_reply"] = Field(
        default="release_preliminary",
        description="release_preliminary: the preliminary text becomes the final revision, "
        "marked unverified (a safe reply where there was none); safe_reply: always the "
        "safe reply. Either way a VerificationTimeout failure is recorded.",
    )
    reroute_role: ModelRole = Field(
        default="compliance",
        description="A reply that fails validation is re-asked of this (pinned) role once.",
    )
    safe_reply: str = Field(
        default=(
            "Thank you for your message. We could not verify an answer right away, so a "
            "member of our support team will follow up with you shortly."
        ),
        min_length=1,
        description="Sent instead of a reply that cannot be verified or validated.",
    )
    refusal_reply: str = Field(
        default=(
            "Thank you for your message. We cannot answer it automatically, so a member of "
            "our support team will follow up with you shortly."
        ),
        min_length=1,
        description="Sent when routing refused the request (context overflow, budget).",
    )
    clarify_reply: str = Field(
        default=(
            "Thank you for your message. We are not sure we understood what you need: could "
            "you tell us a little more? If it is something we do not cover here, a member of "
            "our support team will follow up."
        ),
        min_length=1,
        description="Sent, without a model call, for an out-of-scope message or an intent "
        "the tenant's knowledge base does not cover (status `clarify`).",
    )
    policy_checks: tuple[PolicyCheck, ...] = Field(
        default_factory=_default_policy_checks,
        description="Patterns a reply must not contain; a match withholds it.",
    )
    require_citation_roles: tuple[ModelRole, ...] = Field(
        default=("compliance",),
        description="Replies from these roles (and any pinned reply) need at least one citation.",
    )
    hedging: HedgingConfig = Field(
        default_factory=HedgingConfig,
        description="Start the verifier without waiting for the fast pass (per channel).",
    )
    verify: Literal["always", "below_confidence", "audit"] = Field(
        default="always",
        description="When the verifier reads a fast answer. always: every non-trivial one; "
        "below_confidence: only when its calibrated probability of being right is under "
        "verify_min_probability (unknown confidence is always verified); audit: "
        "below_confidence, plus audit_fraction of the confident ones, chosen by a hash of "
        "the event id, whose agreement with the verifier goes to replies.audit. Pinned "
        "traffic is answered and verified by its pinned role whatever this says.",
    )
    verify_min_probability: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="The risk target: a fast answer at least this likely to be right is final "
        "without the verifier (below_confidence, audit).",
    )
    audit_fraction: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="audit: the share of confident fast answers still verified, to measure "
        "the fast path's live accuracy.",
    )
    verifier_other_sources: int | None = Field(
        default=None,
        ge=0,
        description="The sources a verifier reading a draft gets: None: every source the "
        "draft had; n: the articles the draft cites, the router intent's article, and the "
        "n best-ranked others (a smaller prompt; docs/calibration.md measures the effect).",
    )
    verify_evidence: Literal["fast", "fast_and_router"] = Field(
        default="fast_and_router",
        description="What the probability compared with verify_min_probability rests on. "
        "fast: the answering role's calibrated confidence alone; fast_and_router: for a "
        "local fast answer, also the router's intent probability and whether the answer "
        "cites that intent's article (the calibration's agreement map, docs/calibration.md).",
    )
    verifier_first: VerifierFirstConfig = Field(
        default_factory=VerifierFirstConfig,
        description="Skip waiting for a fast answer predicted to need the verifier anyway.",
    )


class AccountingConfig(_Frozen):
    """Per tenant x model windows of the CostRecords on routing.metrics.windowed."""

    window_s: float = Field(default=60.0, gt=0, description="Tumbling window, in event time.")
    allowed_lateness_s: float = Field(
        default=10.0,
        ge=0,
        description="How long (system time) a window waits for stragglers after the newest "
        "record's event time passes its end; later records are counted as late.",
    )


def _default_tenant_kbs() -> dict[str, KnowledgeBaseName]:
    return {"shopco": "abcd"}


class KnowledgeConfig(_Frozen):
    """Which knowledge base answers which tenant, and how many articles a prompt carries.

    `bases` names a tenant's own JSON-lines files (docs/knowledge_bases.md); a relative
    path is resolved against the governance file's folder, so a config and its KB files
    move together. The shipped bases (SHIPPED_KBS) are known by name without a path.
    """

    bases: dict[KnowledgeBaseName, Path] = Field(
        default_factory=dict, description="KB name -> JSON-lines file of its articles."
    )
    default_kb: KnowledgeBaseName = "banking77"
    tenants: dict[str, KnowledgeBaseName] = Field(default_factory=_default_tenant_kbs)
    top_k: int = Field(default=4, ge=1, le=20, description="Articles retrieved per request.")
    intent_min_confidence: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="At or above this router intent confidence a KB that uses the router's "
        "intents but lacks this one gets replies.clarify_reply instead of a guess.",
    )
    intent_attach_min_confidence: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description="At or above this router intent confidence the tenant's article of that "
        "intent is attached first, besides the embedding search. Lower than "
        "intent_min_confidence: attaching one more candidate costs little (the verifier "
        "still chooses), telling a customer their intent is not covered costs a reply.",
    )
    intent_sure_min_confidence: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="At or above this router intent confidence a call of intent_sure_roles "
        "carries the intent's article and only top_k_when_intent_sure - 1 searched ones: "
        "fewer distractors and a shorter prompt for the cheap role. A verifier checking such "
        "a draft retrieves the full top_k again. None: every call gets top_k.",
    )
    top_k_when_intent_sure: int = Field(
        default=1, ge=1, le=20, description="Articles attached when the intent is sure."
    )
    intent_sure_roles: tuple[ModelRole, ...] = Field(
        default=("fast",), description="Roles whose prompt is narrowed when the intent is sure."
    )

    @model_validator(mode="after")
    def _sure_implies_attached(self) -> Self:
        sure = self.intent_sure_min_confidence
        if sure is not None and sure < self.intent_attach_min_confidence:
            msg = (
                f"intent_sure_min_confidence {sure} is below intent_attach_min_confidence "
                f"{self.intent_attach_min_confidence}: a narrowed prompt must carry the article"
            )
            raise ValueError(msg)
        if self.top_k_when_intent_sure > self.top_k:
            msg = f"top_k_when_intent_sure {self.top_k_when_intent_sure} exceeds top_k {self.top_k}"
            raise ValueError(msg)
        return self

    def narrows(self, role: ModelRole, intent_confidence: float | None) -> bool:
        """Whether a call of `role`, whose router intent has this confidence (None: no
        intent attached), carries only top_k_when_intent_sure articles."""
        sure = self.intent_sure_min_confidence
        return (
            sure is not None
            and intent_confidence is not None
            and intent_confidence >= sure
            and role in self.intent_sure_roles
        )

    @field_validator("bases", mode="after")
    @classmethod
    def _resolve_relative(cls, bases: dict[str, Path], info: ValidationInfo) -> dict[str, Path]:
        base_dir = (info.context or {}).get("base_dir")
        shadowing = sorted(set(bases) & set(SHIPPED_KBS))
        if shadowing:
            msg = f"{', '.join(shadowing)}: shipped knowledge base names; choose another name"
            raise ValueError(msg)
        if base_dir is None:
            return bases
        # Absolute, so a config passed on (the governance topic) still names the same file.
        return {name: Path(base_dir).absolute() / path for name, path in bases.items()}

    @model_validator(mode="after")
    def _kbs_known(self) -> Self:
        known = {*SHIPPED_KBS, *self.bases}
        named = {"knowledge.default_kb": self.default_kb}
        named |= {f"knowledge.tenants.{t}": kb for t, kb in self.tenants.items()}
        unknown = [f"{where}: {kb!r}" for where, kb in named.items() if kb not in known]
        if unknown:
            msg = f"{', '.join(unknown)} is neither shipped {list(SHIPPED_KBS)} nor under bases"
            raise ValueError(msg)
        return self

    def kb_for(self, tenant_id: str) -> KnowledgeBaseName:
        return self.tenants.get(tenant_id, self.default_kb)


TenantPolicy = Literal["configured", "default"]


class TenancyConfig(_Frozen):
    """Which tenant ids are known, and what an unknown one gets: never a silent fallback."""

    tenants: tuple[str, ...] = Field(
        default=(),
        description="Known tenants besides those named under budgets.tenants and "
        "knowledge.tenants (which are known too).",
    )
    unknown: Literal["dead_letter", "default"] = Field(
        default="default",
        description="dead_letter: an event of an unknown tenant is dead-lettered "
        "(unknown_tenant); default: it is served under budgets.default and "
        "knowledge.default_kb, and its decision says tenant_policy=default.",
    )


class PromotionCriteria(_Frozen):
    """What a canary's comparison must show before its config may replace the primary's
    (`splitpin canary report` ends with a verdict against these)."""

    min_agreement: float = Field(
        default=0.9, ge=0, le=1, description="Share of final replies citing the same sources."
    )
    max_p95_ratio: float = Field(
        default=1.1, gt=0, description="Canary / primary time to final reply, p95, at most."
    )
    max_cost_ratio: float = Field(
        default=1.0, gt=0, description="Canary / primary cost per conversation, at most."
    )
    compliance_regressions_allowed: int = Field(
        default=0, ge=0, description="Compliance-route replies the canary gets worse, at most."
    )
    max_accuracy_drop: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="With gold labels: canary accuracy may trail the primary's by this much.",
    )
    min_compared_replies: int = Field(
        default=20,
        ge=1,
        description="Final replies both topologies gave before any verdict but HOLD.",
    )


class CanaryConfig(_Frozen):
    """A candidate topology mirrored on live traffic: never reaches customers."""

    sample_fraction: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of conversations mirrored, chosen by a hash of conversation_id "
        "(every turn of a sampled conversation).",
    )
    shadow_budget_usd: float = Field(
        default=5.0, gt=0, description="The canary's own spend limit per budget window."
    )
    topic_prefix: str = Field(
        default="canary.", min_length=1, description="Prefix of every topic the canary writes."
    )
    promotion: PromotionCriteria = Field(default_factory=PromotionCriteria)
    comparison_window_s: float = Field(
        default=300.0,
        gt=0,
        description="`splitpin canary watch`: live comparison windows (tumbling), seconds.",
    )
    comparison_grace_s: float = Field(
        default=60.0,
        ge=0,
        description="How long a window waits past its end for the slower topology's replies.",
    )


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEK_MIN = 7 * 24 * 60


class MaintenanceWindow(_Frozen):
    """A weekly slot (UTC) in which a change that swaps a role's model or version may apply,
    so swaps never land at peak traffic."""

    day: Weekday
    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM, UTC.")
    duration_min: int = Field(gt=0, le=_WEEK_MIN, description="Length of the window.")

    def contains(self, now: datetime) -> bool:
        """Whether `now` (aware) falls in this window; a window may run past Sunday midnight."""
        utc = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
        minute = utc.weekday() * 1440 + utc.hour * 60 + utc.minute
        hours, minutes = (int(part) for part in self.start.split(":"))
        begin = WEEKDAYS.index(self.day) * 1440 + hours * 60 + minutes
        return (minute - begin) % _WEEK_MIN < self.duration_min


class GovernanceConfig(_Frozen):
    schema_version: Literal[1] = 1
    name: str | None = Field(
        default=None, description="A human label for this version (not part of its hash)."
    )
    maintenance_windows: tuple[MaintenanceWindow, ...] = Field(
        default=(),
        description="Weekly UTC windows in which a model or version swap may apply; none "
        "means a swap is always held unless forced.",
    )
    require_version_pins: bool = True
    roles: dict[ModelRole, RoleConfig]
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    conversation: ConversationConfig = Field(default_factory=ConversationConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    context: ContextConfig = Field(default_factory=ContextConfig)
    budgets: BudgetConfig = Field(default_factory=BudgetConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    providers: ProvidersConfig = Field(default_factory=ProvidersConfig)
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    replies: RepliesConfig = Field(default_factory=RepliesConfig)
    accounting: AccountingConfig = Field(default_factory=AccountingConfig)
    tenancy: TenancyConfig = Field(default_factory=TenancyConfig)
    canary: CanaryConfig = Field(default_factory=CanaryConfig)

    def version_id(self) -> str:
        """`sha256:` + 12 hex of the validated config as canonical JSON (sorted keys, every
        default filled in, `name` left out): equal settings give equal ids, however written.
        Memoised per instance (frozen), since every decision and reply is stamped with it."""
        known = _VERSION_IDS.get(id(self))
        if known is not None and known[0] is self:
            return known[1]
        content = self.model_dump(mode="json", exclude={"name"})
        digest = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()
        version = f"sha256:{digest[:12]}"
        if len(_VERSION_IDS) >= _VERSION_MEMO:
            _VERSION_IDS.clear()
        _VERSION_IDS[id(self)] = (self, version)
        return version

    def in_maintenance_window(self, now: datetime) -> bool:
        return any(window.contains(now) for window in self.maintenance_windows)

    def known_tenants(self) -> frozenset[str]:
        return frozenset({*self.tenancy.tenants, *self.budgets.tenants, *self.knowledge.tenants})

    def tenant_policy(self, tenant_id: str) -> TenantPolicy | None:
        """`configured` for a known tenant, `default` for an unknown one served under the
        defaults, None when unknown tenants are dead-lettered. Ids are normalised first."""
        if normalize_tenant_id(tenant_id) in self.known_tenants():
            return "configured"
        return "default" if self.tenancy.unknown == "default" else None

    def pinned_roles(self) -> dict[ModelRole, str]:
        """Each role a request can be pinned to, with the field that pins it."""
        routing = self.routing
        pinned: dict[ModelRole, str] = {routing.compliance_role: "routing.compliance_role"}
        for tag, role in routing.tag_pins.items():
            pinned.setdefault(role, f"routing.tag_pins.{tag}")
        pinned.setdefault(self.replies.reroute_role, "replies.reroute_role")
        if routing.force_role is not None:
            pinned.setdefault(routing.force_role, "routing.force_role")
        return pinned

    def compliance_roles(self) -> frozenset[ModelRole]:
        """The roles allowed to answer a pinned request (see RoutingConfig.compliance_roles)."""
        configured = self.routing.compliance_roles
        return frozenset(self.pinned_roles() if configured is None else configured)

    @model_validator(mode="after")
    def _pins_cannot_be_lifted(self) -> Self:
        """A pinned role and its whole fallback chain stay inside the compliance set."""
        for name, config in self.roles.items():
            unknown = [link for link in config.fallback if link not in self.roles]
            if unknown:
                msg = f"roles.{name}.fallback: {', '.join(unknown)} not configured under roles"
                raise ValueError(msg)
        allowed = self.compliance_roles()
        for role, where in self.pinned_roles().items():
            if role not in allowed:
                msg = f"routing.compliance_roles: lacks {role}, which {where} pins to"
                raise ValueError(msg)
            pinned = self.roles.get(role)
            outside = [link for link in (pinned.fallback if pinned else ()) if link not in allowed]
            if outside:
                msg = (
                    f"roles.{role}.fallback: {', '.join(outside)} not in the compliance roles "
                    f"[{', '.join(sorted(allowed))}] ({role} is pinned by {where})"
                )
                raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _windows_hold_the_reserve(self) -> Self:
        """Every prompt reserves the role's maximum output, the system prompt and the
        summary; a window that cannot hold them could answer nothing."""
        context = self.context
        reserve = context.system_prompt_tokens + context.summary_max_tokens
        for name, role in self.roles.items():
            needed = role.max_output_tokens + reserve
            if role.context_window <= needed:
                msg = (
                    f"roles.{name}.context_window: {role.context_window} cannot hold "
                    f"max_output_tokens {role.max_output_tokens} + context.system_prompt_tokens "
                    f"{context.system_prompt_tokens} + context.summary_max_tokens "
                    f"{context.summary_max_tokens} = {needed} and a message"
                )
                raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _narrowed_answers_are_judged_with_the_router(self) -> Self:
        """A fast prompt narrowed to one article leaves the fast responder no runner-up, so
        its own confidence is ~1 whatever the answer: only the router's agreement map can
        judge it. A policy that lets answers stand on that confidence alone would pass
        every narrowed answer unverified."""
        replies, knowledge = self.replies, self.knowledge
        if (
            knowledge.intent_sure_min_confidence is not None
            and replies.verify != "always"
            and replies.verify_evidence == "fast"
            and "fast" in knowledge.intent_sure_roles
        ):
            msg = (
                "knowledge.intent_sure_min_confidence: must be null when "
                "replies.verify_evidence is fast and replies.verify is not always (a narrowed "
                "fast answer's own confidence is ~1; docs/calibration.md)"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _tenant_ids_normalised(self) -> Self:
        named = [
            *(f"tenancy.tenants: {t!r}" for t in self.tenancy.tenants),
            *(f"budgets.tenants.{t}" for t in self.budgets.tenants),
            *(f"knowledge.tenants.{t}" for t in self.knowledge.tenants),
        ]
        ids = [*self.tenancy.tenants, *self.budgets.tenants, *self.knowledge.tenants]
        bad = [where for where, t in zip(named, ids, strict=True) if normalize_tenant_id(t) != t]
        if bad:
            msg = f"{', '.join(bad)}: tenant ids must be lower-case without surrounding space"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _roles_complete_and_pinned(self) -> Self:
        needed = {"fast", "long_context", "compliance", "summarizer"}
        needed |= set(self.routing.tag_pins.values())
        needed |= {self.routing.trivial_role, self.routing.compliance_role}
        needed |= set(self.context.fit_order)
        needed |= {self.replies.verifier_role, self.replies.reroute_role}
        missing = sorted(needed - set(self.roles))
        if missing:
            fields = ", ".join(f"roles.{name}" for name in missing)
            msg = f"{fields}: missing (routing, pins or fit_order refer to them)"
            raise ValueError(msg)
        if self.require_version_pins:
            unpinned = sorted(name for name, role in self.roles.items() if not role.version)
            if unpinned:
                fields = ", ".join(f"roles.{name}.version" for name in unpinned)
                msg = f"{fields}: exact version pin required (require_version_pins is true)"
                raise ValueError(msg)
        return self


_VERSION_MEMO = 64
_VERSION_IDS: dict[int, tuple[GovernanceConfig, str]] = {}
"""id -> (the config itself, its version id); holding the config keeps its id unique."""


def load_governance(path: Path) -> GovernanceConfig:
    """Read and validate the governance file, raising ConfigError that names the field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        msg = f"cannot read governance config {path}: {exc}"
        raise ConfigError(msg) from exc
    except yaml.YAMLError as exc:
        msg = f"governance config {path} is not valid YAML: {exc}"
        raise ConfigError(msg) from exc
    try:
        # Relative paths in the file (knowledge.bases) are relative to the file.
        return GovernanceConfig.model_validate(raw, context={"base_dir": path.parent})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(f"governance config {path}", exc)) from exc
