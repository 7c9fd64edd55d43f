"""The history on a real Redis and SMTP server: every outcome and deferral, and refusals marked where ops look."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from factories import person
from test_delivery_integration import FIRST_DUE, fire_due, make_runtime, outcome, running_pipeline, seed, wait_for

from worker.domain.errors import TransientError
from worker.ops.inspect import describe_client, describe_plan
from worker.service.clock import VirtualClock
from worker.service.delivery import deliver
from worker.service.runtime import Runtime
from worker.state.history import History, HistoryEntry, HistoryFilter

pytestmark = pytest.mark.integration


@pytest.fixture
def live(smtp_server, redis_url) -> Iterator[tuple[Runtime, VirtualClock, object]]:
    with running_pipeline(smtp_server, redis_url) as running:
        yield running


def history(rt: Runtime, **query: str) -> list[HistoryEntry]:
    return list(History(rt.redis, rt.keys).entries(HistoryFilter(**query)))


def test_a_sent_reminder_is_in_the_history_with_recipients_message_id_reply_and_attempt(live):
    rt, clock, _server = live
    seed(rt)
    fire_due(rt, clock, FIRST_DUE)
    wait_for(lambda: outcome(rt) is not None)
    (entry,) = history(rt)
    sent = outcome(rt)
    assert (entry.kind, entry.outcome, entry.attempt) == ("outcome", "sent", 1)
    assert (entry.partner, entry.client, entry.renewal, entry.reminder) == ("p1", "c1", "r1", "first-notice")
    assert entry.to == sent.to and entry.cc == ("anna@agency.example",)
    assert entry.message_id == sent.message_id and entry.reply.startswith("250")
    assert entry.at == sent.at


def test_a_deferred_send_is_in_the_history_and_plan_shows_the_attempts(live):
    rt, clock, server = live
    seed(rt)
    server.reply_next("451 4.3.0 Try again later", at="DATA")
    fire_due(rt, clock, FIRST_DUE)
    wait_for(lambda: outcome(rt) is not None)
    sent, deferred = history(rt)  # newest first
    assert (deferred.kind, deferred.outcome, deferred.attempt) == ("deferral", "deferred", 1)
    assert "451" in deferred.reply and deferred.client == "c1" and deferred.message_id == sent.message_id
    assert (sent.outcome, sent.attempt) == ("sent", 2)
    text = describe_plan(rt, "p1", "r1", rules=rt.rules())
    assert "after 1 deferred attempt(s)" in text


def test_a_reminder_being_retried_shows_its_attempts_and_last_error_in_plan(smtp_server, redis_url):
    clock = VirtualClock(datetime(2026, 12, 1, tzinfo=UTC))
    rt = make_runtime(smtp_server, redis_url, clock)
    seed(rt)
    clock.advance_to(FIRST_DUE)
    smtp_server.reply_next("421 4.7.0 Too busy", at="MAIL", messages=2)

    async def attempt(number: int) -> None:
        try:
            await deliver(rt, "p1", "r1", "first-notice", last_try=False, attempt=number)
        finally:
            await rt.close_mailer()

    for number in (1, 2):
        with pytest.raises(TransientError):
            asyncio.run(attempt(number))
    text = describe_plan(rt, "p1", "r1", rules=rt.rules())
    line = next(line for line in text.splitlines() if line.strip().startswith("first-notice"))
    assert "planned; being retried: 2 deferred attempt(s)" in line and "421 4.7.0 Too busy" in line
    assert [e.attempt for e in history(rt, outcome="deferred")] == [2, 1]
    rt.close()


def test_a_refused_recipient_is_suppressed_with_the_reply_logged_and_marked_in_plan_and_show_client(live, caplog):
    rt, clock, server = live
    seed(rt)
    server.refuse("anna@agency.example", "550 5.1.1 No such user")
    with caplog.at_level(logging.WARNING, logger="worker.delivery"):
        fire_due(rt, clock, FIRST_DUE)
        wait_for(lambda: outcome(rt) is not None)
    assert any("anna@agency.example" in r.getMessage() and "550" in r.getMessage() for r in caplog.records)
    (suppression,) = rt.ledger.suppressions.all()
    assert suppression.address == "anna@agency.example" and suppression.reply.startswith("550 5.1.1")
    assert suppression.source == "p1/r1/first-notice" and suppression.at is not None
    (entry,) = history(rt)
    assert "refused: anna@agency.example" in entry.reason
    plan = describe_plan(rt, "p1", "r1", rules=rt.rules())
    assert "anna@agency.example (REFUSED: 550 5.1.1 No such user; suppressed since" in plan
    assert "Anna Reed <anna@agency.example> [SUPPRESSED since" in plan  # Cc now
    client = describe_client(rt, "p1", "c1", rules=rt.rules())
    cc_line = next(line for line in client.splitlines() if line.strip().startswith("Cc:"))
    assert "SUPPRESSED since" in cc_line and "550 5.1.1 No such user" in cc_line


def test_a_reminder_skipped_for_suppressed_recipients_names_them_in_the_history(live):
    rt, clock, server = live
    seed(rt, contacts={"primary": person("Gone", "gone@example.com")})
    server.refuse("gone@example.com")
    fire_due(rt, clock, FIRST_DUE)
    wait_for(lambda: outcome(rt) is not None)
    fire_due(rt, clock, datetime(2027, 1, 22, 14, 0, tzinfo=UTC))
    wait_for(lambda: outcome(rt, "second-notice") is not None)
    newest = history(rt)[0]
    assert (newest.reminder, newest.outcome) == ("second-notice", "suppressed")
    assert "gone@example.com" in newest.reason


def test_an_expired_scheduler_claim_is_a_deferral_in_the_history(smtp_server, redis_url):
    clock = VirtualClock(datetime(2026, 12, 1, tzinfo=UTC))
    rt = make_runtime(smtp_server, redis_url, clock)
    seed(rt)
    clock.advance_to(FIRST_DUE)
    assert len(rt.due_index.claim(clock.now(), lease_ms=1_000, limit=10)) == 1  # its scheduler then died
    clock.advance_to(FIRST_DUE + timedelta(seconds=5))
    assert len(rt.due_index.claim(clock.now(), lease_ms=60_000, limit=10)) == 1
    (entry,) = history(rt)
    assert (entry.kind, entry.reason, entry.reminder) == ("deferral", "lease expired", "first-notice")
    rt.close()


def test_history_is_newest_first_filtered_and_older_than_history_days_is_not_shown(real_redis):
    from worker.state.keys import Keys

    keys = Keys("h")
    old_ms = int(time.time() * 1000) - 3 * 86_400_000
    for i in range(300):  # written three days ago
        real_redis.xadd(keys.history(), {"at": "2026-01-01T00:00:00+00:00", "outcome": "sent"}, id=f"{old_ms + i}-0")
    hist = History(real_redis, keys, days=1)
    now = datetime.now(UTC)
    hist.append(
        HistoryEntry("outcome", now, "sent", partner="p1", renewal="r1", reminder="a"),
        HistoryEntry("outcome", now, "failed", partner="p2", renewal="r2", reminder="b"),
        HistoryEntry("steering", now, "cancel", partner="p1", renewal="r1", reminder="c", by="ops"),
    )
    assert [e.reminder for e in hist.entries()] == ["c", "b", "a"]
    assert [e.reminder for e in hist.entries(HistoryFilter(partner="p1"))] == ["c", "a"]
    assert [e.reminder for e in hist.entries(HistoryFilter(outcome="failed"))] == ["b"]
    assert [e.reminder for e in hist.entries(HistoryFilter(since=now + timedelta(minutes=1)))] == []
    assert hist.size() < 303  # trimming by age drops whole stream nodes as new entries come


def test_entries_round_trip_in_one_field_and_entries_of_one_field_per_value_are_still_read(real_redis):
    from worker.state.keys import Keys

    keys = Keys("h")
    hist = History(real_redis, keys)
    at = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    entry = HistoryEntry(
        "outcome",
        at,
        "sent",
        partner="p1",
        client="c1",
        renewal="r1",
        reminder="first-notice",
        reason="suppressed: b@x.example",
        to=("a@x.example", "ü@x.example"),
        cc=("p@y.example",),
        message_id="<m@x>",
        reply="250 ok, queued",
        attempt=2,
    )
    real_redis.xadd(  # as written before 2026-12-04
        keys.history(),
        {"kind": "steering", "at": at.isoformat(), "outcome": "retry", "to": "a@x,b@x", "attempt": "0", "by": "ops"},
    )
    hist.append(entry)
    (_, fields), _ = real_redis.xrevrange(keys.history())
    assert list(fields) == [b"e"]
    new, old = hist.entries()
    assert new == HistoryEntry(**{**entry.__dict__, "id": new.id})
    assert (old.kind, old.outcome, old.to, old.cc, old.by) == ("steering", "retry", ("a@x", "b@x"), (), "ops")


def test_a_pipeline_run_again_after_noscript_shows_its_history_entry_once(private_redis):
    from worker.state.keys import Keys
    from worker.state.ledger import Ledger, Outcome

    client = private_redis.client()  # a fresh Redis: the first finish meets NOSCRIPT and runs again whole
    try:
        ledger = Ledger(client, Keys("n"))
        now = datetime.now(UTC)
        entry = HistoryEntry("outcome", now, "sent", partner="p1", renewal="r1", reminder="a")
        ledger.finish_many([(("p1", "r1", "a"), Outcome("sent", now), "", False)], history=[entry])
        hist = History(client, Keys("n"))
        assert hist.size() == 2  # written twice by the re-run...
        assert [e.uid for e in hist.entries()] == [entry.uid]  # ...and shown once
    finally:
        client.close()
