"""Delivery on the real Redis and a real SMTP server on loopback: what arrives, once, and what is recorded."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import dramatiq
import pytest
from factories import client_updated, partner_updated, person, renewal_updated, services_ended

from worker.domain.events import parse_event
from worker.mail.message import message_id_for
from worker.ops.inspect import describe_plan
from worker.service.clock import VirtualClock
from worker.service.delivery import LeaseBusy, deliver
from worker.service.runtime import Runtime, build_runtime, set_runtime
from worker.state.schedule import Scheduler

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
# Deadline 2027-01-29; the first notice is due 2026-12-30 09:00 in New York (14:00 UTC).
FIRST_DUE = datetime(2026, 12, 30, 14, 0, tzinfo=UTC)
MAIL_FROM = "Partner Renewals <renewals@platform.example>"


def wait_for(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def deliver_now(rt: Runtime, reminder: str = "first-notice") -> str:
    """One delivery on a fresh event loop, closing the SMTP connections it opened."""

    async def run() -> str:
        try:
            return await deliver(rt, "p1", "r1", reminder, last_try=False)
        finally:
            await rt.close_mailer()

    return asyncio.run(run())


def make_runtime(server, redis_url: str, clock: VirtualClock, **overrides) -> Runtime:
    settings = server.make_settings(
        redis_url=redis_url,
        key_prefix="dl",
        mail_from=MAIL_FROM,
        delivery_min_backoff_ms=50,
        delivery_max_backoff_ms=200,
        delivery_max_retries=3,
        **overrides,
    )
    return build_runtime(settings, clock=clock)


def ingest(rt: Runtime, *raws) -> None:
    for raw in raws:
        event = parse_event(raw)
        rt.store.apply(event)
        rt.planning.replan_for_event(event, rt.rules(), rt.clock.now())


def seed(rt: Runtime, **client_over) -> None:
    client = {
        "domain": "bücher.de",
        "locale": "de",
        "contacts": {
            "primary": person("Jürgen Groß", "juergen@bücher.de"),
            "billing": person('Petra "Pay" Müller', "petra@example.com"),
            "decision_maker": person("Bob <script>", "bob@example.com"),
        },
    }
    ingest(
        rt,
        partner_updated(notify_user=person("Anna Reed", "anna@agency.example")),
        client_updated(**{**client, **client_over}),
        renewal_updated(start_date="2027-03-15", at="2026-12-01T10:00:00Z"),
    )


@contextmanager
def running_pipeline(server, redis_url: str, **overrides) -> Iterator[tuple[Runtime, VirtualClock, object]]:
    """A runtime on a virtual clock with an in-process dramatiq worker (2 threads) sending to ``server``."""
    clock = VirtualClock(datetime(2026, 12, 1, tzinfo=UTC))
    rt = make_runtime(server, redis_url, clock, **overrides)
    set_runtime(rt)
    worker = dramatiq.Worker(rt.broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        yield rt, clock, server
    finally:
        worker.stop()
        set_runtime(None)
        rt.close()


@pytest.fixture
def pipeline(smtp_server, redis_url) -> Iterator[tuple[Runtime, VirtualClock, object]]:
    with running_pipeline(smtp_server, redis_url) as running:
        yield running


def fire_due(rt: Runtime, clock: VirtualClock, moment: datetime) -> int:
    """One scheduler tick at ``moment``: plan what is marked (as the service's tick does), then enqueue."""
    clock.advance_to(moment)
    rt.planning.flush(rt.rules(), clock.now())
    return Scheduler(rt.due_index, rt.actors.enqueue_deliveries, clock.now).run_once()


def outcome(rt: Runtime, reminder: str = "first-notice"):
    return rt.ledger.outcome("p1", "r1", reminder)


def test_a_due_reminder_arrives_with_recipients_subject_parts_locale_reply_to_and_message_id(pipeline):
    rt, clock, server = pipeline
    seed(rt)
    assert fire_due(rt, clock, FIRST_DUE) == 1
    wait_for(lambda: outcome(rt) is not None)
    (received,) = server.messages
    assert received.mail_from == "renewals@platform.example"
    assert sorted(received.rcpt_tos) == sorted(
        ["juergen@xn--bcher-kva.de", "petra@example.com", "bob@example.com", "anna@agency.example"]
    )
    msg = message_from_bytes(received.content, policy=policy.default)
    assert [a.addr_spec for a in msg["To"].addresses] == [
        "juergen@xn--bcher-kva.de",
        "petra@example.com",
        "bob@example.com",
    ]
    assert msg["To"].addresses[0].display_name == "Jürgen Groß"
    assert msg["To"].addresses[1].display_name == 'Petra "Pay" Müller'
    assert [a.addr_spec for a in msg["Cc"].addresses] == ["anna@agency.example"]
    assert "bücher.de" in msg["Subject"]
    assert msg["Content-Language"] == "de"
    assert msg["Reply-To"].addresses[0].addr_spec == "olivia@platform.example"
    assert msg["Message-ID"] == message_id_for("p1", "r1", "first-notice", domain="platform.example")
    assert msg["X-Renewal-Reminder"] == "p1/r1/first-notice"
    assert msg["Date"].datetime == FIRST_DUE
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "bücher.de" in text and "bücher.de" in html
    assert "<script>" not in html
    recorded = outcome(rt)
    assert recorded.kind == "sent" and recorded.message_id == msg["Message-ID"]
    assert recorded.reply.startswith("250")


def test_without_a_renewal_manager_replies_go_to_the_partner_user_the_mail_names(pipeline):
    rt, clock, server = pipeline
    seed(rt)
    ingest(rt, renewal_updated(start_date="2027-03-15", renewal_manager=None, at="2026-12-01T12:00:00Z"))
    fire_due(rt, clock, FIRST_DUE)
    wait_for(lambda: outcome(rt) is not None)
    msg = message_from_bytes(server.messages[0].content, policy=policy.default)
    assert msg["Reply-To"].addresses[0].addr_spec == "anna@agency.example"
    assert "anna@agency.example" in msg.get_body(("plain",)).get_content()


def test_a_4xx_reply_is_retried_and_the_reminder_is_delivered_once(pipeline):
    rt, clock, server = pipeline
    seed(rt)
    server.reply_next("451 4.3.0 Try again later", at="DATA")
    fire_due(rt, clock, FIRST_DUE)
    wait_for(lambda: outcome(rt) is not None)
    assert outcome(rt).kind == "sent"
    assert len(server.messages) == 1


def test_a_dropped_connection_is_retried_and_delivered_once(pipeline):
    rt, clock, server = pipeline
    seed(rt)
    server.drop_next(at="MAIL", messages=2)
    fire_due(rt, clock, FIRST_DUE)
    wait_for(lambda: outcome(rt) is not None)
    assert outcome(rt).kind == "sent", outcome(rt)
    assert len(server.messages) == 1


def refused_count() -> float:
    from prometheus_client import REGISTRY

    labels = {"outcome": "failed", "reason": "refused"}
    return REGISTRY.get_sample_value("renewals_reminders_total", labels) or 0.0


def test_a_5xx_refusal_fails_without_retry_and_suppresses_the_address_for_later_reminders(pipeline):
    rt, clock, server = pipeline
    refused_before = refused_count()
    seed(rt, contacts={"primary": person("Gone", "gone@example.com")})
    server.refuse("gone@example.com", "550 5.1.1 No such user")
    ingest(rt, partner_updated(notify_user=None, at="2026-12-01T11:00:00Z"))
    fire_due(rt, clock, FIRST_DUE)
    wait_for(lambda: outcome(rt) is not None)
    first = outcome(rt)
    assert first.kind == "failed" and "550" in first.reply
    assert first.to == ("gone@example.com",)  # who it was for, marked refused in `plan` and the history
    assert first.extra["refused"] == {"gone@example.com": first.reply}
    plan = describe_plan(rt, "p1", "r1", rules=rt.rules())
    assert "failed (refused)" in plan and "to gone@example.com (REFUSED: SMTP " in plan
    (entry,) = [e for e in rt.ledger.history.entries() if e.outcome == "failed"]
    assert entry.to == ("gone@example.com",) and "refused: gone@example.com" in entry.reason
    wait_for(lambda: refused_count() == refused_before + 1)  # the metric names why it failed
    assert server.messages == []
    fire_due(rt, clock, datetime(2027, 1, 22, 14, 0, tzinfo=UTC))
    wait_for(lambda: outcome(rt, "second-notice") is not None)
    second = outcome(rt, "second-notice")
    assert second.kind == "suppressed"


def test_a_refused_cc_still_delivers_to_the_others_and_is_suppressed(pipeline):
    rt, clock, server = pipeline
    seed(rt)
    server.refuse("anna@agency.example")
    fire_due(rt, clock, FIRST_DUE)
    wait_for(lambda: outcome(rt) is not None)
    assert outcome(rt).kind == "sent"
    assert "anna@agency.example" not in server.messages[0].rcpt_tos
    assert rt.ledger.is_suppressed(["ANNA@agency.example"]) == [True]


def test_retries_running_out_record_failed_with_the_last_reply(pipeline):
    rt, clock, server = pipeline
    seed(rt)
    server.reply_next("421 4.7.0 Too busy", at="MAIL", messages=20)
    fire_due(rt, clock, FIRST_DUE)
    wait_for(lambda: outcome(rt) is not None)
    failed = outcome(rt)
    assert failed.kind == "failed" and failed.reason == "retries exhausted"
    assert "421" in failed.reply
    assert server.messages == []


def test_services_ended_after_planning_sends_nothing_and_records_why(pipeline):
    rt, clock, server = pipeline
    seed(rt)
    clock.advance_to(FIRST_DUE)
    claimed = rt.due_index.claim(clock.now(), lease_ms=60_000, limit=10)
    rt.store.apply(parse_event(services_ended(at="2026-12-29T00:00:00Z")))  # state changes, no re-plan yet
    rt.actors.enqueue_deliveries(claimed)
    wait_for(lambda: outcome(rt) is not None)
    assert (outcome(rt).kind, outcome(rt).reason) == ("skipped", "services_ended")
    assert server.messages == []


def test_a_lease_left_by_a_dead_worker_expires_and_the_retry_keeps_the_message_id(smtp_server, redis_url):
    clock = VirtualClock(datetime(2026, 12, 1, tzinfo=UTC))
    rt = make_runtime(smtp_server, redis_url, clock, send_lease_ms=1_000)
    seed(rt)
    clock.advance_to(FIRST_DUE)
    result, _token, _ = rt.ledger.claim("p1", "r1", "first-notice")  # a worker that then died
    assert result == "claimed"
    with pytest.raises(LeaseBusy):
        deliver_now(rt)
    time.sleep(1.1)
    assert deliver_now(rt) == "sent"
    msg = message_from_bytes(smtp_server.messages[0].content)
    assert msg["Message-ID"] == message_id_for("p1", "r1", "first-notice", domain="platform.example")
    rt.close()


def test_two_runtimes_delivering_the_same_reminder_at_once_send_one_email(smtp_server, redis_url):
    clock = VirtualClock(datetime(2026, 12, 1, tzinfo=UTC))
    a, b = (make_runtime(smtp_server, redis_url, clock) for _ in range(2))
    seed(a)
    clock.advance_to(FIRST_DUE)
    results: list[str] = []
    barrier = threading.Barrier(2)

    def run(rt: Runtime) -> None:
        barrier.wait()
        try:
            results.append(deliver_now(rt))
        except LeaseBusy:
            results.append("busy")

    threads = [threading.Thread(target=run, args=(rt,)) for rt in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) in (["already_final", "sent"], ["busy", "sent"])
    assert len(smtp_server.messages) == 1
    a.close()
    b.close()


def test_the_same_delivery_enqueued_twice_through_two_worker_processes_sends_one_email(smtp_server, redis_url):
    clock = VirtualClock(datetime(2026, 12, 1, tzinfo=UTC))
    rt = make_runtime(smtp_server, redis_url, clock)
    # The worker processes run on the real clock: plan a renewal whose first notice is due now.
    start = (datetime.now(UTC) + timedelta(days=45 + 20)).date().isoformat()
    ingest(rt, partner_updated(), client_updated(), renewal_updated(start_date=start))
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "KEY_PREFIX": "dl",
        "SMTP_HOST": smtp_server.host,
        "SMTP_PORT": str(smtp_server.port),
        "SMTP_SECURITY": "none",
        "MAIL_FROM": MAIL_FROM,
    }
    command = [str(Path(sys.executable).with_name("dramatiq")), "worker.entrypoint", "--processes", "1"]
    command += ["--threads", "2", "--queues", "deliveries"]
    procs = [subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.PIPE) for _ in range(2)]
    try:
        for _ in range(4):
            rt.actors.deliver.send("p1", "r1", "first-notice", 0)
        wait_for(lambda: outcome(rt) is not None, timeout_s=40)
        time.sleep(1.0)  # give any duplicate a chance to arrive
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.communicate(timeout=30)
    assert outcome(rt).kind == "sent"
    assert len(smtp_server.messages) == 1
    rt.close()


def test_starttls_with_a_trusted_certificate_delivers_encrypted(smtp_server_starttls, redis_url):
    clock = VirtualClock(datetime(2026, 12, 1, tzinfo=UTC))
    rt = make_runtime(smtp_server_starttls, redis_url, clock)
    seed(rt)
    clock.advance_to(FIRST_DUE)
    assert deliver_now(rt) == "sent"
    assert smtp_server_starttls.messages[0].encrypted
    rt.close()


def seed_clients(rt: Runtime, count: int) -> list[str]:
    """``count`` clients with one renewal each (r1..rN, clients c1..cN), first notice due at FIRST_DUE."""
    events = [partner_updated(notify_user=person("Anna Reed", "anna@agency.example"))]
    for n in range(1, count + 1):
        contacts = {"primary": person(f"Client {n}", f"client{n}@example.com")}
        events.append(client_updated(client_id=f"c{n}", domain=f"client{n}.example", contacts=contacts))
        events.append(
            renewal_updated(renewal_id=f"r{n}", client_id=f"c{n}", start_date="2027-03-15", at="2026-12-01T10:00:00Z")
        )
    ingest(rt, *events)
    return [f"r{n}" for n in range(1, count + 1)]


def test_a_batch_sends_each_reminder_once_and_records_what_happened_to_each(smtp_server, redis_url):
    clock = VirtualClock(datetime(2026, 12, 1, tzinfo=UTC))
    rt = make_runtime(smtp_server, redis_url, clock, delivery_batch_size=4)
    renewals = seed_clients(rt, 5)
    rt.ledger.suppress(["client3@example.com", "anna@agency.example"])  # r3: nobody left to send to
    clock.advance_to(FIRST_DUE)
    claimed = rt.due_index.claim(clock.now(), lease_ms=60_000, limit=100)
    assert len(claimed) == 5
    rt.store.apply(parse_event(services_ended(client_id="c2", at="2026-12-29T00:00:00Z")))
    assert deliver_now(rt, "first-notice") == "sent"  # r1 went out already, on its own
    refs = [(item.partner_id, item.renewal_id, item.reminder_id) for item in claimed]

    async def run() -> list[str | Exception]:
        from worker.service.delivery import deliver_many

        try:
            return await deliver_many(rt, refs, last_try=False)
        finally:
            await rt.close_mailer()

    results = dict(zip([r for _, r, _ in refs], asyncio.run(run()), strict=True))
    assert results == {
        "r1": "already_final",
        "r2": "skipped:services_ended",
        "r3": "suppressed",
        "r4": "sent",
        "r5": "sent",
    }
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == [
        "client1@example.com",
        "client4@example.com",
        "client5@example.com",
    ]
    kinds = {rid: rt.ledger.outcome("p1", rid, "first-notice").kind for rid in renewals}
    assert kinds == {"r1": "sent", "r2": "skipped", "r3": "suppressed", "r4": "sent", "r5": "sent"}
    # Every claim and plan entry of the batch is gone: nothing is enqueued again.
    assert rt.redis.zcard(rt.keys.claimed()) == 0
    planned = [m.decode() for m in rt.redis.zrange(rt.keys.due(), 0, -1)]
    assert not [m for m in planned if m.endswith("first-notice")]
    rt.close()


def test_a_deferred_send_retries_its_batch_and_the_others_are_not_sent_again(pipeline):
    rt, clock, server = pipeline
    seed_clients(rt, 6)
    server.reply_next("451 4.3.0 Try again later", at="DATA")  # one message of the batch is deferred
    assert fire_due(rt, clock, FIRST_DUE) == 6  # batches of DELIVERY_BATCH_SIZE (20): one message
    wait_for(lambda: all(rt.ledger.outcome("p1", f"r{n}", "first-notice") for n in range(1, 7)))
    time.sleep(0.5)  # a duplicate from the retried batch would have arrived by now
    assert all(rt.ledger.outcome("p1", f"r{n}", "first-notice").kind == "sent" for n in range(1, 7))
    received = sorted(m.rcpt_tos[0] for m in server.messages)
    assert received == sorted(f"client{n}@example.com" for n in range(1, 7))
    ids = [message_from_bytes(m.content)["Message-ID"] for m in server.messages]
    assert len(set(ids)) == 6


def test_the_same_batch_delivered_twice_sends_nothing_the_second_time(pipeline):
    rt, clock, server = pipeline
    seed_clients(rt, 3)
    clock.advance_to(FIRST_DUE)
    claimed = rt.due_index.claim(clock.now(), lease_ms=60_000, limit=100)
    rt.actors.enqueue_deliveries(claimed)
    rt.actors.enqueue_deliveries(claimed)  # a scheduler that enqueued twice, or a redelivered message
    wait_for(lambda: all(rt.ledger.outcome("p1", f"r{n}", "first-notice") for n in range(1, 4)))
    rt.broker.join("deliveries", timeout=20_000)
    assert len(server.messages) == 3


def test_a_renewal_that_arrives_before_its_client_is_sent_once_the_client_arrives(pipeline):
    rt, clock, server = pipeline
    ingest(
        rt,
        partner_updated(notify_user=person("Anna Reed", "anna@agency.example")),
        renewal_updated(start_date="2027-03-15", at="2026-12-01T10:00:00Z"),
    )
    assert fire_due(rt, clock, FIRST_DUE + timedelta(days=2)) == 0  # nothing can be addressed yet
    assert rt.ledger.outcomes("p1", "r1") == {}
    ingest(rt, client_updated(at="2026-12-01T09:00:00Z"))  # older than the renewal: out of order
    assert fire_due(rt, clock, FIRST_DUE + timedelta(days=2, minutes=1)) == 1  # caught up at once
    wait_for(lambda: outcome(rt) is not None)
    assert outcome(rt).kind == "sent"
    assert len(server.messages) == 1


def test_a_claimed_reminder_whose_client_is_unknown_at_send_time_waits_for_it_and_records_nothing(pipeline):
    rt, clock, server = pipeline
    seed(rt)
    clock.advance_to(FIRST_DUE)
    claimed = rt.due_index.claim(clock.now(), lease_ms=60_000, limit=10)
    # The renewal moves to a client whose details have not arrived (state changes, no re-plan yet).
    moved = renewal_updated(client_id="c2", start_date="2027-03-15", at="2026-12-02T10:00:00Z")
    rt.store.apply(parse_event(moved))
    rt.actors.enqueue_deliveries(claimed)
    rt.broker.join("deliveries", timeout=20_000)
    assert rt.ledger.outcomes("p1", "r1") == {}
    assert server.messages == []
    assert rt.redis.zcard(rt.keys.claimed()) == 0 and rt.due_index.size() == 0
    ingest(rt, client_updated(client_id="c2", domain="c2.example", at="2026-12-02T11:00:00Z"))
    assert fire_due(rt, clock, FIRST_DUE + timedelta(minutes=1)) == 1
    wait_for(lambda: outcome(rt) is not None)
    assert outcome(rt).kind == "sent" and len(server.messages) == 1


def test_a_wrong_smtp_password_is_retried_not_failed_and_sends_once_the_setting_is_fixed(smtp_server_auth, redis_url):
    from worker.domain.errors import ConfigError

    clock = VirtualClock(datetime(2026, 12, 1, tzinfo=UTC))
    wrong = make_runtime(smtp_server_auth, redis_url, clock, smtp_password="not the password")
    seed(wrong)
    clock.advance_to(FIRST_DUE)
    with pytest.raises(ConfigError):
        deliver_now(wrong)
    assert wrong.ledger.outcome("p1", "r1", "first-notice") is None  # nothing final: the retry may send
    wrong.close()
    fixed = make_runtime(smtp_server_auth, redis_url, clock)
    assert deliver_now(fixed) == "sent"
    assert len(smtp_server_auth.messages) == 1
    fixed.close()
