"""The digest through the real worker: real Redis, a dramatiq worker, aiosmtpd on loopback; once per period and user."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import dramatiq
import pytest
from factories import (
    client_updated,
    owner_changed,
    partner_updated,
    person,
    renewal_removed,
    renewal_updated,
    services_ended,
)

from worker.domain.events import parse_event
from worker.mail.message import message_id_for
from worker.service.actors import DELIVERIES_QUEUE
from worker.service.clock import VirtualClock
from worker.service.digests import DigestScheduler
from worker.service.runtime import Runtime, build_runtime, set_runtime
from worker.state.digests import DigestState, digest_ledger_id

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
# Partner time zone Europe/London: Monday 7 December 2026 08:00 local is 08:00 UTC.
MONDAY_DUE = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
ANNA = "anna@northwind.agency"
JONAS = "jonas@northwind.agency"
CLIENT_CONTACTS = {"jane@acme.com", "billing@acme.com", "bob@acme.com"}


def start_for(deadline: date) -> str:
    return (deadline + timedelta(days=45)).isoformat()


def wait_for(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def rules_path(tmp_path: Path) -> Path:
    text = (ROOT / "rules" / "default.yaml").read_text(encoding="utf-8").replace("  every: off\n", "  every: weekly\n")
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class Pipeline:
    def __init__(self, rt: Runtime, clock: VirtualClock, server) -> None:
        self.rt, self.clock, self.server = rt, clock, server
        self.scheduler = DigestScheduler(DigestState(rt.store), rt.rules, rt.actors.enqueue_digest)
        self.worker: dramatiq.Worker | None = None

    def start_worker(self) -> None:
        self.worker = dramatiq.Worker(self.rt.broker, worker_threads=2, worker_timeout=50)
        self.worker.start()

    def ingest(self, *raws) -> None:
        for raw in raws:
            event = parse_event(raw)
            self.rt.store.apply(event, now=self.clock.now())

    def tick_at(self, moment: datetime, scheduler: DigestScheduler | None = None) -> int:
        self.clock.advance_to(moment)
        return (scheduler or self.scheduler).run_once(self.clock.now())

    def drain(self) -> None:
        self.rt.broker.join(DELIVERIES_QUEUE, timeout=20_000)

    def messages(self) -> list:
        return [(m, message_from_bytes(m.content, policy=policy.default)) for m in self.server.messages]

    def outcome(self, email: str, period_id: str, partner_id: str = "p1"):
        return self.rt.ledger.outcome(partner_id, digest_ledger_id(email), period_id)


@pytest.fixture
def pipeline(smtp_server, redis_url, rules_path) -> Iterator[Pipeline]:
    clock = VirtualClock(datetime(2026, 12, 1, tzinfo=UTC))
    settings = smtp_server.make_settings(
        redis_url=redis_url,
        key_prefix="dg",
        rules_path=rules_path,
        mail_from="Partner Renewals <renewals@platform.example>",
        delivery_min_backoff_ms=50,
        delivery_max_backoff_ms=200,
        delivery_max_retries=3,
    )
    rt = build_runtime(settings, clock=clock)
    set_runtime(rt)
    p = Pipeline(rt, clock, smtp_server)
    yield p
    if p.worker is not None:
        p.worker.stop()
    set_runtime(None)
    rt.close()


def seed_mixed_partner(p: Pipeline) -> None:
    """Clients of every kind: default owner, overrides to Jonas, services ended, removed, decided, far away."""
    at = "2026-12-01T10:00:00Z"
    events = [partner_updated(at=at, notify_user=person("Anna Reed", ANNA))]
    for n in range(1, 8):
        events.append(client_updated(at=at, client_id=f"c{n}", domain=f"client{n}.example", name=f"Client {n}"))
    events += [
        owner_changed(at=at, client_id="c2", owner="partner", notify_user=person("Jonas Berg", JONAS)),
        owner_changed(at=at, client_id="c6", owner="hubspot", notify_user=person("Jonas Berg", JONAS)),
        # Kim is named only for a client whose services then ended: Kim gets no digest.
        owner_changed(at=at, client_id="c3", owner="partner", notify_user=person("Kim Lee", "kim@northwind.agency")),
        services_ended(at="2026-12-02T10:00:00Z", client_id="c3"),
        renewal_updated(at=at, renewal_id="r1", client_id="c1", start_date=start_for(date(2027, 1, 15))),
        renewal_updated(
            at=at, renewal_id="r2", client_id="c2", start_date=start_for(date(2026, 12, 20)), currency="USD"
        ),
        renewal_updated(at=at, renewal_id="r3", client_id="c3", start_date=start_for(date(2027, 1, 10))),
        renewal_updated(at=at, renewal_id="r4", client_id="c4", start_date=start_for(date(2027, 1, 10))),
        renewal_removed(at="2026-12-02T10:00:00Z", renewal_id="r4"),
        renewal_updated(
            at=at, renewal_id="r5", client_id="c5", start_date=start_for(date(2027, 1, 10)), status="renewed"
        ),
        renewal_updated(at=at, renewal_id="r6", client_id="c6", start_date=start_for(date(2027, 1, 30))),
        renewal_updated(at=at, renewal_id="r7", client_id="c7", start_date=start_for(date(2027, 3, 1))),
    ]
    p.ingest(*events)


def text_of(message) -> str:
    return message.get_body(("plain",)).get_content()


def test_each_partner_user_gets_one_digest_with_the_right_rows_and_no_client_contact_gets_one(pipeline):
    p = pipeline
    seed_mixed_partner(p)
    p.start_worker()
    assert p.tick_at(MONDAY_DUE - timedelta(minutes=1)) == 0
    assert p.tick_at(MONDAY_DUE) == 1
    wait_for(lambda: len(p.server.messages) == 2)
    p.drain()

    received = {frozenset(m.rcpt_tos): parsed for m, parsed in p.messages()}
    assert set(received) == {frozenset({ANNA}), frozenset({JONAS})}
    assert not CLIENT_CONTACTS & {rcpt for m in p.server.messages for rcpt in m.rcpt_tos}

    anna = received[frozenset({ANNA})]
    assert anna["Subject"] == "3 renewal decisions, the first by December 20"
    assert anna["To"] == f"Anna Reed <{ANNA}>"
    assert anna["Cc"] is None
    assert anna["X-Renewal-Reminder"] == f"p1/digest/2026-W50/{ANNA}"
    assert anna["Content-Language"] == "en"
    text = text_of(anna)
    # Sorted by deadline; the partner-owned one says so; money per currency.
    assert text.index("client2.example") < text.index("client1.example") < text.index("client6.example")
    assert "Renewal owner: you (the partner)" in text
    for absent in ("client3.example", "client4.example", "client5.example", "client7.example"):
        assert absent not in text
    assert "EUR, 2 renewals" in text and "USD, 1 renewal:" in text
    assert anna.get_body(("html",)) is not None

    jonas = text_of(received[frozenset({JONAS})])
    assert "client2.example" in jonas and "client6.example" in jonas
    assert "client1.example" not in jonas
    assert received[frozenset({JONAS})]["Subject"] == "2 renewal decisions, the first by December 20"

    outcome = p.outcome(ANNA, "digest/2026-W50")
    assert outcome is not None and outcome.kind == "sent" and outcome.to == (ANNA,)
    assert outcome.message_id == anna["Message-ID"]
    assert outcome.extra["rows"] == 3


def test_a_period_is_sent_once_whatever_the_schedulers_and_redeliveries(pipeline):
    p = pipeline
    seed_mixed_partner(p)
    p.start_worker()
    assert p.tick_at(MONDAY_DUE) == 1
    wait_for(lambda: len(p.server.messages) == 2)
    # Another scheduler process, later the same week, and the same message delivered again.
    other = DigestScheduler(DigestState(p.rt.store), p.rt.rules, p.rt.actors.enqueue_digest)
    assert p.tick_at(MONDAY_DUE + timedelta(hours=30), scheduler=other) == 0
    assert p.tick_at(MONDAY_DUE + timedelta(hours=31)) == 0
    p.rt.actors.enqueue_digest("p1", "digest/2026-W50")
    p.drain()
    assert len(p.server.messages) == 2
    # The next week has its own digest.
    assert p.tick_at(MONDAY_DUE + timedelta(days=7)) == 1
    wait_for(lambda: len(p.server.messages) == 4)
    p.drain()
    assert p.outcome(ANNA, "digest/2026-W51").kind == "sent"


def test_after_downtime_one_late_digest_goes_out_for_the_current_period_only(pipeline):
    p = pipeline
    seed_mixed_partner(p)
    p.start_worker()
    assert p.tick_at(MONDAY_DUE) == 1
    wait_for(lambda: len(p.server.messages) == 2)
    # Down from Monday of week 50 to Wednesday of week 53.
    assert p.tick_at(datetime(2026, 12, 30, 10, 0, tzinfo=UTC)) == 1
    wait_for(lambda: len(p.server.messages) == 4)
    p.drain()
    tags = sorted(parsed["X-Renewal-Reminder"] for _, parsed in p.messages())
    assert tags == [f"p1/digest/{week}/{user}" for week in ("2026-W50", "2026-W53") for user in (ANNA, JONAS)]
    late = [parsed for _, parsed in p.messages() if "/2026-W53/" in parsed["X-Renewal-Reminder"]]
    assert {m["Date"].datetime for m in late} == {datetime(2026, 12, 30, 10, 0, tzinfo=UTC)}
    for period in ("digest/2026-W51", "digest/2026-W52"):
        assert p.outcome(ANNA, period) is None


def test_content_is_computed_when_the_digest_is_sent_not_when_it_was_enqueued(pipeline):
    p = pipeline
    seed_mixed_partner(p)
    assert p.tick_at(MONDAY_DUE) == 1  # enqueued while no worker runs
    p.ingest(renewal_updated(at="2026-12-07T08:00:30Z", renewal_id="r1", client_id="c1", status="confirmed"))
    p.ingest(services_ended(at="2026-12-07T08:00:31Z", client_id="c6"))
    p.start_worker()
    wait_for(lambda: len(p.server.messages) == 2)
    p.drain()
    received = {frozenset(m.rcpt_tos): parsed for m, parsed in p.messages()}
    anna = text_of(received[frozenset({ANNA})])
    assert "client2.example" in anna
    assert "client1.example" not in anna and "client6.example" not in anna
    assert received[frozenset({ANNA})]["Subject"] == "1 renewal decision, by December 20"


def test_a_deferred_digest_is_retried_with_the_same_message_id_and_sent_once(pipeline):
    p = pipeline
    seed_mixed_partner(p)
    p.server.reply_next("451 4.3.0 Try again later", at="DATA")
    p.start_worker()
    assert p.tick_at(MONDAY_DUE) == 1
    wait_for(lambda: p.outcome(ANNA, "digest/2026-W50") is not None and p.outcome(JONAS, "digest/2026-W50") is not None)
    p.drain()
    received = [parsed for _, parsed in p.messages()]
    assert sorted(m["To"] for m in received) == [f"Anna Reed <{ANNA}>", f"Jonas Berg <{JONAS}>"]
    expected = message_id_for("p1", digest_ledger_id(ANNA), "digest/2026-W50", domain="platform.example")
    assert [m["Message-ID"] for m in received if ANNA in m["To"]] == [expected]
    assert p.outcome(ANNA, "digest/2026-W50").kind == "sent"


def test_nothing_is_sent_when_nothing_requires_action_unless_the_rules_ask(pipeline, rules_path):
    p = pipeline
    p.ingest(partner_updated(at="2026-12-01T10:00:00Z", notify_user=person("Anna Reed", ANNA)))
    p.start_worker()
    assert p.tick_at(MONDAY_DUE) == 1
    wait_for(lambda: p.outcome(ANNA, "digest/2026-W50") is not None)
    assert p.outcome(ANNA, "digest/2026-W50").reason == "nothing_requires_action"
    assert p.server.messages == []

    rules_path.write_text(rules_path.read_text().replace("send_when_empty: false", "send_when_empty: true"))
    p.rt.rules_watcher.maybe_reload()
    assert p.rt.rules().digest.send_when_empty
    assert p.tick_at(MONDAY_DUE + timedelta(days=7)) == 1
    wait_for(lambda: len(p.server.messages) == 1)
    (message,) = [parsed for _, parsed in p.messages()]
    assert message["Subject"] == "No renewal decisions in the next 60 days"


def test_digests_switched_off_are_not_enqueued(pipeline, rules_path):
    p = pipeline
    seed_mixed_partner(p)
    rules_path.write_text(rules_path.read_text().replace("  every: weekly\n", "  every: off\n"))
    p.rt.rules_watcher.maybe_reload()
    assert p.tick_at(MONDAY_DUE) == 0


def test_the_services_scheduler_tick_enqueues_due_digests(pipeline):
    from worker.service.processes import build_scheduler

    p = pipeline
    seed_mixed_partner(p)
    p.start_worker()
    p.clock.advance_to(MONDAY_DUE)
    scheduler = build_scheduler(p.rt)
    assert scheduler.on_tick is not None
    scheduler.on_tick()
    scheduler.on_tick()  # the next tick, within DIGEST_CHECK_S: no second look
    wait_for(lambda: len(p.server.messages) == 2)
    p.drain()
    assert len(p.server.messages) == 2


def test_a_fault_in_the_digest_look_never_holds_up_the_reminders_tick(pipeline, monkeypatch, caplog):
    from worker.service.processes import build_scheduler

    def broken(self, now):
        raise ValueError("a partner record in an unknown layout")

    monkeypatch.setattr(DigestScheduler, "run_once", broken)
    scheduler = build_scheduler(pipeline.rt)
    assert scheduler.on_tick is not None
    scheduler.on_tick()  # logs, does not raise: the scheduler goes on to enqueue due reminders
    assert "looking for partners due a digest failed" in caplog.text
