"""Batches of events in one message: stored exactly as single messages would be, bad ones dead-lettered alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from draining import drain
from factories import client_updated, partner_updated, renewal_updated

from worker import publish_many
from worker.config.settings import load_settings
from worker.domain.errors import TransientError
from worker.service.actors import EVENTS_QUEUE, handle_batch_message, handle_event_message
from worker.service.clock import VirtualClock
from worker.service.runtime import Runtime, build_runtime, set_runtime

pytestmark = pytest.mark.integration


NOW = datetime(2026, 11, 5, 12, 0, tzinfo=UTC)


def make_runtime(redis_url: str, key_prefix: str, **overrides: Any) -> Runtime:
    settings = load_settings(redis_url=redis_url, key_prefix=key_prefix, **overrides)
    return build_runtime(settings, clock=VirtualClock(NOW))


@pytest.fixture
def runtime(redis_url: str) -> Iterator[Runtime]:
    rt = make_runtime(redis_url, "it", ingest_batch_size=3)
    set_runtime(rt)
    yield rt
    set_runtime(None)
    rt.close()


def mixed_batch() -> list[str]:
    """Good events, a repeat, a stale one, one breaking the contract and one from a wrong clock."""
    ahead = (NOW + timedelta(days=3)).isoformat()
    newest = client_updated(at="2026-11-03T00:00:00Z", domain="newest.com", event_id="c-new")
    invalid = renewal_updated(renewal_id="r-bad", currency="BTC", event_id="r-bad")
    events = [
        partner_updated(event_id="p"),
        newest,
        client_updated(at="2026-11-01T00:00:00Z", domain="older.com", event_id="c-old"),
        newest,
        invalid,
        client_updated(at=ahead, domain="future.com", event_id="c-future"),
        renewal_updated(renewal_id="r1", event_id="r1"),
    ]
    return [json.dumps(event) for event in events]


def snapshot(rt: Runtime) -> dict[str, Any]:
    """Everything an event can change: records, indexes, re-plan marks, counters, dead letters."""
    store = rt.store
    return {
        "partner": store.partner("p1"),
        "client": store.client_state("p1", "c1"),
        "renewals": {rid: store.renewal_state("p1", rid) for rid in ("r1", "r-bad")},
        "indexes": [store.partner_ids(), store.client_ids("p1"), store.renewal_ids("p1")],
        "dirty": sorted(rt.redis.zrange(rt.keys.dirty(), 0, -1)),
        "stats": store.event_stats(),
        "dead_letters": [(d.reason, d.errors, d.raw) for d in store.dead_letters()],
    }


def test_a_batch_stores_exactly_what_the_same_events_as_single_messages_would(redis_url):
    raws = mixed_batch()
    single = make_runtime(redis_url, "single")
    batch = make_runtime(redis_url, "batch")
    try:
        single_outcomes = [handle_event_message(single, (raw,), {}) for raw in raws]
        batch_outcomes = handle_batch_message(batch, (raws,), {})
        assert batch_outcomes == single_outcomes
        assert batch_outcomes == ["applied", "applied", "stale", "duplicate", "dead_letter", "dead_letter", "applied"]
        # The dead letters of one batch are written together: same content, one received_at.
        assert snapshot(batch) == snapshot(single)
    finally:
        single.close()
        batch.close()


def test_only_the_bad_events_of_a_batch_are_dead_lettered_each_naming_its_field(runtime):
    raws = mixed_batch()
    runtime.actors.ingest_batch.send(raws)
    drain(runtime)
    letters = {json.loads(d.raw)["event_id"]: d for d in runtime.store.dead_letters()}
    assert sorted(letters) == ["c-future", "r-bad"]
    assert letters["r-bad"].reason == "invalid_event"
    assert letters["r-bad"].errors == [("data.currency", "not an ISO 4217 currency code: 'BTC'")]
    assert letters["r-bad"].raw == raws[4]
    assert letters["c-future"].errors[0][0] == "occurred_at"
    client = runtime.store.client_state("p1", "c1").client
    assert client is not None and client.domain == "newest.com"
    assert runtime.store.renewal_state("p1", "r1").renewal is not None


def test_a_redelivered_batch_changes_nothing(runtime):
    raws = mixed_batch()
    runtime.actors.ingest_batch.send(raws)
    drain(runtime)
    before = snapshot(runtime)
    runtime.actors.ingest_batch.send(raws)
    drain(runtime)
    after = snapshot(runtime)
    for key in ("partner", "client", "renewals", "indexes", "dirty"):
        assert after[key] == before[key], key
    # Every valid event comes back as a repeat; the invalid ones are refused again, like any redelivery.
    assert after["stats"]["applied"] == before["stats"]["applied"] == 3
    assert after["stats"]["duplicate"] == before["stats"]["duplicate"] + 5
    assert len(after["dead_letters"]) == 2 * len(before["dead_letters"])


def test_a_batch_is_retried_whole_after_a_transient_error_and_no_good_event_is_dead_lettered(runtime, monkeypatch):
    real_apply_many = runtime.store.apply_many
    calls = []

    def flaky(events, *, now=None):
        calls.append(len(events))
        if len(calls) == 1:
            real_apply_many(events[:2], now=now)  # part of the batch made it in before the connection broke
            raise TransientError("Redis unavailable: connection reset")
        return real_apply_many(events, now=now)

    monkeypatch.setattr(runtime.store, "apply_many", flaky)
    raws = mixed_batch()
    runtime.actors.ingest_batch.send(raws)
    drain(runtime)
    assert calls == [5, 5]
    assert [json.loads(d.raw)["event_id"] for d in runtime.store.dead_letters()] == ["c-future", "r-bad"]
    assert runtime.store.renewal_state("p1", "r1").renewal is not None
    client = runtime.store.client_state("p1", "c1").client
    assert client is not None and client.domain == "newest.com"


def test_after_its_last_retry_each_event_of_a_failing_batch_is_dead_lettered_on_its_own(runtime, monkeypatch):
    from worker.service import actors

    monkeypatch.setattr(actors, "INGEST_MAX_RETRIES", 0)

    def broken(*args, **kwargs):
        raise RuntimeError("store exploded")

    monkeypatch.setattr(actors, "handle_batch_message", broken)
    raws = [json.dumps(partner_updated(partner_id=f"p{i}")) for i in range(3)]
    runtime.actors.ingest_batch.send(raws)
    drain(runtime)
    letters = runtime.store.dead_letters()
    assert [d.reason for d in letters] == ["processing_failed"] * 3
    assert sorted(d.raw for d in letters) == sorted(raws)
    assert letters[0].errors == [("", "RuntimeError: store exploded")]


def test_a_batch_message_of_the_wrong_shape_is_dead_lettered_and_the_worker_goes_on(runtime):
    runtime.actors.ingest_batch.send("not a list")
    runtime.actors.ingest_batch.send([42, {"event_id": "x"}, '{"broken'])
    runtime.actors.ingest_batch.send([json.dumps(partner_updated())])
    drain(runtime)
    assert runtime.store.partner("p1") is not None
    letters = runtime.store.dead_letters()
    assert sorted(d.reason for d in letters) == ["invalid_event"] * 3 + ["malformed_message"]
    assert {d.raw for d in letters} >= {"42", '{"event_id": "x"}', '{"broken'}


def test_publish_many_enqueues_events_in_batches_of_the_configured_size(runtime):
    events = [partner_updated(partner_id=f"p{i}") for i in range(7)]
    ids = publish_many(events, runtime=runtime)
    assert ids == [e["event_id"] for e in events]
    assert runtime.broker.do_qsize(EVENTS_QUEUE) == 3  # 3 + 3 + 1
    drain(runtime)
    assert runtime.store.partner_ids() == sorted(f"p{i}" for i in range(7))
    assert runtime.store.event_stats()["applied"] == 7


def test_renewals_enqueue_sends_the_good_lines_in_batches_in_file_order(runtime, tmp_path, capsys):
    from worker.ops.cli import main

    lines = [json.dumps(partner_updated(partner_id=f"p{i}")) for i in range(7)]
    lines.insert(3, '{"event_id": "broken"')
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["enqueue", str(path)]) == 1
    assert "enqueued 7 event(s), rejected 1" in capsys.readouterr().out
    assert runtime.broker.do_qsize(EVENTS_QUEUE) == 3  # 3 + 3 + 1
    drain(runtime)
    assert runtime.store.partner_ids() == sorted(f"p{i}" for i in range(7))
    assert runtime.store.dead_letters() == []  # a line refused by enqueue never reaches the queue


def test_renewals_enqueue_refuses_a_line_the_worker_would_dead_letter_as_dated_too_far_ahead(runtime, tmp_path, capsys):
    from worker.ops.cli import main

    ahead = runtime.clock.now() + timedelta(seconds=runtime.settings.event_max_future_s + 3600)
    lines = [
        json.dumps(partner_updated(partner_id="p1")),
        json.dumps(partner_updated(partner_id="p2", at=ahead.isoformat())),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["enqueue", str(path)]) == 1
    captured = capsys.readouterr()
    assert "enqueued 1 event(s), rejected 1" in captured.out
    assert f"{path}:2: occurred_at: is " in captured.err and "EVENT_MAX_FUTURE_S" in captured.err
