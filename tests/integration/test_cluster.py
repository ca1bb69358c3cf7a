"""A 2-process Bytewax cluster on the real broker: one final reply per event, a tenant's
budget held across both processes, a SIGKILL of one process that stops the cluster, a
restart of both that loses nothing, and one process resuming the cluster's snapshots.

Process 0 takes its identity from `-i/-a`, process 1 from SPLITPIN_PROCESS_ID /
SPLITPIN_ADDRESSES (splitpin/app/cluster.py). Both share one recovery directory with two
partitions, created once before either starts (as docker-compose's recovery-init does):
Bytewax 0.21 assigns each partition to one worker of the cluster, and the cluster as a
whole must see all of them. `pytest -s` prints the figures.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from splitpin.app.flow_process import stop
from splitpin.app.runner import ensure_recovery_dir
from splitpin.core.kafka.producer import CheckedProducer
from splitpin.core.kafka.reader import read_to_end
from splitpin.core.settings import Settings
from splitpin.schemas import decode
from splitpin.schemas.metrics import CostRecord
from splitpin.schemas.replies import Reply
from tests.factories import event_dict
from tests.flow_process import kill_hard, start_flow
from tests.integration.test_budget_cap import INVENTED, KEYS, QUESTIONS, capped_governance
from tests.kafka_helpers import read_until
from tests.model_api_server import ModelApiServer, succeed

pytestmark = pytest.mark.integration

PARTITIONS = 4
RECOVERY_PARTITIONS = 2
FIRST_WAVE = 240  # before the kill
SECOND_WAVE = 160  # published while one process is killed mid-stream
THIRD_WAVE = 40  # answered by one process resuming the 2-process cluster's snapshots
TIGHT_TENANT, TIGHT_LIMIT_USD = "acme-bank", 0.05
OTHER_TENANT = "globex"  # the default limit: not the one under test
PEER_EXIT_S = 60.0  # how long the survivor may take to notice its peer is gone


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _publish(settings: Settings, numbers: range, *, paced: bool = False) -> list[str]:
    """Single-question conversations, every other one the tight tenant's."""
    producer = CheckedProducer(settings.bootstrap_servers)
    ids = []
    for n in numbers:
        conversation = f"cluster-{n:04d}"
        tenant = TIGHT_TENANT if n % 2 == 0 else OTHER_TENANT
        data = event_dict(
            f"{conversation}-0", conversation, text=QUESTIONS[n % len(QUESTIONS)], tenant_id=tenant
        )
        producer.produce(settings.topic("events"), orjson.dumps(data), conversation.encode())
        ids.append(data["event_id"])
        if paced and n % 10 == 0:
            producer.flush(15)
            time.sleep(0.25)
    producer.flush(30)
    return ids


@contextmanager
def _cluster(
    settings: Settings, recovery_dir: Path, logs: list[Path]
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Process 0 by flags, process 1 by environment; both stopped (SIGTERM) on exit."""
    ports = _free_ports(2)
    addresses = ";".join(f"127.0.0.1:{port}" for port in ports)
    processes = [
        start_flow(settings, recovery_dir, logs[0], "-i", "0", "-a", addresses, **KEYS),
        start_flow(
            settings,
            recovery_dir,
            logs[1],
            SPLITPIN_PROCESS_ID="1",
            SPLITPIN_ADDRESSES=addresses,
            **KEYS,
        ),
    ]
    with ExitStack() as stack:
        for process in processes:
            stack.callback(stop, process)
        yield processes


def _tails(logs: list[Path]) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in logs)


def _finals_cover(ids: set[str], processes: list[subprocess.Popen[bytes]]) -> Any:
    def done(got: list[Any]) -> bool:
        if any(p.poll() is not None for p in processes):
            return True  # a process died: stop waiting, the assertion says why
        finals = {
            r.reply_id for r in (decode(Reply, m.value() or b"") for m in got) if r.kind == "final"
        }
        return finals >= ids

    return done


def test_two_process_cluster_answers_holds_budgets_and_survives_sigkill(
    topic_settings: Any, tmp_path: Path
) -> None:
    with ModelApiServer() as api:
        api.default = succeed(INVENTED, tokens_out=1_200)  # every answer re-routed once
        settings: Settings = topic_settings(
            partitions=PARTITIONS,
            recovery_partitions=RECOVERY_PARTITIONS,
            governance_path=capped_governance(tmp_path, api, 128, TIGHT_LIMIT_USD),
        )
        recovery_dir = tmp_path / "recovery"
        ensure_recovery_dir(recovery_dir, RECOVERY_PARTITIONS)
        logs = [tmp_path / "flow-0.log", tmp_path / "flow-1.log"]
        started = time.monotonic()

        # 1. The cluster answers every event exactly once (no crash yet: no re-emission).
        with _cluster(settings, recovery_dir, logs) as processes:
            first_ids = _publish(settings, range(FIRST_WAVE))
            read_until(
                settings.bootstrap_servers,
                settings.topic("replies"),
                _finals_cover(set(first_ids), processes),
                150,
            )
            assert all(p.poll() is None for p in processes), _tails(logs)
            answered_s = time.monotonic() - started
            finals = Counter(
                r.reply_id
                for r in (
                    decode(Reply, m.value() or b"")
                    for m in read_to_end(settings.bootstrap_servers, settings.topic("replies"))
                )
                if r.kind == "final"
            )
            assert set(finals) == set(first_ids), _tails(logs)
            assert set(finals.values()) == {1}, "exactly one final reply per event"

            # 2. SIGKILL one process mid-stream: the other cannot go on without it.
            second_ids = [f"cluster-{n:04d}-0" for n in range(FIRST_WAVE, FIRST_WAVE + SECOND_WAVE)]
            publisher = threading.Thread(
                target=_publish,
                args=(settings, range(FIRST_WAVE, FIRST_WAVE + SECOND_WAVE)),
                kwargs={"paced": True},
            )
            publisher.start()

            def some_of_second_wave(got: list[Any]) -> bool:
                replies = (decode(Reply, m.value() or b"") for m in got)
                finals = {r.reply_id for r in replies if r.kind == "final"}
                return len(finals & set(second_ids)) >= SECOND_WAVE // 8

            before_kill = read_until(
                settings.bootstrap_servers, settings.topic("replies"), some_of_second_wave, 60
            )
            kill_hard(processes[1])
            killed_at = time.monotonic()
            try:
                survivor_status = processes[0].wait(timeout=PEER_EXIT_S)
            except subprocess.TimeoutExpired:
                survivor_status = None
            survivor_exit_s = time.monotonic() - killed_at
            publisher.join(timeout=60)
            assert survivor_status is not None, (
                f"process 0 still runs {PEER_EXIT_S:.0f} s after its peer was killed\n"
                + _tails(logs)
            )
            assert survivor_status != 0, "the survivor fails, it does not report success"
        answered_before_kill = {
            r.reply_id
            for r in (decode(Reply, m.value() or b"") for m in before_kill)
            if r.kind == "final"
        } & set(second_ids)
        assert len(answered_before_kill) < SECOND_WAVE, "the kill must land mid-stream"

        # 3. Restart both from the shared snapshots: nothing lost.
        all_ids = set(first_ids) | set(second_ids)
        restarted = time.monotonic()
        with _cluster(settings, recovery_dir, logs) as processes:
            read_until(
                settings.bootstrap_servers,
                settings.topic("replies"),
                _finals_cover(all_ids, processes),
                150,
            )
            assert all(p.poll() is None for p in processes), _tails(logs)
        resumed_s = time.monotonic() - restarted

        # 4. Scale down to one process on the same recovery directory: Bytewax moves every
        # key's state (the tight tenant's ledger included) to the remaining worker.
        start = FIRST_WAVE + SECOND_WAVE
        third_ids = _publish(settings, range(start, start + THIRD_WAVE))
        all_ids |= set(third_ids)
        single = start_flow(settings, recovery_dir, logs[0], **KEYS)
        try:
            read_until(
                settings.bootstrap_servers,
                settings.topic("replies"),
                _finals_cover(all_ids, [single]),
                120,
            )
            assert single.poll() is None, _tails(logs)
        finally:
            stop(single)

    replies = [
        decode(Reply, m.value() or b"")
        for m in read_to_end(settings.bootstrap_servers, settings.topic("replies"))
    ]
    final_revisions: dict[str, set[int]] = {}
    for reply in replies:
        if reply.kind == "final":
            final_revisions.setdefault(reply.reply_id, set()).add(reply.revision)
    missing = all_ids - set(final_revisions)
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}"
    # A re-emitted final is the same revision (consumers de-duplicate on reply_id + revision).
    assert all(len(revisions) == 1 for revisions in final_revisions.values())

    # The tight tenant's ledger lives on one worker: its spend, summed over what both
    # processes (and the restart) wrote, stays within the limit although its events
    # arrived on every partition, i.e. through both processes' sources.
    records = {
        r.record_id: r
        for r in (
            decode(CostRecord, m.value() or b"")
            for m in read_to_end(settings.bootstrap_servers, settings.topic("metrics"))
        )
    }
    tight = [r for r in records.values() if r.tenant_id == TIGHT_TENANT]
    spent = sum(r.cost_usd for r in tight)
    tight_finals = {
        r.reply_id: r.status
        for r in replies
        if r.kind == "final" and r.reply_id in all_ids and int(r.reply_id[8:12]) % 2 == 0
    }
    refused = sum(1 for status in tight_finals.values() if status == "refused")
    event_partitions = {
        m.partition()
        for m in read_to_end(settings.bootstrap_servers, settings.topic("events"))
        if orjson.loads(m.value() or b"{}").get("tenant_id") == TIGHT_TENANT
    }
    print(
        f"\ncluster: {len(first_ids)} events answered in {answered_s:.1f} s by 2 processes; "
        f"{len(answered_before_kill)} of {SECOND_WAVE} more answered at the kill; "
        f"survivor exited {survivor_status} {survivor_exit_s:.1f} s after its peer's SIGKILL; "
        f"restart answered the {FIRST_WAVE + SECOND_WAVE} in {resumed_s:.1f} s, "
        f"one process then {THIRD_WAVE} more; "
        f"{TIGHT_TENANT}: {len(tight)} calls, spent ${spent:.4f} of ${TIGHT_LIMIT_USD:.2f} "
        f"(spend/limit {spent / TIGHT_LIMIT_USD:.3f}), {refused} of {len(tight_finals)} refused"
    )
    assert event_partitions == set(range(PARTITIONS)), "the tenant's events on every partition"
    assert tight, "some of the tight tenant's calls were admitted"
    assert refused > 0, "the limit was reached"
    assert spent <= TIGHT_LIMIT_USD
