"""Time from building a Kafka source partition (no snapshot) to its first record.

Bytewax's `KafkaSource` assigns OFFSET_BEGINNING to a partition with no snapshot, and
librdkafka resolves that logical offset only after a 500 ms back-off. splitpin's source
(`splitpin.flows.routing_flow.kafka_source`) looks the low watermark up first
(`earliest_offset`) and assigns the number. This builds partitions of one topic both ways,
alternating, on a real broker, and prints the time to the first non-empty batch.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 PYTHONPATH=. .venv/bin/python bench/first_fetch.py

Nothing here asserts on timings (bench/README.md): read medians, p99 and the ratio.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable, Sequence

from bytewax.connectors.kafka import KafkaSource
from bytewax.inputs import StatefulSourcePartition

from splitpin.core.kafka.admin import create_topics, delete_topics
from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.settings import Settings, load_settings
from splitpin.core.stats import percentile
from splitpin.flows.routing_flow import kafka_source

RECORDS = 100
POLL_LIMIT_S = 10.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=20, help="partitions built per way (20)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object line")
    return parser.parse_args(argv)


def first_record_s(build: Callable[[], StatefulSourcePartition[object, object]]) -> float:
    """Seconds from building the partition to its first non-empty batch."""
    started = time.perf_counter()
    part = build()
    try:
        while time.perf_counter() - started < POLL_LIMIT_S:
            if list(part.next_batch()):
                return time.perf_counter() - started
    finally:
        part.close()
    msg = f"no record within {POLL_LIMIT_S} s"
    raise RuntimeError(msg)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings: Settings = load_settings(topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.")
    topic = settings.topic("events")
    create_topics(settings, partitions=1, names=[topic])
    try:
        producer = CheckedProducer(settings.bootstrap_servers)
        for i in range(RECORDS):
            producer.produce(topic, f"record-{i}".encode(), b"k")
        producer.flush(30)
        part = f"0-{topic}"
        ways: dict[str, Callable[[], StatefulSourcePartition[object, object]]] = {
            "OFFSET_BEGINNING (Bytewax)": lambda: KafkaSource(
                [settings.bootstrap_servers], [topic], tail=True
            ).build_part("in", part, None),
            "low watermark looked up (splitpin)": lambda: kafka_source(
                settings, topic, tail=True
            ).build_part("in", part, None),
        }
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.repeats):
            for name, build in ways.items():
                times[name].append(first_record_s(build))
    finally:
        delete_topics(settings.bootstrap_servers, [topic])
    base, mine = (times[name] for name in ways)
    print(f"first record after building a partition, {args.repeats} builds each, alternating")
    for name, samples in times.items():
        ms = [s * 1e3 for s in samples]
        print(f"  {name:36} p50 {percentile(ms, 50):7.1f} ms  p99 {percentile(ms, 99):7.1f} ms")
    ratio = percentile(mine, 50) / percentile(base, 50)
    print(f"  ratio (splitpin / Bytewax), p50: {ratio:.3f}")
    if args.json:
        print(json.dumps({name: sorted(samples) for name, samples in times.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
