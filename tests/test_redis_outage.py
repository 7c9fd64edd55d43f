"""Waiting out a Redis outage: retried with capped backoff, logged once and at its end, given up only on stop."""

from __future__ import annotations

import json
import logging

import pytest
import redis
from dramatiq import Message
from dramatiq.broker import MessageProxy
from factories import partner_updated

from worker.config.settings import load_settings
from worker.domain.errors import RedisUnavailable, TransientError
from worker.service.actors import EVENTS_QUEUE, ingest_batch
from worker.service.broker import is_left_unacknowledged
from worker.service.middleware import DurableRetries
from worker.service.runtime import build_runtime
from worker.state.connection import RedisOutage, redis_client


class Flaky:
    """An operation that fails with ``error`` the first ``failures`` times, then returns ``result``."""

    def __init__(self, failures: int, error: Exception | None = None, result: object = "ok") -> None:
        self.failures = failures
        self.error = error or redis.ConnectionError("Connection refused")
        self.result = result
        self.calls = 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.result


def quick_outage(sleeps: list[float] | None = None) -> RedisOutage:
    return RedisOutage(min_backoff_s=0.01, max_backoff_s=0.04, sleep=(sleeps.append if sleeps is not None else None))


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "worker.redis"]


def test_an_outage_of_many_attempts_is_logged_once_and_its_end_once(caplog):
    caplog.set_level(logging.INFO, logger="worker.redis")
    sleeps: list[float] = []
    outage = quick_outage(sleeps)
    operation = Flaky(failures=50)
    assert outage.call(operation) == "ok"
    assert operation.calls == 51
    lines = outage_lines(caplog)
    assert len(lines) == 2
    assert lines[0].startswith("Redis unavailable (ConnectionError: Connection refused)")
    assert lines[1].startswith("Redis available again after") and "(50 failed attempt(s))" in lines[1]
    assert not outage.down


def test_redis_failing_some_commands_only_does_not_log_each_attempt(caplog):
    caplog.set_level(logging.INFO, logger="worker.redis")
    now = [0.0]
    outage = RedisOutage(min_backoff_s=0.01, max_backoff_s=0.04, sleep=lambda s: None, monotonic=lambda: now[0])
    for _ in range(20):  # fails, then another command succeeds: twenty short outages within a few seconds
        outage.failed(redis.TimeoutError("Timeout reading from socket"))
        now[0] += 0.1
        outage.recovered()
    assert len(outage_lines(caplog)) == 2
    now[0] += 31
    outage.failed(redis.ConnectionError("Connection refused"))
    outage.recovered()
    assert len(outage_lines(caplog)) == 4


def test_the_backoff_grows_and_is_capped():
    sleeps: list[float] = []
    outage = quick_outage(sleeps)
    outage.call(Flaky(failures=12))
    assert sleeps[0] <= 0.01
    assert max(sleeps) <= 0.04
    assert min(sleeps[5:]) >= 0.02  # half the cap at least, once the cap is reached


@pytest.mark.parametrize("error", [redis.TimeoutError("timed out"), redis.BusyLoadingError("LOADING")])
def test_timeouts_and_a_server_still_loading_are_waited_out_too(error):
    assert quick_outage([]).call(Flaky(failures=3, error=error)) == "ok"


def test_a_redis_error_translated_by_the_store_is_waited_out_too():
    def translated():
        try:
            raise redis.ConnectionError("Connection refused")
        except redis.ConnectionError as exc:
            raise TransientError(f"Redis unavailable: {exc}") from exc

    calls = []

    def operation():
        calls.append(1)
        if len(calls) < 3:
            translated()
        return "ok"

    assert quick_outage([]).call(operation) == "ok"


def test_other_errors_are_the_callers_at_once():
    operation = Flaky(failures=1, error=redis.ResponseError("WRONGTYPE"))
    with pytest.raises(redis.ResponseError):
        quick_outage([]).call(operation)
    assert operation.calls == 1


def test_a_stopping_process_stops_waiting_and_says_redis_is_unavailable():
    outage = quick_outage([])
    outage.stop()
    with pytest.raises(RedisUnavailable):
        outage.call(Flaky(failures=1))
    outage.resume()
    assert outage.call(Flaky(failures=1)) == "ok"


def test_bad_backoff_bounds_are_refused():
    with pytest.raises(ValueError):
        RedisOutage(min_backoff_s=2, max_backoff_s=1)


def test_the_redis_client_carries_the_configured_timeouts_and_health_checks():
    settings = load_settings(
        redis_url="redis://127.0.0.1:6379/1",
        redis_socket_timeout_s=7,
        redis_connect_timeout_s=2,
        redis_health_check_interval_s=11,
    )
    client = redis_client(settings)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"], kwargs["health_check_interval"]) == (7, 2, 11)
    client.close()


@pytest.fixture
def embedded():
    rt = build_runtime(load_settings(redis_url=None, redis_max_backoff_s=0.02))
    yield rt
    rt.close()


def test_an_ingest_message_waits_for_redis_and_then_stores_its_events(embedded, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="worker.redis")
    apply_many = embedded.store.apply_many
    flaky = Flaky(failures=5)

    def failing_then_real(*args, **kwargs):
        flaky()
        return apply_many(*args, **kwargs)

    monkeypatch.setattr(embedded.store, "apply_many", failing_then_real)
    ingest_batch(embedded, [partner_updated(partner_id="p-wait")])
    assert embedded.store.partner("p-wait") is not None
    assert embedded.store.dead_letters() == []
    assert len(outage_lines(caplog)) == 2


def test_an_ingest_message_of_a_stopping_worker_gives_up_waiting_and_is_dead_lettered_by_no_one(embedded, monkeypatch):
    monkeypatch.setattr(embedded.store, "apply_many", Flaky(failures=10**6))
    embedded.redis_outage.stop()
    with pytest.raises(RedisUnavailable):
        ingest_batch(embedded, [partner_updated(partner_id="p-stop")])
    assert embedded.store.dead_letters() == []


def message_of(rt, actor_name: str = "ingest_event") -> MessageProxy:
    message = Message(queue_name="events", actor_name=actor_name, args=("{}",), kwargs={}, options={}, message_id="m1")
    return MessageProxy(message)


def test_a_retry_waits_for_redis_to_be_enqueued_instead_of_being_lost(embedded, monkeypatch):
    enqueued = []
    flaky = Flaky(failures=3)

    def enqueue(message, *, delay=None):
        flaky()
        enqueued.append((message, delay))
        return message

    monkeypatch.setattr(embedded.broker, "enqueue", enqueue)
    retries = DurableRetries(embedded.redis_outage)
    message = message_of(embedded)
    retries.after_process_message(embedded.broker, message, exception=RuntimeError("a bug"))
    assert len(enqueued) == 1 and enqueued[0][1] is not None
    assert not message.failed and not is_left_unacknowledged(message)


def test_a_retry_that_cannot_be_enqueued_as_the_worker_stops_leaves_the_message_unacknowledged(embedded, monkeypatch):
    monkeypatch.setattr(embedded.broker, "enqueue", Flaky(failures=10**6))
    embedded.redis_outage.stop()
    retries = DurableRetries(embedded.redis_outage)
    message = message_of(embedded)
    retries.after_process_message(embedded.broker, message, exception=RuntimeError("a bug"))
    assert is_left_unacknowledged(message)


def test_an_actor_that_gave_up_waiting_leaves_its_message_unacknowledged_without_a_retry(embedded, monkeypatch):
    monkeypatch.setattr(embedded.broker, "enqueue", Flaky(failures=0))
    message = message_of(embedded)
    DurableRetries(embedded.redis_outage).after_process_message(
        embedded.broker, message, exception=RedisUnavailable("away")
    )
    assert is_left_unacknowledged(message)
    assert "retries" not in message.options


def test_a_worker_stopped_while_redis_is_away_stops_at_once_and_leaves_its_message_to_another(embedded, monkeypatch):
    import time

    import dramatiq

    rt = embedded
    monkeypatch.setattr(rt.store, "apply_many", Flaky(failures=10**6))
    rt.actors.ingest_batch.send([json.dumps(partner_updated(partner_id="p-away"))])
    worker = dramatiq.Worker(rt.broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not rt.redis_outage.down and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rt.redis_outage.down
    finally:
        started = time.monotonic()
        worker.stop(timeout=30_000)
    assert time.monotonic() - started < 10
    broker = rt.broker
    acks = rt.redis.smembers(f"{broker.namespace}:__acks__.{broker.broker_id}.{EVENTS_QUEUE}")
    assert len(acks) == 1  # neither acknowledged nor retried: still this worker's, for dramatiq to hand on
    assert rt.redis.hlen(f"{broker.namespace}:{EVENTS_QUEUE}.msgs") == 1
    assert rt.redis.zcard(f"{broker.namespace}:{EVENTS_QUEUE}.DQ") == 0
    assert rt.store.dead_letters() == []


def test_the_broker_has_a_client_of_its_own_that_redis_py_never_retries():
    rt = build_runtime(load_settings(redis_url="redis://127.0.0.1:6379/1"))
    assert rt.broker.client is not rt.redis
    assert rt.broker.client.get_retry().get_retries() == 0
    assert rt.redis.get_retry().get_retries() == 2
    rt.close()
