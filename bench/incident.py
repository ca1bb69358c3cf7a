"""The incident's experiment: one heavy model for everything vs. split, measure, pin.

The traffic is data no trained part of the router has seen: the 1,003 banking77 rows that
`splitpin router train` holds out (bench/heldout.py), one question per conversation, chat
and email in the sample's proportions, compliance-bound intents at their natural share and
untagged. It needs the shared data (`../shared/data`, or `--data-dir`). The same traffic
goes through two topologies in one process:

- single: `routing.force_role = compliance`: every request answered by the heavy role
  (the Claude 3.5 Sonnet class), one call, no preliminary;
- split: the shipped policy, whatever `config/governance.yaml` (or SPLITPIN_GOVERNANCE_PATH)
  enables, with `--set dotted.key=value` overrides for experiments.

Both run on the local fleet with per-role latency emulation on (`providers.emulate`), so
the latencies and prices are **emulated** production profiles, while the answers, the
routing and the token counts are real. Reported, from one run, split divided by single:
routine (not pinned) first reply p50 and p95 (decision emitted -> first reply emitted, in
the flow's sink), cost per conversation, final and first-reply accuracy (the reply's first
citation names the gold intent's article), the share of routine events finished by the
fast pass alone (no call by any other role but the summarizer), and the split topology's
absolute final accuracy, each against the targets of issue 14.

    PYTHONPATH=. .venv/bin/python bench/incident.py [--json] [--set replies.verify=audit]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from bytewax.testing import TestingSink, TestingSource, run_main

from bench.heldout import Traffic, build_traffic, heldout_rows
from splitpin.core.router.classifier import Classifier
from splitpin.core.router.train import DEFAULT_DATA_DIR
from splitpin.core.settings import Settings, load_settings
from splitpin.core.stats import nearest_rank, percentile
from splitpin.errors import ConfigError
from splitpin.flows.routing_flow import FlowInputs, build_flow
from splitpin.flows.sink import OutRecord
from splitpin.operators.ingest import RawRecord
from splitpin.providers.knowledge_base import _package_kb, parse_articles
from splitpin.schemas import RoutingDecision, decode
from splitpin.schemas.governance import RoleConfig
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Reply
from splitpin.schemas.wire import encode

TARGETS: tuple[tuple[str, str, str, float], ...] = (
    # (figure, key in the report, comparison, bound): issue 14, "What to build" 6 and "Done when"
    ("routine first reply p50 ratio", "ratio_first_reply_p50", "<=", 0.5),
    ("routine first reply p95 ratio", "ratio_first_reply_p95", "<=", 1.0),
    ("cost per conversation ratio", "ratio_cost_per_conversation", "<=", 0.45),
    ("final accuracy ratio", "ratio_accuracy_final", ">=", 0.99),
    ("routine events finished by the fast pass", "split_fast_only_share", ">=", 0.60),
    ("split final accuracy (absolute)", "split_accuracy_final", ">=", 0.92),
)
FINALS_GRACE_S = 120.0
"""After the last event, how long the bench waits for missing final replies before it ends
the input and reports them (a lost final is a finding, not a hang)."""


class StampedList(list[OutRecord]):
    """TestingSink's list, recording the wall time each record reached the sink."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self.finals: set[str] = set()

    def append(self, item: OutRecord) -> None:
        self.times.append(time.time())
        if item.topic.endswith("conversations.replies") and b'"kind":"final"' in item.value:
            self.finals.add(decode(Reply, item.value).reply_id)
        super().append(item)

    def __iadd__(self, items: Any) -> StampedList:  # type: ignore[misc,override]  # TestingSink: +=
        for item in items:
            self.append(item)
        return self


@dataclass
class Outcome:
    topology: str
    events: int
    first_reply_s: dict[str, float]
    routine: set[str]
    pinned: set[str]
    chat: set[str]
    routed_role: dict[str, str]
    call_roles: dict[str, set[str]]
    cost_by_conversation: dict[str, float]
    first_doc: dict[str, str | None]
    final_doc: dict[str, str | None]
    intent: dict[str, str | None]
    missing_finals: int
    dead_letters: int
    final_status: dict[str, str]
    wall_s: float
    role_usage: dict[str, list[int]] = field(default_factory=dict)
    """role -> [calls, tokens in, tokens out]: where the cost goes (`cost_by_role`)."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """`replies.verify=audit` -> (["replies", "verify"], "audit"); the value is YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        msg = f"--set {text!r}: expected dotted.key=value"
        raise argparse.ArgumentTypeError(msg)
    return key.strip().split("."), yaml.safe_load(value)


def apply_override(config: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = config
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            msg = f"--set {'.'.join(path)}: {part!r} is not a mapping"
            raise ConfigError(msg)
    node[path[-1]] = value


def governance_file(
    base: Path, directory: Path, single: bool, overrides: Sequence[tuple[list[str], Any]]
) -> Path:
    """The shipped config with the overrides, emulation on, budgets lifted; single: forced."""
    config: dict[str, Any] = yaml.safe_load(base.read_text())
    for path, value in overrides:
        apply_override(config, path, value)
    bases = config.get("knowledge", {}).get("bases") or {}
    for name, where in bases.items():  # relative to the original file's folder
        bases[name] = str((base.parent / where).resolve())
    providers = config.setdefault("providers", {})
    providers.update(emulate=True, max_in_flight=512)
    # Budgets are not under test here: neither topology may be refused for spend.
    config["budgets"] = {**config.get("budgets", {}), "default": {"limit_usd": 1000.0}}
    config["budgets"].pop("tenants", None)
    if single:
        config["routing"]["force_role"] = "compliance"
    written = directory / ("single.yaml" if single else "split.yaml")
    written.write_text(yaml.safe_dump(config))
    return written


def run_topology(
    name: str, governance: Path, classifier: Classifier, traffic: Traffic, rate: float
) -> Outcome:
    settings: Settings = load_settings(topic_prefix="bench.", governance_path=governance)
    gap = timedelta(seconds=1.0 / rate)
    now = datetime.now(UTC)  # sent_at as if sent while fed (the flow rejects skewed times)
    records = [
        RawRecord(
            key=None,
            value=encode(e.model_copy(update={"sent_at": now + gap * n})),
            topic="events",
            partition=0,
            offset=n,
        )
        for n, e in enumerate(traffic.events)
    ]
    wanted = {e.event_id for e in traffic.events}
    out = StampedList()

    def feed() -> Iterator[RawRecord | TestingSource.PAUSE]:
        """The events at `rate`, then no end of input until every one has its final reply
        (or the grace ends): at end of input the answering step drains its calls in one
        activation, which would stamp every outstanding reply with the drain's end."""
        for record in records:
            yield record
            yield TestingSource.PAUSE(gap)
        deadline = time.monotonic() + FINALS_GRACE_S
        while not wanted <= out.finals and time.monotonic() < deadline:
            yield TestingSource.PAUSE(timedelta(milliseconds=20))

    flow = build_flow(
        settings,
        inputs=FlowInputs(TestingSource(feed())),
        sink=TestingSink(out),
        classifier=classifier,
    )
    started = time.perf_counter()
    run_main(flow)
    wall = time.perf_counter() - started

    decided: dict[str, float] = {}
    first: dict[str, float] = {}
    outcome = Outcome(
        topology=name,
        events=len(records),
        first_reply_s={},
        routine=set(),
        pinned=set(),
        chat=set(),
        routed_role={},
        call_roles=defaultdict(set),
        cost_by_conversation=defaultdict(float),
        first_doc={},
        final_doc={},
        intent={},
        missing_finals=len(wanted - out.finals),
        dead_letters=sum(1 for r in out if r.topic.endswith("dead-letter")),
        final_status={},
        wall_s=wall,
    )
    conversation_of: dict[str, str] = {}
    cost: dict[str, float] = defaultdict(float)
    calls_by_id: dict[str, CostRecord] = {}
    for at, record in zip(out.times, out, strict=True):
        topic = record.topic.removeprefix("bench.")
        if topic == "routing.decisions":
            decision = decode(RoutingDecision, record.value)
            decided[decision.event_id] = at
            conversation_of[decision.event_id] = decision.conversation_id
            (outcome.pinned if decision.pinned else outcome.routine).add(decision.event_id)
            outcome.routed_role[decision.event_id] = decision.role
            outcome.intent[decision.event_id] = decision.intent
            if decision.channel == "chat":
                outcome.chat.add(decision.event_id)
        elif topic == "conversations.replies":
            reply = decode(Reply, record.value)
            doc = reply.citations[0].doc_id if reply.citations else None
            if reply.reply_id not in first:
                first[reply.reply_id] = at
                outcome.first_doc[reply.reply_id] = doc
            if reply.kind == "final":
                outcome.final_doc[reply.reply_id] = doc
                outcome.final_status[reply.reply_id] = reply.status
        elif topic == "routing.metrics":
            # A hedge's settled loser restates the job's last record (same record_id,
            # new job_calls): one call, counted once.
            cost_record = decode(CostRecord, record.value)
            calls_by_id[cost_record.record_id] = cost_record
    for cost_record in calls_by_id.values():
        cost[cost_record.event_id] += cost_record.cost_usd
        outcome.call_roles[cost_record.event_id].add(cost_record.role)
        usage = outcome.role_usage.setdefault(cost_record.role, [0, 0, 0])
        usage[0] += 1
        usage[1] += cost_record.tokens_in
        usage[2] += cost_record.tokens_out
    for event_id, usd in cost.items():
        outcome.cost_by_conversation[conversation_of.get(event_id, event_id)] += usd
    outcome.first_reply_s = {e: first[e] - decided[e] for e in first if e in decided}
    return outcome


def cost_by_role(
    outcome: Outcome, roles: Mapping[Any, RoleConfig], conversations: int
) -> list[dict[str, Any]]:
    """Per role: calls, mean tokens in and out per call, and USD per conversation from input
    and from output tokens (list prices of the config, the rule CostRecords use)."""
    out = []
    for role, (calls, tokens_in, tokens_out) in sorted(outcome.role_usage.items()):
        config = roles[role]
        per = max(conversations, 1)
        out.append(
            {
                "role": role,
                "calls": calls,
                "tokens_in_per_call": round(tokens_in / max(calls, 1), 1),
                "tokens_out_per_call": round(tokens_out / max(calls, 1), 1),
                "usd_in_per_conversation": config.cost_usd(tokens_in, 0) / per,
                "usd_out_per_conversation": config.cost_usd(0, tokens_out) / per,
            }
        )
    return out


def accuracy_by_status(
    outcomes: Mapping[str, Outcome], gold: dict[str, str], intent_of: dict[str, Any]
) -> dict[str, tuple[int, float, float]]:
    """Per status of the split topology's final reply: how many events, and the final
    accuracy of split and of single on exactly those events (where skipping the verifier,
    or verifying, gains or loses against the heavy model)."""
    split, single = outcomes["split"], outcomes["single"]
    out = {}
    for status in sorted(set(split.final_status.values())):
        ids = {e for e, s in split.final_status.items() if s == status}
        out[status] = (
            len(ids),
            accuracy(split.final_doc, gold, ids, intent_of),
            accuracy(single.final_doc, gold, ids, intent_of),
        )
    return out


def article_intents() -> dict[str, str | None]:
    return {
        a.doc_id: a.intent
        for a in parse_articles(
            _package_kb("banking77")[0].decode().splitlines(), "kb", "banking77"
        )
    }


def accuracy(
    docs: dict[str, str | None], gold: dict[str, str], among: set[str], intent_of: dict[str, Any]
) -> float:
    """Share of `among` whose reply's first citation is the gold intent's article; an event
    without that reply counts as wrong (a lost answer is not a right one)."""
    scored = [e for e in gold if e in among]
    if not scored:
        return float("nan")
    right = sum(1 for e in scored if intent_of.get(docs.get(e) or "") == gold[e])
    return right / len(scored)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank q-quantile (q in [0, 1]); NaN for no values."""
    return nearest_rank(values, q * 100) if values else float("nan")


def median(values: list[float]) -> float:
    return percentile(values, 50) if values else float("nan")


def summarize(
    outcome: Outcome,
    gold: dict[str, str],
    routine_ids: set[str],
    compliance_ids: set[str],
    chat_ids: set[str],
    intent_of: dict[str, Any],
) -> dict[str, float]:
    """Routine and pinned are the split policy's classes, applied to both topologies."""
    routine = [s for e, s in outcome.first_reply_s.items() if e in routine_ids]
    chat = [s for e, s in outcome.first_reply_s.items() if e in routine_ids & chat_ids]
    email = [s for e, s in outcome.first_reply_s.items() if e in routine_ids - chat_ids]
    everything = set(gold)
    fast_only = [
        e
        for e in routine_ids
        if outcome.call_roles.get(e, set()) <= {outcome.routed_role.get(e), "summarizer"}
    ]
    router_right = sum(1 for e, g in gold.items() if outcome.intent.get(e) == g)
    return {
        "events": outcome.events,
        "routine_events": len(routine),
        "missing_finals": outcome.missing_finals,
        "dead_letters": outcome.dead_letters,
        "first_reply_p50_s": median(routine),
        "first_reply_p95_s": pct(routine, 0.95),
        "chat_first_reply_p50_s": median(chat),
        "chat_first_reply_p95_s": pct(chat, 0.95),
        "email_first_reply_p50_s": median(email),
        "email_first_reply_p95_s": pct(email, 0.95),
        "cost_per_conversation_usd": statistics.fmean(outcome.cost_by_conversation.values())
        if outcome.cost_by_conversation
        else float("nan"),
        "accuracy_first_reply": accuracy(outcome.first_doc, gold, everything, intent_of),
        "accuracy_final": accuracy(outcome.final_doc, gold, everything, intent_of),
        "accuracy_final_routine": accuracy(outcome.final_doc, gold, routine_ids, intent_of),
        "accuracy_final_pinned": accuracy(outcome.final_doc, gold, compliance_ids, intent_of),
        "router_intent_accuracy": router_right / len(gold) if gold else float("nan"),
        "fast_only_share": len(fast_only) / len(routine_ids) if routine_ids else float("nan"),
        "wall_s": outcome.wall_s,
        **{
            f"finals_{status}": n
            for status, n in sorted(Counter(outcome.final_status.values()).items())
        },
    }


RATIOS = (
    ("first_reply_p50", "first_reply_p50_s"),
    ("first_reply_p95", "first_reply_p95_s"),
    ("chat_first_reply_p50", "chat_first_reply_p50_s"),
    ("chat_first_reply_p95", "chat_first_reply_p95_s"),
    ("email_first_reply_p50", "email_first_reply_p50_s"),
    ("email_first_reply_p95", "email_first_reply_p95_s"),
    ("cost_per_conversation", "cost_per_conversation_usd"),
    ("accuracy_final", "accuracy_final"),
    ("accuracy_first_reply", "accuracy_first_reply"),
    ("accuracy_final_pinned", "accuracy_final_pinned"),
)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def verdicts(flat: dict[str, float]) -> list[tuple[str, str, float, float, bool]]:
    rows = []
    for label, key, op, bound in TARGETS:
        value = flat[key]
        met = (value <= bound) if op == "<=" else (value >= bound)
        rows.append((label, op, bound, value, bool(met) and not math.isnan(value)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--rate", type=float, default=25.0, help="events/s fed to the flow")
    parser.add_argument("--limit", type=int, default=None, help="only the first N events")
    parser.add_argument("--seed", type=int, default=14, help="channel mix and order")
    parser.add_argument(
        "--rows",
        choices=("all", "calibration", "evaluation"),
        default="all",
        help="all 1,003 held-out rows, the half calibration fits on (to choose constants), "
        "or the other half (to quote figures)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=parse_override,
        default=[],
        metavar="KEY=VALUE",
        help="governance override for both topologies, e.g. replies.verify=audit (repeatable)",
    )
    args = parser.parse_args()
    settings = load_settings()
    base = settings.governance_file
    try:
        rows, duplicates = heldout_rows(args.data_dir, args.rows)
    except ConfigError as exc:
        print(
            f"incident bench: needs the shared data the router was trained from: {exc}",
            file=sys.stderr,
        )
        sys.exit(2)
    governance = settings.governance
    traffic = build_traffic(rows, governance.routing.compliance_intents, seed=args.seed)
    if args.limit is not None:
        kept = traffic.events[: args.limit]
        ids = {e.event_id for e in kept}
        traffic = Traffic(
            kept,
            {e: g for e, g in traffic.gold.items() if e in ids},
            traffic.compliance & ids,
        )
    classifier = Classifier.load(governance.classifier, governance.routing)
    with tempfile.TemporaryDirectory(prefix="splitpin-incident-") as tmp:
        outcomes = {}
        files = {}
        for name, forced in (("single", True), ("split", False)):
            try:  # a bad --set fails here, naming the field, before anything runs
                files[name] = governance_file(base, Path(tmp), forced, args.overrides)
                _ = load_settings(governance_path=files[name]).governance
            except ConfigError as exc:
                print(f"incident bench: {name} config: {exc}", file=sys.stderr)
                sys.exit(2)
        for name, path in files.items():
            print(f"running the {name} topology (emulated latency and prices) ...", file=sys.stderr)
            outcomes[name] = run_topology(name, path, classifier, traffic, args.rate)
    intent_of = article_intents()
    split_run = outcomes["split"]
    results = {
        name: summarize(
            outcome, traffic.gold, split_run.routine, split_run.pinned, split_run.chat, intent_of
        )
        for name, outcome in outcomes.items()
    }
    split, single = results["split"], results["single"]
    ratios = {r: ratio(split[k], single[k]) for r, k in RATIOS}
    flat = {f"ratio_{k}": v for k, v in ratios.items()}
    flat.update({f"split_{k}": v for k, v in split.items()})
    targets = verdicts(flat)
    emails = sum(e.channel == "email" for e in traffic.events)
    traffic_line = (
        f"traffic: {len(traffic.events)} held-out banking77 questions never seen in training "
        f"({len(traffic.events) - emails} chat, {emails} email, {len(traffic.compliance)} of "
        f"compliance intents, untagged; {duplicates} held-out rows dropped as duplicates of "
        f"training texts; rows: {args.rows}); training chose hyper-parameters on all 1,003 "
        f"held-out rows and calibration fits on half of them (--rows evaluation excludes it)"
    )
    config_line = f"config: {base}" + "".join(
        f"; {'.'.join(path)}={value!r}" for path, value in args.overrides
    )
    print("EMULATED latency and prices (local fleet imitating the production profiles)")
    print(traffic_line)
    print(config_line)
    print(f"{'figure':34} {'single':>10} {'split':>10} {'split/single':>13}")
    rows_out = [
        ("routine first reply p50 (s)", "first_reply_p50_s", "first_reply_p50"),
        ("routine first reply p95 (s)", "first_reply_p95_s", "first_reply_p95"),
        ("  chat: first reply p50 (s)", "chat_first_reply_p50_s", "chat_first_reply_p50"),
        ("  chat: first reply p95 (s)", "chat_first_reply_p95_s", "chat_first_reply_p95"),
        ("  email: first reply p50 (s)", "email_first_reply_p50_s", "email_first_reply_p50"),
        ("  email: first reply p95 (s)", "email_first_reply_p95_s", "email_first_reply_p95"),
        ("cost per conversation (USD)", "cost_per_conversation_usd", "cost_per_conversation"),
        ("accuracy, final reply", "accuracy_final", "accuracy_final"),
        ("accuracy, first reply", "accuracy_first_reply", "accuracy_first_reply"),
        ("accuracy, final, pinned", "accuracy_final_pinned", "accuracy_final_pinned"),
    ]
    for label, key, r in rows_out:
        print(f"{label:34} {single[key]:>10.4f} {split[key]:>10.4f} {ratios[r]:>13.3f}")
    print(f"{'routine finished by the fast pass':34} {'':>10} {split['fast_only_share']:>10.4f}")
    print(f"{'router intent accuracy':34} {'':>10} {split['router_intent_accuracy']:>10.4f}")
    print(
        f"the split topology's final reply names the right intent's article "
        f"{100 * split['accuracy_final']:.1f} % of the time"
    )
    print(
        f"routine events {split['routine_events']}, pinned {len(split_run.pinned)}; "
        f"missing finals single {single['missing_finals']} split {split['missing_finals']}, "
        f"dead letters {single['dead_letters']} / {split['dead_letters']}; "
        f"wall s single {single['wall_s']:.1f} split {split['wall_s']:.1f}"
    )
    breakdown = {
        name: cost_by_role(outcome, governance.roles, len(outcome.cost_by_conversation))
        for name, outcome in outcomes.items()
    }
    for name, lines in breakdown.items():
        print(
            f"cost by role, {name} (USD/conversation in + out; calls; tokens in/out per call): "
            + "; ".join(
                f"{r['role']} {r['usd_in_per_conversation']:.6f} + "
                f"{r['usd_out_per_conversation']:.6f}, {r['calls']} calls, "
                f"{r['tokens_in_per_call']:.0f}/{r['tokens_out_per_call']:.0f}"
                for r in lines
            )
        )
    by_status = accuracy_by_status(outcomes, traffic.gold, intent_of)
    print(
        "accuracy by the split final's status (events: split / single on the same events): "
        + "; ".join(
            f"{status} {n}: {split_acc:.3f} / {single_acc:.3f}"
            for status, (n, split_acc, single_acc) in by_status.items()
        )
    )
    statuses = Counter(split_run.final_status.values())
    print(
        "split final replies by status: "
        + ", ".join(f"{k} {n}" for k, n in sorted(statuses.items()))
    )
    print("targets (issue 14):")
    for label, op, bound, value, met in targets:
        print(f"  {label:42} {value:>8.3f} {op} {bound:<5} {'met' if met else 'NOT met'}")
    if args.json:
        print(
            json.dumps(
                {
                    "emulated": True,
                    "traffic": traffic_line,
                    "config": config_line,
                    "single": single,
                    "split": split,
                    "ratios": ratios,
                    "targets": {label: met for label, _, _, _, met in targets},
                    "cost_by_role": breakdown,
                    "accuracy_by_status": by_status,
                }
            )
        )


if __name__ == "__main__":
    main()
