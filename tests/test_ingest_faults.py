"""Fault tests of ingest against real worker processes and a private Redis that is killed and restarted.

Each test starts its own redis-server (append-only, fsync always: what Redis acknowledged survives
a kill), so stopping it never disturbs another test. The test of a crash while reminders go out also
runs the scheduler, and the worker's deliveries, against an SMTP server on loopback (service_processes.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Message
from factories import client_updated, partner_updated, renewal_updated
from redis_server import RedisServer
from service_processes import ROOT, arrivals, caught_up_start_date, clean_environ, running_service, wait_for
from smtp_fixtures import SmtpServer

from worker.config.settings import load_settings
from worker.domain.events import RenewalData
from worker.service.actors import DELIVERIES_QUEUE, EVENTS_QUEUE
from worker.service.runtime import Runtime, build_runtime
from worker.state.store import parse_stored

pytestmark = pytest.mark.integration
PREFIX = "fault"
# Processes that must ride out a Redis restart: back off at most half a second, give up a dead
# connection within seconds.
OUTAGE_SETTINGS = {"REDIS_MAX_BACKOFF_S": "0.5", "REDIS_CONNECT_TIMEOUT_S": "1", "REDIS_SOCKET_TIMEOUT_S": "2"}


def worker_env(redis_url: str) -> dict[str, str]:
    return {**clean_environ(), "REDIS_URL": redis_url, "KEY_PREFIX": PREFIX, **OUTAGE_SETTINGS, "PYTHONUNBUFFERED": "1"}


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


def queue_leftovers(rt: Runtime, queue: str = EVENTS_QUEUE) -> dict[str, int]:
    """Entries still on a queue (the events queue by default), its delay queue or in dramatiq's own dead letters."""
    names = [f"{queue}.msgs", f"{queue}.DQ.msgs", f"{queue}.XQ.msgs"]
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


PARTNERS, CLIENTS, RENEWALS = 6, 5, 10  # clients per partner, renewals per client: 300 renewals
LATER = 6_000  # renewals whose first reminder is months away
BEFORE, CREATED_AT, UPDATED_AT = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"
Events = list[dict[str, Any]]


def renewal_population() -> tuple[Events, Events, Events, Events]:
    """Partners, their clients, and each of their renewals twice: created, then updated a day later.

    Every renewal's first notice is already past (``caught_up_start_date``): each renewal is mailed
    once, as soon as the scheduler has planned it.
    """
    start = caught_up_start_date()
    partners = [partner_updated(partner_id=f"p{p}", at=BEFORE) for p in range(PARTNERS)]
    clients = [
        client_updated(partner_id=f"p{p}", client_id=f"c{c}", domain=f"client{c}.example", at=BEFORE)
        for p in range(PARTNERS)
        for c in range(CLIENTS)
    ]
    ids = [(f"p{p}", f"c{c}", f"r{c}-{r}") for p in range(PARTNERS) for c in range(CLIENTS) for r in range(RENEWALS)]
    created = [
        renewal_updated(partner_id=pid, client_id=cid, renewal_id=rid, start_date=start, at=CREATED_AT)
        for pid, cid, rid in ids
    ]
    updated = [
        renewal_updated(
            partner_id=pid, client_id=cid, renewal_id=rid, start_date=start, renewal_mrr="950.00", at=UPDATED_AT
        )
        for pid, cid, rid in ids
    ]
    return partners, clients, created, updated


def count_replies(rt: Runtime, queue: Callable[[Any, Any], object], items: list[Any]) -> int:
    """How many of ``items`` get a true reply to the command ``queue`` adds for each, in one round trip."""
    with rt.redis.pipeline(transaction=False) as pipe:
        for item in items:
            queue(pipe, item)
        return sum(1 for reply in pipe.execute() if reply)


def renewals_stored(rt: Runtime, refs: list[tuple[str, str]]) -> int:
    return count_replies(rt, lambda pipe, ref: pipe.exists(rt.keys.renewal(*ref)), refs)


def renewals_updated(rt: Runtime, refs: list[tuple[str, str]]) -> int:
    """How many renewals are stored as their update left them (the later of their two events)."""
    with rt.redis.pipeline(transaction=False) as pipe:
        for ref in refs:
            pipe.get(rt.keys.renewal(*ref))
        stored = [parse_stored(RenewalData, raw) for raw in pipe.execute()]
    return sum(1 for renewal in stored if renewal is not None and renewal.renewal_mrr == Decimal("950.00"))


def first_notices_final(rt: Runtime, refs: list[tuple[str, str]]) -> int:
    return count_replies(rt, lambda pipe, ref: pipe.hexists(rt.keys.ledger(*ref), "first-notice"), refs)


def test_redis_killed_during_ingest_while_reminders_go_out_applies_every_event_and_mails_each_renewal_once(
    private_redis: RedisServer, producer: Runtime, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    partners, clients, created, updated = renewal_population()
    refs = [(e["partner_id"], e["data"]["renewal_id"]) for e in created]
    tags = {f"{pid}/{rid}/first-notice" for pid, rid in refs}
    # Refused by the contract, so dead-lettered, never stored and never mailed.
    bad_others = [partner_updated(partner_id="p-bad", timezone="Mars/Olympus_Mons", at=BEFORE)]
    bad_others += [
        client_updated(partner_id=f"p{n}", client_id="c-bad", timezone="Mars/Olympus_Mons", at=BEFORE) for n in range(2)
    ]
    bad_renewals = [
        renewal_updated(partner_id=f"p{n % PARTNERS}", renewal_id=f"r-bad{n}", status="maybe", at=CREATED_AT)
        for n in range(12)
    ]
    refused = bad_others + bad_renewals
    # Renewals not due for months, interleaved: ingest goes on while the first reminders go out.
    later_start = (date.today() + timedelta(days=200)).isoformat()
    later = [
        renewal_updated(
            partner_id=f"p{n % PARTNERS}",
            client_id=f"c{n % CLIENTS}",
            renewal_id=f"later{n}",
            start_date=later_start,
            at=CREATED_AT,
        )
        for n in range(LATER)
    ]

    later_refs = [(e["partner_id"], e["data"]["renewal_id"]) for e in later]

    for event in partners + clients + bad_others:
        producer.actors.ingest.send(json.dumps(event))
    chunk = len(created) // 10
    for n in range(11):  # a chunk of renewals created one per message, the previous chunk's updates in batches
        for event in created[n * chunk : (n + 1) * chunk] + bad_renewals[:6][n : n + 1]:
            producer.actors.ingest.send(json.dumps(event))
        if n:
            batch = updated[(n - 1) * chunk : n * chunk] + bad_renewals[6:][n - 1 : n]
            for at in range(0, len(batch), 20):
                producer.actors.ingest_batch.send([json.dumps(e) for e in batch[at : at + 20]])
        for event in later[n * LATER // 10 : (n + 1) * LATER // 10]:
            producer.actors.ingest.send(json.dumps(event))

    # A send's lease outlasts the outage (2 s down, then the worker's backoff to write what it held): the
    # production default is 30 s. With the 3 s of the worker-kill tests a message the server accepted
    # just before the crash could go again before its record reached Redis, as test_delivery_faults allows.
    settings = {**OUTAGE_SETTINGS, "SEND_LEASE_MS": "10000"}
    with running_service(private_redis.url(), smtp_server, tmp_path, prefix=PREFIX, settings=settings) as service:
        service.worker(processes=2, threads=4)
        service.scheduler()
        wait_for(
            lambda: len(smtp_server.messages) >= 10 and renewals_updated(producer, refs) > 0,
            30,
            "the first reminders sent and the first updates applied",
        )
        updated_at_kill, sent_at_kill = renewals_updated(producer, refs), len(smtp_server.messages)
        private_redis.restart(hard=True, down_s=2.0)  # a crash (SIGKILL) mid-ingest, with reminders going out
        assert updated_at_kill < len(refs) / 2, f"ingest ended before the fault: {updated_at_kill} renewals updated"

        def progress() -> str:
            return (
                f"{renewals_updated(producer, refs)} of {len(refs)} renewals updated, "
                f"{first_notices_final(producer, refs)} first notices final, {len(smtp_server.messages)} mails, "
                f"queues {queue_leftovers(producer)} {queue_leftovers(producer, DELIVERIES_QUEUE)}\n{service.logs()}"
            )

        wait_for(
            lambda: (
                renewals_updated(producer, refs) == len(refs)
                and renewals_stored(producer, later_refs) == len(later_refs)
                and first_notices_final(producer, refs) == len(refs)
                and not queue_leftovers(producer)
                and not queue_leftovers(producer, DELIVERIES_QUEUE)
            ),
            60,
            progress,
        )
        time.sleep(1.0)  # a reminder sent twice would arrive by now
    log = service.log_text("worker")

    # Every valid event applied: each partner, client and renewal stored, each renewal as updated.
    assert all(producer.store.partner(e["partner_id"]) is not None for e in partners)
    assert all(producer.store.client_state(e["partner_id"], e["data"]["client_id"]).client for e in clients)
    assert renewals_updated(producer, refs) == len(refs)
    assert renewals_stored(producer, later_refs) == len(later_refs)
    # Every refused one dead-lettered with its reason (at least once: a dead letter whose write Redis
    # ran just before it was killed is written again), and nothing of it stored.
    letters = producer.store.dead_letters(limit=1_000)
    assert {d.raw for d in letters} == {json.dumps(e) for e in refused}
    assert len(letters) <= len(refused) + 8
    assert {d.reason for d in letters} == {"invalid_event"}
    assert producer.store.partner("p-bad") is None
    assert not any(producer.store.client_state(f"p{n}", "c-bad").client for n in range(2))
    assert renewals_stored(producer, [(e["partner_id"], e["data"]["renewal_id"]) for e in bad_renewals]) == 0

    # Each renewal's reminder recorded sent, and nothing else; none of the later renewals' yet.
    ledgers = {ref: producer.ledger.outcomes(*ref) for ref in refs}
    not_sent = {
        "/".join(ref): {reminder: (o.kind, o.reason, o.reply) for reminder, o in outcomes.items()}
        for ref, outcomes in ledgers.items()
        if set(outcomes) != {"first-notice"} or outcomes["first-notice"].kind != "sent"
    }
    assert not_sent == {}, f"{len(not_sent)} of {len(refs)} renewals not recorded sent"
    assert first_notices_final(producer, later_refs) == 0
    # Exactly one message per renewal reached the server, the one its ledger names: none missing, none twice.
    received = arrivals(smtp_server)
    assert Counter(tag for tag, _, _ in received) == Counter(tags), f"{sent_at_kill} were sent before the fault"
    assert Counter(mid for _, mid, _ in received) == Counter(o["first-notice"].message_id for o in ledgers.values())
    assert {tag: mid for tag, mid, _ in received} == {
        f"{pid}/{rid}/first-notice": outcomes["first-notice"].message_id for (pid, rid), outcomes in ledgers.items()
    }

    assert "Redis unavailable" in log and "Redis available again" in log
    assert "Unexpected failure" not in log and "may be sent again" not in log


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
