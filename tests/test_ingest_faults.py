"""Fault tests of ingest against real worker processes and a private Redis that is killed and restarted.

Each test starts its own redis-server (append-only, fsync always: what Redis acknowledged survives
a kill), so stopping it never disturbs another test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dramatiq import Message
from factories import partner_updated

from worker.config.settings import load_settings
from worker.service.actors import EVENTS_QUEUE
from worker.service.runtime import Runtime, build_runtime

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
PREFIX = "fault"


def wait_for(condition: Callable[[], bool], *, timeout_s: float, what: str | Callable[[], str]) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took, fails the test after ``timeout_s``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"after {timeout_s}s: {what() if callable(what) else what}")
        time.sleep(0.05)
    return time.monotonic() - start


def worker_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "SMTP_", "KEY_PREFIX"))}
    return {
        **env,
        "REDIS_URL": redis_url,
        "KEY_PREFIX": PREFIX,
        "REDIS_MAX_BACKOFF_S": "0.5",
        "REDIS_CONNECT_TIMEOUT_S": "1",
        "REDIS_SOCKET_TIMEOUT_S": "2",
        "PYTHONUNBUFFERED": "1",
    }


def start_workers(redis_url: str, log_path: Path, *, processes: int, threads: int) -> subprocess.Popen[bytes]:
    """``dramatiq worker.entrypoint`` on the events queue, as production runs it, logging to ``log_path``."""
    command = [str(Path(sys.executable).with_name("dramatiq")), "worker.entrypoint", "--queues", EVENTS_QUEUE]
    command += ["--processes", str(processes), "--threads", str(threads)]
    with log_path.open("wb") as log:
        return subprocess.Popen(command, env=worker_env(redis_url), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def producer(private_redis) -> Iterator[Runtime]:
    rt = build_runtime(load_settings(redis_url=private_redis.url(), key_prefix=PREFIX, ingest_batch_size=20))
    yield rt
    rt.close()


def partners_stored(rt: Runtime, ids: list[str]) -> int:
    return int(rt.redis.exists(*[rt.keys.partner(p) for p in ids]))


def queue_leftovers(rt: Runtime) -> dict[str, int]:
    """Entries still on the events queue, its delay queue or in dramatiq's own dead letters."""
    names = [f"{EVENTS_QUEUE}.msgs", f"{EVENTS_QUEUE}.DQ.msgs", f"{EVENTS_QUEUE}.XQ.msgs"]
    sizes = {name: rt.redis.hlen(f"{rt.broker.namespace}:{name}") for name in names}
    return {name: size for name, size in sizes.items() if size}


def push_entry(rt: Runtime, data: bytes) -> None:
    entry_id = str(uuid.uuid4())
    rt.redis.hset(f"{rt.broker.namespace}:{EVENTS_QUEUE}.msgs", entry_id, data)
    rt.redis.rpush(f"{rt.broker.namespace}:{EVENTS_QUEUE}", entry_id)


def test_redis_killed_and_restarted_during_ingest_loses_no_event(private_redis, producer, tmp_path):
    # 2,400 events one per message and 1,200 in batches of 20; 40 of the single ones are invalid.
    singles = [partner_updated(partner_id=f"s{n}") for n in range(2_400)]
    for n in range(0, 2_400, 60):
        singles[n]["data"]["timezone"] = "Mars/Olympus_Mons"
    batched = [partner_updated(partner_id=f"b{n}") for n in range(1_200)]
    valid_ids = [e["partner_id"] for e in singles if e["data"]["timezone"] != "Mars/Olympus_Mons"]
    valid_ids += [e["partner_id"] for e in batched]
    for n in range(0, 2_400, 100):  # interleaved, so that both kinds are in flight at each fault
        for event in singles[n : n + 100]:
            producer.actors.ingest.send(json.dumps(event))
        producer.actors.ingest_batch.send([json.dumps(e) for e in batched[n // 2 : n // 2 + 50]])

    workers = start_workers(private_redis.url(), tmp_path / "workers.log", processes=2, threads=4)
    try:
        wait_for(lambda: partners_stored(producer, valid_ids) >= 300, timeout_s=60, what="ingest to start")
        assert partners_stored(producer, valid_ids) < len(valid_ids) / 2, "ingest ended before the fault"
        private_redis.restart(hard=True, down_s=2.0)  # a crash: SIGKILL
        wait_for(lambda: partners_stored(producer, valid_ids) >= 1_800, timeout_s=60, what="ingest to resume")
        assert partners_stored(producer, valid_ids) < len(valid_ids), "ingest ended before the second fault"
        private_redis.restart(down_s=2.0)  # a graceful restart: SIGTERM
        wait_for(
            lambda: partners_stored(producer, valid_ids) == len(valid_ids) and not queue_leftovers(producer),
            timeout_s=60,
            what=lambda: (
                f"{partners_stored(producer, valid_ids)} of {len(valid_ids)} stored, {queue_leftovers(producer)}"
            ),
        )
    finally:
        stop(workers)
    letters = producer.store.dead_letters(limit=1_000)
    invalid = {json.dumps(e) for e in singles if e["data"]["timezone"] == "Mars/Olympus_Mons"}
    assert {d.raw for d in letters} == invalid
    # At least once: a dead letter whose write Redis ran just before it was killed is written again.
    assert len(letters) <= len(invalid) + 8
    assert {d.reason for d in letters} == {"invalid_event"}
    assert queue_leftovers(producer) == {}
    log = (tmp_path / "workers.log").read_text(errors="replace")
    assert "Redis unavailable" in log and "Redis available again" in log
    assert "Unexpected failure" not in log


def test_an_undecodable_entry_among_valid_events_is_dead_lettered_and_the_rest_stored_within_seconds(
    private_redis, producer, tmp_path
):
    events = [partner_updated(partner_id=f"p{n}") for n in range(200)]
    bad = [b"not json \xff", b"[" * 3000 + b"]" * 3000, b'{"not": "a dramatiq message"}']
    for n, event in enumerate(events):
        producer.actors.ingest.send(json.dumps(event))
        if n in (1, 100, 198):
            push_entry(producer, bad.pop(0))
    workers = start_workers(private_redis.url(), tmp_path / "workers.log", processes=1, threads=4)
    try:
        ids = [e["partner_id"] for e in events]
        took_s = wait_for(
            lambda: partners_stored(producer, ids) == 200 and not queue_leftovers(producer),
            timeout_s=30,
            what="the valid events stored",
        )
    finally:
        stop(workers)
    assert took_s < 15
    letters = producer.store.dead_letters()
    assert {d.raw[:12] for d in letters} == {"not json \\xf", "[[[[[[[[[[[[", '{"not": "a d'}
    assert {d.reason for d in letters} == {"undecodable_message"}


def test_a_message_for_an_actor_this_worker_does_not_know_is_dead_lettered(private_redis, producer, tmp_path):
    later = Message(queue_name=EVENTS_QUEUE, actor_name="ingest_event_v2", args=("{}",), kwargs={}, options={})
    producer.broker.enqueue(later)
    producer.actors.ingest.send(json.dumps(partner_updated(partner_id="p-next")))
    workers = start_workers(private_redis.url(), tmp_path / "workers.log", processes=1, threads=2)
    try:
        wait_for(
            lambda: producer.store.partner("p-next") is not None and not queue_leftovers(producer),
            timeout_s=30,
            what="the queue drained",
        )
    finally:
        stop(workers)
    [letter] = producer.store.dead_letters()
    assert letter.reason == "unknown_actor"
    assert json.loads(letter.raw)["actor_name"] == "ingest_event_v2"


def test_a_dead_redis_is_logged_once_and_its_end_once_by_renewals_run(private_redis, producer, tmp_path):
    log_path = tmp_path / "run.log"
    command = [str(Path(sys.executable).with_name("renewals")), "run", "--threads", "2"]
    with log_path.open("wb") as log:
        run = subprocess.Popen(command, env=worker_env(private_redis.url()), cwd=ROOT, stdout=log, stderr=log)
    try:
        producer.actors.ingest.send(json.dumps(partner_updated(partner_id="p-before")))
        wait_for(lambda: producer.store.partner("p-before") is not None, timeout_s=30, what="renewals run to start")
        lines_before = len(log_path.read_text(errors="replace").splitlines())
        private_redis.stop()
        time.sleep(8)
        during = log_path.read_text(errors="replace").splitlines()[lines_before:]
        private_redis.start()
        producer.actors.ingest.send(json.dumps(partner_updated(partner_id="p-after")))
        wait_for(lambda: producer.store.partner("p-after") is not None, timeout_s=30, what="ingest after the outage")
        wait_for(
            lambda: "Redis available again" in log_path.read_text(errors="replace"),
            timeout_s=10,
            what="the end of the outage logged",
        )
    finally:
        stop(run)
    after = log_path.read_text(errors="replace").splitlines()[lines_before:]
    assert len(during) == 1, during
    assert "Redis unavailable" in during[0]
    assert sum("Redis unavailable" in line for line in after) == 1
    assert sum("Redis available again" in line for line in after) == 1
    assert not [line for line in after if "Traceback" in line or "CRITICAL" in line]
