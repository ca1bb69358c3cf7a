"""Deterministic sample traffic built from the shared labelled support data.

The flow, the router and its accuracy reports need traffic that looks like production:
multi-turn chats with pauses and new sessions, quoted email threads that span days and
outgrow the fast role's 2,048-token limit, compliance-bound intents, small talk and
off-topic questions. Every customer sentence here is a real one from banking77, CLINC150
or ABCD, and every event carries its gold label in `metadata`, so later stages can be
scored against it. Agent replies outside ABCD are short templates (`source: template`).

Regenerate the shipped file with `python -m splitpin.app.sample` (see `main`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from splitpin.core.settings import REPO_ROOT
from splitpin.core.tokens import count_tokens
from splitpin.schemas.events import Channel, ConversationEvent, SenderRole
from splitpin.schemas.wire import encode

START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
"""Every timestamp is an offset from here, so the file never depends on the wall clock."""

TOKEN_ENCODING = "cl100k_base"
LONG_CONVERSATION_TOKENS = 2048
"""The governance `routing.fast_max_tokens`: longer conversations must leave the fast role."""
HUGE_CONVERSATION_TOKENS = 8192
CHAT_SESSION_GAP = timedelta(minutes=30)
"""The governance chat `session_gap_s`: a longer silence starts a new session."""
MAX_EVENT_BYTES = 64 * 1024
"""Settings' default `max_event_bytes`: a larger event would be dead-lettered, not routed."""

COMPLIANCE_INTENTS = (
    "compromised_card",
    "lost_or_stolen_card",
    "card_payment_not_recognised",
    "cash_withdrawal_not_recognised",
    "direct_debit_payment_not_recognised",
    "verify_my_identity",
    "why_verify_identity",
    "unable_to_verify_identity",
)
"""banking77 intents whose conversations are tagged `compliance` (pinned route)."""

# CLINC150 intents that mean the same as a compliance intent; the `compliance` tag comes
# from banking77 labels only, so these stay out of the pool to keep the gold unambiguous.
_CLINC_EXCLUDED = frozenset({"report_fraud", "report_lost_card", "freeze_account"})
_CLINC_BANK_DOMAINS = ("banking", "credit_cards")
_GREETINGS = ("greeting",)
_CLOSINGS = ("thank_you", "goodbye")
_SMALL_TALK = ("are_you_a_bot", "what_is_your_name", "how_old_are_you", "what_can_i_ask_you")

BANK = "acme-bank"
SHOP = "shopco"
_BANK_DESK = "Acme Bank Support"
_SHOP_DESK = "ShopCo Customer Care"

_NAMES = (
    "Dana Okafor",
    "Priya Raman",
    "Tomasz Nowak",
    "Leah Fischer",
    "Marcus Bell",
    "Aiko Tanaka",
    "Sofia Marino",
    "Kwame Mensah",
    "Elena Petrova",
    "Jonas Berg",
    "Fatima Haddad",
    "Liam Walsh",
    "Ines Duarte",
    "Noah Kim",
    "Grace Adeyemi",
    "Mateo Ruiz",
)

_BANK_CHAT_AGENT = (
    "Hi, thanks for contacting Acme Bank. Let me look into that for you.",
    "Thanks for waiting. I can see your account here; give me a moment to check the details.",
    "I'm sorry for the trouble. Can you tell me roughly when this started?",
    "Is there anything else I can help you with today?",
)
_BANK_CHAT_AGENT_COMPLIANCE = (
    "For your security I can't discuss card details until you've verified your identity "
    "in the app. I've sent you the link now.",
    "I've frozen the card as a precaution. A specialist from our security team will "
    "follow up on this with you.",
)
_BANK_EMAIL_AGENT = (
    "Thank you for contacting Acme Bank. I have passed your message to the team that "
    "handles this and they will reply within two working days.",
    "Thank you for your patience. We have looked into this and updated your account; "
    "please let us know if anything still looks wrong.",
    "We're sorry for the inconvenience. Could you reply with the date and the approximate "
    "amount involved so that we can trace it?",
)
_BANK_EMAIL_AGENT_COMPLIANCE = (
    "For your security, please do not send card numbers or passwords by email. We have "
    "opened a case and a specialist from our disputes and security team will contact you.",
    "We have blocked the card and opened an investigation. Please do not share your PIN or "
    "one-time codes with anyone, including our staff.",
)
_SHOP_EMAIL_AGENT = (
    "Thank you for writing to ShopCo. I have read the chat transcript and passed your case "
    "to a team lead, who will get back to you within 48 hours.",
    "Thanks for your patience. Our policy only allows returns within 90 days of purchase, "
    "but I have asked a manager to review your case as an exception.",
    "I'm sorry for the back and forth. A manager will call you on the phone number on "
    "your account.",
)
_TEMPLATE: dict[str, JsonValue] = {"source": "template"}

Label = dict[str, JsonValue]


@dataclass(frozen=True)
class SampleStats:
    """What a build produced, to print and to check against the requirements."""

    path: Path
    events: int
    conversations: dict[str, int]
    """Channel -> conversation count."""
    compliance_conversations: int
    long_conversations: int
    """Conversations whose texts total more than LONG_CONVERSATION_TOKENS."""
    max_conversation_tokens: int
    chat_session_gaps: int
    """Chat conversations with a silence longer than CHAT_SESSION_GAP."""

    def describe(self) -> str:
        channels = ", ".join(f"{n} {ch}" for ch, n in sorted(self.conversations.items()))
        total = sum(self.conversations.values())
        return (
            f"wrote {self.events} events in {total} conversations ({channels}) to {self.path}; "
            f"{self.compliance_conversations} compliance, {self.long_conversations} over "
            f"{LONG_CONVERSATION_TOKENS} tokens (max {self.max_conversation_tokens} "
            f"{TOKEN_ENCODING} tokens), {self.chat_session_gaps} chat(s) with a session gap"
        )


@dataclass(frozen=True)
class _Text:
    text: str
    label: Label


@dataclass(frozen=True)
class _Dialogue:
    convo_id: int
    flow: str
    subflow: str
    customer_name: str
    turns: tuple[tuple[SenderRole, str], ...]

    @property
    def label(self) -> Label:
        return {
            "source": "abcd",
            "convo_id": self.convo_id,
            "flow": self.flow,
            "subflow": self.subflow,
        }


@dataclass(frozen=True)
class _Corpus:
    banking: dict[str, list[_Text]]
    """banking77 intent -> texts, in file order."""
    clinc: dict[str, list[_Text]]
    oos: list[_Text]
    dialogues: list[_Dialogue]
    compliance: tuple[str, ...]
    """COMPLIANCE_INTENTS that exist in categories.json and have texts."""

    def clinc_pool(self, intents: Sequence[str]) -> list[_Text]:
        return [t for intent in intents for t in self.clinc.get(intent, [])]


def _read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def _load_corpus(data_dir: Path) -> _Corpus:
    categories = set(_read_json(data_dir / "banking77" / "categories.json"))
    banking: dict[str, list[_Text]] = {}
    with (data_dir / "banking77" / "train.csv").open(encoding="utf-8", newline="") as fh:
        for row_no, row in enumerate(csv.DictReader(fh)):
            text, intent = row["text"].strip(), row["category"].strip()
            if text and intent in categories:
                label: Label = {
                    "source": "banking77",
                    "split": "train",
                    "intent": intent,
                    "rows": [row_no],
                }
                banking.setdefault(intent, []).append(_Text(text, label))
    if not banking:
        msg = f"no labelled banking77 texts in {data_dir / 'banking77' / 'train.csv'}"
        raise ValueError(msg)

    domains: dict[str, list[str]] = _read_json(data_dir / "clinc150" / "domains.json")
    domain_of = {intent: domain for domain, intents in domains.items() for intent in intents}
    data = _read_json(data_dir / "clinc150" / "data.json")
    clinc: dict[str, list[_Text]] = {}
    for row_no, (text, intent) in enumerate(data["train"]):
        if text.strip() and intent in domain_of and intent not in _CLINC_EXCLUDED:
            label = {
                "source": "clinc150",
                "split": "train",
                "intent": intent,
                "domain": domain_of[intent],
                "rows": [row_no],
            }
            clinc.setdefault(intent, []).append(_Text(text.strip(), label))
    oos = [
        _Text(
            text.strip(),
            {
                "source": "clinc150",
                "split": "oos_train",
                "intent": "oos",
                "domain": "oos",
                "rows": [row_no],
            },
        )
        for row_no, (text, _intent) in enumerate(data.get("oos_train", []))
        if text.strip()
    ]

    dialogues = []
    for raw in _read_json(data_dir / "abcd" / "abcd_sample.json"):
        turns = tuple(
            (speaker, text.strip())
            for speaker, text in raw["original"]
            if speaker in ("customer", "agent") and text.strip()
        )
        scenario = raw["scenario"]
        name = str(scenario.get("personal", {}).get("customer_name", "")).title() or "Customer"
        if turns:
            dialogues.append(
                _Dialogue(int(raw["convo_id"]), scenario["flow"], scenario["subflow"], name, turns)
            )
    compliance = tuple(i for i in COMPLIANCE_INTENTS if i in categories and i in banking)
    return _Corpus(banking, clinc, oos, dialogues, compliance)


@dataclass(frozen=True)
class _Turn:
    role: SenderRole
    text: str
    at: timedelta
    label: Label


@dataclass
class _Conversation:
    tenant_id: str
    channel: Channel
    start: timedelta
    turns: list[_Turn] = field(default_factory=list)

    @property
    def end(self) -> timedelta:
        return self.start + (self.turns[-1].at if self.turns else timedelta())

    def add(self, role: SenderRole, text: str, label: Label, after: timedelta) -> None:
        at = self.turns[-1].at + after if self.turns else timedelta()
        self.turns.append(_Turn(role, text, at, label))


def _sentence(text: str) -> str:
    return text if text[-1] in ".?!" else f"{text}."


def _merge(texts: Sequence[_Text]) -> tuple[str, Label]:
    """One email body from several texts of one intent; the label lists every source row."""
    rows: list[JsonValue] = []
    for t in texts:
        more = t.label["rows"]
        rows.extend(more if isinstance(more, list) else [more])
    return " ".join(_sentence(t.text) for t in texts), {**texts[0].label, "rows": rows}


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.split("\n"))


def _email_date(at: datetime) -> str:
    return f"{at:%a}, {at.day} {at:%b %Y at %H:%M}"


class _Builder:
    """Draws conversations from the corpus with one seeded RNG, so output is reproducible."""

    def __init__(self, corpus: _Corpus, rng: random.Random) -> None:
        self.c = corpus
        self.rng = rng
        self.bank_intents = list(corpus.banking)
        self.plain_intents = [i for i in self.bank_intents if i not in corpus.compliance]
        self.greetings = corpus.clinc_pool(_GREETINGS)
        self.closings = corpus.clinc_pool(_CLOSINGS)
        self.small_talk = corpus.clinc_pool(_SMALL_TALK)
        self.clinc_bank = [
            i
            for i, texts in corpus.clinc.items()
            if texts[0].label["domain"] in _CLINC_BANK_DOMAINS
        ]

    # -- drawing ---------------------------------------------------------------------------
    def draw(self, pool: Sequence[_Text], k: int = 1) -> list[_Text]:
        return self.rng.sample(list(pool), min(k, len(pool))) if pool else []

    def intent_texts(self, intent: str, k: int) -> list[_Text]:
        pool = self.c.banking.get(intent) or self.c.clinc[intent]
        return self.draw(pool, k)

    def seconds(self, low: float, high: float) -> timedelta:
        return timedelta(seconds=round(self.rng.uniform(low, high)))

    def chat_delay(self, conv: _Conversation, role: SenderRole) -> timedelta:
        """Seconds within a burst by one sender, up to minutes when the other side answers."""
        if conv.turns and conv.turns[-1].role == role:
            return self.seconds(4, 40)
        if self.rng.random() < 0.1:
            return self.seconds(180, 720)
        return self.seconds(15, 150)

    def say(self, conv: _Conversation, role: SenderRole, texts: Sequence[_Text]) -> None:
        for t in texts:
            conv.add(role, t.text, t.label, self.chat_delay(conv, role))

    def agent_line(self, conv: _Conversation, options: Sequence[str]) -> None:
        conv.add("agent", self.rng.choice(options), dict(_TEMPLATE), self.chat_delay(conv, "agent"))

    # -- chats -----------------------------------------------------------------------------
    def bank_chat(self, start: timedelta, *, session_gap: bool, trivial: bool) -> _Conversation:
        conv = _Conversation(BANK, "chat", start)
        if trivial:
            self.say(conv, "customer", self.draw(self.greetings))
            self.say(conv, "customer", self.draw(self.small_talk))
            self.say(conv, "customer", self.draw(self.closings))
            if conv.turns:
                return conv
        if self.clinc_bank and self.rng.random() < 0.15:
            intent = self.rng.choice(self.clinc_bank)
        else:
            intent = self.rng.choice(self.bank_intents)
        compliance = intent in self.c.compliance
        texts = self.intent_texts(intent, self.rng.choice((1, 2, 2, 3, 3, 4)))
        if self.rng.random() < 0.45:
            self.say(conv, "customer", self.draw(self.greetings))
        self.say(conv, "customer", texts[:1])
        if self.rng.random() < (0.6 if compliance else 0.3):
            options = _BANK_CHAT_AGENT_COMPLIANCE if compliance else _BANK_CHAT_AGENT[:3]
            self.agent_line(conv, options)
        self.say(conv, "customer", texts[1:2])
        if self.rng.random() < 0.12:
            self.say(conv, "customer", self.draw(self.c.oos))
        if session_gap:  # the customer comes back after the session has expired
            gap = timedelta(minutes=self.rng.randint(35, 110))
            back = self.draw(self.greetings)
            if back:
                conv.add("customer", back[0].text, back[0].label, gap)
                gap = self.seconds(5, 30)
            again = texts[2:] or self.intent_texts(intent, 1)
            conv.add("customer", again[0].text, again[0].label, gap)
            self.say(conv, "customer", again[1:])
        else:
            self.say(conv, "customer", texts[2:])
        if self.rng.random() < 0.3:
            self.agent_line(conv, _BANK_CHAT_AGENT[3:])
        if self.rng.random() < 0.5:
            self.say(conv, "customer", self.draw(self.closings))
        return conv

    def abcd_chat(self, dialogue: _Dialogue, start: timedelta) -> _Conversation:
        conv = _Conversation(SHOP, "chat", start)
        for role, text in dialogue.turns:
            conv.add(role, text, dialogue.label, self.chat_delay(conv, role))
        return conv

    # -- email -----------------------------------------------------------------------------
    def email_thread(
        self,
        tenant: str,
        start: timedelta,
        customer: str,
        messages: Sequence[tuple[SenderRole, str, Label]],
        *,
        quote: Sequence[bool],
    ) -> _Conversation:
        """Render emails hours apart; a reply may quote the previous email (whole thread)."""
        desk = _BANK_DESK if tenant == BANK else _SHOP_DESK
        conv = _Conversation(tenant, "email", start)
        previous: tuple[str, str, timedelta] | None = None
        for (role, body, label), quoted in zip(messages, quote, strict=True):
            delay = timedelta(minutes=self.rng.randint(120, 30 * 60)) if conv.turns else timedelta()
            if role == "agent":
                text = f"Dear {customer.split()[0]},\n\n{body}\n\nKind regards,\n{desk}"
            else:
                text = f"{self.rng.choice(('Hello,', 'Hi,', 'Dear team,'))}\n\n{body}"
                text += f"\n\n{self.rng.choice(('Thanks,', 'Regards,', 'Best,'))}\n{customer}"
            if quoted and previous is not None:
                sender, prev_text, prev_at = previous
                when = _email_date(START + conv.start + prev_at)
                text += f"\n\nOn {when}, {sender} wrote:\n{_quote(prev_text)}"
            conv.add(role, text, label, delay)
            previous = (desk if role == "agent" else customer, text, conv.turns[-1].at)
        return conv

    def bank_email(self, start: timedelta) -> _Conversation:
        intent = self.rng.choice(self.bank_intents)
        compliance = intent in self.c.compliance
        customer = self.rng.choice(_NAMES)
        texts = self.intent_texts(intent, 4)
        first, label = _merge(texts[: self.rng.choice((1, 2, 3))])
        agent_options = _BANK_EMAIL_AGENT_COMPLIANCE if compliance else _BANK_EMAIL_AGENT
        messages: list[tuple[SenderRole, str, Label]] = [("customer", first, label)]
        if self.rng.random() < 0.7:
            messages.append(("agent", self.rng.choice(agent_options), dict(_TEMPLATE)))
        if self.rng.random() < 0.6:
            follow = texts[3:] or self.draw(self.closings)
            if follow:
                messages.append(("customer", follow[0].text, follow[0].label))
                if messages[-2][0] == "agent" and self.rng.random() < 0.4:
                    messages.append(("agent", self.rng.choice(agent_options), dict(_TEMPLATE)))
        quote = [i > 0 and self.rng.random() < 0.5 for i in range(len(messages))]
        return self.email_thread(BANK, start, customer, messages, quote=quote)

    def account_history(self, count: int, intents: Sequence[str]) -> str:
        """A customer's paste of every message they sent before, dated, oldest first."""
        moment = START - timedelta(days=95)
        lines = []
        for _ in range(count):
            moment += timedelta(minutes=self.rng.randint(90, 2 * 24 * 60))
            text = self.draw(self.c.banking[self.rng.choice(list(intents))])[0].text
            lines.append(f"[{moment:%Y-%m-%d %H:%M}] {text}")
        return "\n".join(lines)

    def long_bank_email(
        self, start: timedelta, intent: str, *, rounds: int, target_tokens: int
    ) -> _Conversation:
        """A quoted thread whose first email pastes an account history; the paste grows
        until the whole conversation exceeds `target_tokens`."""
        compliance = intent in self.c.compliance
        customer = self.rng.choice(_NAMES)
        history_intents = self.bank_intents if compliance else self.plain_intents
        texts = self.intent_texts(intent, 2 + rounds)
        opening, label = _merge(texts[:2])
        agent_options = _BANK_EMAIL_AGENT_COMPLIANCE if compliance else _BANK_EMAIL_AGENT
        replies = [self.rng.choice(agent_options) for _ in range(rounds)]
        state = self.rng.getstate()
        count = 20
        while True:
            self.rng.setstate(state)
            history = self.account_history(count, history_intents)
            label = {**label, "pasted_messages": count}
            body = (
                f"{opening}\n\nI have been going back and forth with you for weeks, so below is "
                f"every message I have sent your team, with dates, so nobody has to ask me "
                f"again:\n\n{history}\n\nPlease read all of it before you reply."
            )
            messages: list[tuple[SenderRole, str, Label]] = [("customer", body, label)]
            for i in range(rounds):
                messages.append(("agent", replies[i], dict(_TEMPLATE)))
                extra = texts[2 + i : 3 + i] or texts[:1]
                messages.append(("customer", extra[0].text, extra[0].label))
            conv = self.email_thread(BANK, start, customer, messages, quote=[True] * len(messages))
            if _conversation_tokens(conv) > target_tokens:
                return conv
            count += 10

    def long_shop_email(
        self, dialogue: _Dialogue, start: timedelta, *, target_tokens: int
    ) -> _Conversation:
        """The ABCD customer escalates by email, pasting the chat; replies quote the thread
        and the exchange goes on until the conversation exceeds `target_tokens`."""
        transcript = "\n".join(f"{role.title()}: {text}" for role, text in dialogue.turns)
        body = (
            "I spoke to one of your agents in chat and did not get the answer I needed. "
            f"Here is the whole chat so you can see what was said:\n\n{transcript}\n\n"
            "I would like someone to review this."
        )
        customer_lines = [
            text for role, text in dialogue.turns if role == "customer" and len(text.split()) >= 4
        ] or [text for role, text in dialogue.turns if role == "customer"]
        messages: list[tuple[SenderRole, str, Label]] = [("customer", body, dialogue.label)]
        while True:
            conv = self.email_thread(
                SHOP, start, dialogue.customer_name, messages, quote=[True] * len(messages)
            )
            if _conversation_tokens(conv) > target_tokens:
                return conv
            messages.append(("agent", self.rng.choice(_SHOP_EMAIL_AGENT), dict(_TEMPLATE)))
            messages.append(("customer", self.rng.choice(customer_lines), dialogue.label))


def _conversation_tokens(conv: _Conversation) -> int:
    return sum(count_tokens(t.text, TOKEN_ENCODING) for t in conv.turns)


def _compose(corpus: _Corpus, rng: random.Random, conversations: int) -> list[_Conversation]:
    """The conversation mix: ABCD chats and long threads always, the rest bank chat/email."""
    b = _Builder(corpus, rng)
    day = timedelta(hours=10)  # one support day of chat traffic, from START
    convs = [b.abcd_chat(d, b.seconds(0, day.total_seconds())) for d in corpus.dialogues]

    compliance_intent = next(
        (i for i in ("card_payment_not_recognised", *corpus.compliance) if i in corpus.compliance),
        None,
    )
    plain = b.plain_intents or b.bank_intents
    preferred = "transfer_not_received_by_recipient"
    huge_intent = preferred if preferred in plain else rng.choice(plain)
    long_specs: list[tuple[str, int, int]] = [(huge_intent, 4, HUGE_CONVERSATION_TOKENS + 800)]
    if compliance_intent is not None:
        long_specs.append((compliance_intent, 1, LONG_CONVERSATION_TOKENS + 400))
    for intent, rounds, target in long_specs:
        start = b.seconds(0, 2 * 24 * 3600)
        convs.append(b.long_bank_email(start, intent, rounds=rounds, target_tokens=target))
    if corpus.dialogues:
        escalated = convs[0]  # the first ABCD chat's customer follows up by email
        start = escalated.end + timedelta(hours=rng.randint(3, 20))
        convs.append(
            b.long_shop_email(
                corpus.dialogues[0], start, target_tokens=LONG_CONVERSATION_TOKENS + 400
            )
        )

    remaining = conversations - len(convs)
    if remaining < 2:
        msg = f"conversations must be at least {len(convs) + 2} for this data, got {conversations}"
        raise ValueError(msg)
    emails = max(1, round(remaining * 0.28))
    chats = remaining - emails
    gaps = set(rng.sample(range(chats), max(1, chats // 12)))
    candidates = [i for i in range(chats) if i not in gaps]
    trivial = set(rng.sample(candidates, min(len(candidates), max(1, chats // 16))))
    for i in range(chats):
        start = b.seconds(0, day.total_seconds())
        convs.append(b.bank_chat(start, session_gap=i in gaps, trivial=i in trivial))
    for _ in range(emails):
        convs.append(b.bank_email(b.seconds(0, 3 * 24 * 3600)))
    return convs


def _events(convs: Sequence[_Conversation], compliance: Sequence[str]) -> list[ConversationEvent]:
    """Number conversations per channel in start order; tag, timestamp and sort globally."""
    counters: dict[str, int] = {}
    events = []
    for conv in sorted(convs, key=lambda c: c.start):  # stable: ties keep creation order
        counters[conv.channel] = counters.get(conv.channel, 0) + 1
        conversation_id = f"{conv.channel}-{counters[conv.channel]:04d}"
        is_compliance = any(
            t.label.get("source") == "banking77" and t.label.get("intent") in compliance
            for t in conv.turns
        )
        for turn_no, turn in enumerate(conv.turns, start=1):
            events.append(
                ConversationEvent(
                    event_id=f"{conversation_id}-{turn_no:03d}",
                    conversation_id=conversation_id,
                    tenant_id=conv.tenant_id,
                    channel=conv.channel,
                    role=turn.role,
                    text=turn.text,
                    sent_at=START + conv.start + turn.at,
                    tags=("compliance",) if is_compliance else (),
                    metadata=turn.label,
                )
            )
    events.sort(key=lambda e: (e.sent_at, e.conversation_id, e.event_id))
    return events


def sample_stats(path: Path, events: Sequence[ConversationEvent]) -> SampleStats:
    """Measure a list of events (also used by tests on the shipped file)."""
    tokens: dict[str, int] = {}
    channel: dict[str, str] = {}
    compliance: set[str] = set()
    last_chat: dict[str, datetime] = {}
    gaps: set[str] = set()
    for e in sorted(events, key=lambda e: (e.conversation_id, e.sent_at)):
        tokens[e.conversation_id] = tokens.get(e.conversation_id, 0) + count_tokens(
            e.text, TOKEN_ENCODING
        )
        channel[e.conversation_id] = e.channel
        if "compliance" in e.tags:
            compliance.add(e.conversation_id)
        if e.channel == "chat":
            previous = last_chat.get(e.conversation_id)
            if previous is not None and e.sent_at - previous > CHAT_SESSION_GAP:
                gaps.add(e.conversation_id)
            last_chat[e.conversation_id] = e.sent_at
    per_channel: dict[str, int] = {}
    for ch in channel.values():
        per_channel[ch] = per_channel.get(ch, 0) + 1
    return SampleStats(
        path=path,
        events=len(events),
        conversations=per_channel,
        compliance_conversations=len(compliance),
        long_conversations=sum(1 for n in tokens.values() if n > LONG_CONVERSATION_TOKENS),
        max_conversation_tokens=max(tokens.values(), default=0),
        chat_session_gaps=len(gaps),
    )


def build_sample(
    data_dir: Path, out_path: Path, *, seed: int = 7, conversations: int = 120
) -> SampleStats:
    """Write `conversations` conversations from `data_dir` as JSONL ConversationEvents.

    Same data + seed -> byte-identical file. Lines are in global `sent_at` order (ties by
    conversation and event id), which is also each conversation's own order.
    """
    corpus = _load_corpus(data_dir)
    events = _events(_compose(corpus, random.Random(seed), conversations), corpus.compliance)
    lines = [encode(e) for e in events]
    too_big = [
        e.event_id for e, line in zip(events, lines, strict=True) if len(line) > MAX_EVENT_BYTES
    ]
    if too_big:
        msg = f"events over {MAX_EVENT_BYTES} bytes would be dead-lettered: {too_big}"
        raise ValueError(msg)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(b"".join(line + b"\n" for line in lines))
    tmp.replace(out_path)
    return sample_stats(out_path, events)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m splitpin.app.sample`: regenerate the shipped sample file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "sample" / "events.jsonl")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--conversations", type=int, default=120)
    args = parser.parse_args(argv)
    stats = build_sample(args.data_dir, args.out, seed=args.seed, conversations=args.conversations)
    print(stats.describe())


if __name__ == "__main__":
    main()
