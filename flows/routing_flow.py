"""The routing dataflow: events -> ingest -> conversation state -> routing -> topics.

conversations.events ─▶ ingest ─┬─▶ dead-letter
                                └─▶ key by conversation ─▶ state ─▶ route ─▶ decisions
"""

from __future__ import annotations

import base64
from typing import Any

from bytewax import operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink

from flows.sink import CheckedKafkaSink, OutRecord
from operators.conversation_state import ConversationTracker, track_conversations
from operators.ingest import RawRecord, parse_event
from operators.routing import decide
from schemas.dead_letter import DeadLetter
from schemas.decisions import RoutingDecision
from schemas.events import ConversationEvent
from schemas.wire import encode
from splitpin import metrics
from splitpin.kafka.logs import LIBRDKAFKA_LOGGER
from splitpin.settings import Settings


def kafka_source(settings: Settings, *, tail: bool) -> KafkaSource:
    """Offsets live in Bytewax snapshots (no consumer group), so a resume rewinds exactly."""
    return KafkaSource(
        [settings.bootstrap_servers],
        [settings.topic("events")],
        tail=tail,
        batch_size=settings.source_batch_size,
        # Bytewax passes this dict to its consumers and admin client alike.
        add_config={"logger": LIBRDKAFKA_LOGGER},  # type: ignore[dict-item]
    )


def _raw(
    message: KafkaSourceMessage[bytes | None, bytes | None]
    | KafkaError[bytes | None, bytes | None],
) -> RawRecord:
    if isinstance(message, KafkaError):
        # The source is built with raise_on_errors=True (the default), so consumer errors
        # stop the flow inside the source; this only narrows the type.
        msg = f"unexpected consumer error in stream: {message.err}"
        raise TypeError(msg)
    timestamp = message.timestamp[1] if message.timestamp and message.timestamp[0] else None
    return RawRecord(
        key=message.key,
        value=message.value,
        topic=message.topic or "",
        partition=message.partition if message.partition is not None else -1,
        offset=message.offset if message.offset is not None else -1,
        timestamp_ms=timestamp,
    )


def build_flow(
    settings: Settings,
    *,
    source: Source[RawRecord] | None = None,
    sink: Sink[OutRecord] | None = None,
    tail: bool = True,
) -> Dataflow:
    """Wire the stages. Tests pass a TestingSource of RawRecords and a TestingSink."""
    governance = settings.governance
    tracker = ConversationTracker(governance.conversation, governance.routing.token_encoding)
    max_bytes = settings.max_event_bytes

    flow = Dataflow("splitpin-routing")
    raw: Stream[RawRecord]
    if source is None:
        consumed = op.input("kafka-in", flow, kafka_source(settings, tail=tail))
        raw = op.map("to-raw", consumed, _raw)
    else:
        raw = op.input("in", flow, source)

    parsed = op.map("ingest", raw, lambda record: parse_event(record, max_bytes))
    split = op.branch("valid", parsed, lambda item: isinstance(item, ConversationEvent))
    events: Stream[ConversationEvent] = split.trues  # type: ignore[assignment]
    dead: Stream[DeadLetter] = split.falses  # type: ignore[assignment]

    keyed = op.key_on("by-conversation", events, lambda event: event.conversation_id)
    observed = track_conversations("conversation-state", keyed, tracker)

    def route(observation: Any) -> RoutingDecision | None:
        decision = decide(observation, governance)
        if decision is not None:
            metrics.count(metrics.ROUTING_DECISIONS, decision.role, decision.tier)
            metrics.DECISION_SECONDS.observe(observation.elapsed_s)
        return decision

    decisions = op.filter_map("route", op.key_rm("unkey", observed), route)

    decisions_topic = settings.topic("decisions")
    dead_letter_topic = settings.topic("dead_letter")

    def decision_out(decision: RoutingDecision) -> OutRecord:
        return OutRecord(decisions_topic, decision.conversation_id.encode(), encode(decision))

    def dead_letter_out(letter: DeadLetter) -> OutRecord:
        metrics.count(metrics.DEAD_LETTERS, letter.reason)
        key = base64.b64decode(letter.key_b64) if letter.key_b64 is not None else None
        return OutRecord(dead_letter_topic, key, encode(letter))

    out = op.merge(
        "outputs",
        op.map("decision-out", decisions, decision_out),
        op.map("dead-letter-out", dead, dead_letter_out),
    )
    op.output(
        "kafka-out",
        out,
        sink
        or CheckedKafkaSink(
            settings.bootstrap_servers,
            delivery_timeout_ms=settings.delivery_timeout_ms,
            flush_timeout_s=settings.sink_flush_timeout_s,
        ),
    )
    return flow
