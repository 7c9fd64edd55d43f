"""Queue entries no actor can run (undecodable, not a dramatiq message, an unknown actor) go to our dead letters."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import dramatiq
import pytest
from draining import drain
from dramatiq import Message
from factories import partner_updated

from worker.config.settings import load_settings
from worker.service.actors import DELIVERIES_QUEUE, EVENTS_QUEUE
from worker.service.broker import entry_raw_text, leave_unacknowledged, read_entry
from worker.service.runtime import Runtime, build_runtime

DEEP = b"[" * 3000 + b"]" * 3000
VALID = Message(
    queue_name="events", actor_name="ingest_event", args=("{}",), kwargs={}, options={}, message_id="m1"
).encode()

UNDECODABLE = [
    pytest.param(b"not json at all", "JSONDecodeError", id="not-json"),
    pytest.param(b"\xff\xfe binary", "UnicodeDecodeError", id="not-utf8"),
    pytest.param(DEEP, "RecursionError", id="nested-3000-deep"),
    pytest.param(b'{"hello": "world"}', "unknown field(s) 'hello'", id="json-not-a-message"),
    pytest.param(b"[1, 2, 3]", "a JSON list, not an object", id="json-list"),
    pytest.param(VALID.replace(b',"kwargs":{}', b""), "no field 'kwargs'", id="no-kwargs"),
    pytest.param(VALID.replace(b'"args":["{}"]', b'"args":"{}"'), "field 'args' is str, not list", id="args-a-string"),
    pytest.param(VALID.replace(b'"options":{}', b'"options":"eta"'), "field 'options' is str", id="options-not-a-dict"),
    pytest.param(
        VALID.replace(b'"actor_name":"ingest_event"', b'"actor_name":7'), "field 'actor_name'", id="int-actor"
    ),
]


@pytest.mark.parametrize(("data", "says"), UNDECODABLE)
def test_an_entry_that_is_not_a_dramatiq_message_is_refused_with_the_reason(data, says):
    with pytest.raises(ValueError, match="not a dramatiq message") as exc:
        read_entry(data)
    assert says in str(exc.value)


def test_a_dramatiq_message_is_read_as_its_fields():
    assert read_entry(VALID)["actor_name"] == "ingest_event"


def test_bytes_that_are_not_utf8_are_kept_as_escapes():
    assert entry_raw_text(b"ok \xff") == "ok \\xff"


@pytest.fixture
def embedded() -> Iterator[Runtime]:
    rt = build_runtime(load_settings(redis_url=None, key_prefix="qe"))
    yield rt
    rt.close()


def push_entry(rt: Runtime, data: bytes, queue: str = EVENTS_QUEUE) -> str:
    """Put ``data`` on a queue as a producer writing to Redis by hand would."""
    entry_id = str(uuid.uuid4())
    namespace = rt.broker.namespace
    rt.redis.hset(f"{namespace}:{queue}.msgs", entry_id, data)
    rt.redis.rpush(f"{namespace}:{queue}", entry_id)
    return entry_id


def queue_leftovers(rt: Runtime) -> dict[str, int]:
    """What is left of the events queue, its delay queue and dramatiq's own dead letters."""
    namespace = rt.broker.namespace
    names = [f"{EVENTS_QUEUE}.msgs", f"{EVENTS_QUEUE}.DQ.msgs", f"{EVENTS_QUEUE}.XQ.msgs"]
    return {name: rt.redis.hlen(f"{namespace}:{name}") for name in names if rt.redis.hlen(f"{namespace}:{name}")}


def test_undecodable_entries_are_dead_lettered_with_their_bytes_and_the_events_around_them_are_stored(embedded):
    bad = [b"not json", b"\xff\xfe binary", DEEP, b'{"hello": "world"}']
    for n in range(20):
        embedded.actors.ingest.send(json.dumps(partner_updated(partner_id=f"p{n}")))
        if n % 5 == 0:
            push_entry(embedded, bad[n // 5])
    drain(embedded)
    assert all(embedded.store.partner(f"p{n}") is not None for n in range(20))
    letters = embedded.store.dead_letters()
    assert sorted(d.raw for d in letters) == sorted(entry_raw_text(b) for b in bad)
    assert {d.reason for d in letters} == {"undecodable_message"}
    deep = next(d for d in letters if d.raw.startswith("[[["))
    assert "RecursionError" in deep.errors[0][1]
    assert queue_leftovers(embedded) == {}


@pytest.mark.parametrize("queue", [f"{EVENTS_QUEUE}.DQ", DELIVERIES_QUEUE, f"{DELIVERIES_QUEUE}.DQ"])
def test_an_undecodable_entry_on_any_other_queue_is_dead_lettered_too(embedded, queue):
    push_entry(embedded, b"garbage", queue=queue)
    embedded.actors.ingest.send(json.dumps(partner_updated(partner_id="p-after")))
    worker = dramatiq.Worker(embedded.broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        for name in (EVENTS_QUEUE, DELIVERIES_QUEUE):
            embedded.broker.join(name, timeout=20_000)
        worker.join()
    finally:
        worker.stop()
    assert [d.raw for d in embedded.store.dead_letters()] == ["garbage"]
    assert embedded.store.partner("p-after") is not None
    assert queue_leftovers(embedded) == {}
    assert embedded.redis.hlen(f"{embedded.broker.namespace}:{queue}.msgs") == 0


def test_a_message_for_an_unknown_actor_goes_to_our_dead_letters_not_to_dramatiqs(embedded):
    message = Message(
        queue_name=EVENTS_QUEUE,
        actor_name="ingest_event_v2",
        args=(json.dumps(partner_updated(partner_id="p-new")),),
        kwargs={},
        options={},
    )
    embedded.broker.enqueue(message)
    drain(embedded)
    [letter] = embedded.store.dead_letters()
    assert letter.reason == "unknown_actor"
    assert "'ingest_event_v2'" in letter.errors[0][1]
    assert json.loads(letter.raw)["actor_name"] == "ingest_event_v2"
    assert queue_leftovers(embedded) == {}


def test_a_hand_written_message_with_a_wrong_redis_id_is_still_acknowledged(embedded):
    fields = json.loads(VALID)
    fields["args"] = [json.dumps(partner_updated(partner_id="p-hand"))]
    fields["options"] = {"redis_message_id": "not-its-id"}
    push_entry(embedded, json.dumps(fields).encode())
    drain(embedded)
    assert embedded.store.partner("p-hand") is not None
    assert queue_leftovers(embedded) == {}


def test_entries_whose_fetch_reply_was_lost_are_put_back_and_run(embedded):
    for n in range(3):
        embedded.actors.ingest.send(json.dumps(partner_updated(partner_id=f"p-lost{n}")))
    broker = embedded.broker
    # The fetch ran in Redis, its reply never arrived: the entries sit in this worker's ack set only.
    broker.fetch_script(keys=[broker.namespace], args=[EVENTS_QUEUE, broker.broker_id, 0, 2])
    broker.suspect(EVENTS_QUEUE)
    drain(embedded)
    assert all(embedded.store.partner(f"p-lost{n}") is not None for n in range(3))
    assert queue_leftovers(embedded) == {}
    assert not embedded.redis.smembers(f"{broker.namespace}:__acks__.{broker.broker_id}.{EVENTS_QUEUE}")


def test_entries_held_by_the_worker_are_not_put_back(embedded):
    embedded.actors.ingest.send(json.dumps(partner_updated(partner_id="p-held")))
    broker = embedded.broker
    [entry_id], _ = broker.fetch_script(keys=[broker.namespace], args=[EVENTS_QUEUE, broker.broker_id, 0, 1])
    broker.hold(EVENTS_QUEUE, [entry_id.decode()])
    broker.suspect(EVENTS_QUEUE)
    broker.recover(EVENTS_QUEUE)
    assert embedded.redis.llen(f"{broker.namespace}:{EVENTS_QUEUE}") == 0


def test_a_message_left_unacknowledged_stays_with_this_worker_in_redis(embedded):
    embedded.actors.ingest.send(json.dumps(partner_updated(partner_id="p-left")))
    broker = embedded.broker
    consumer = broker.consume(EVENTS_QUEUE, prefetch=1, timeout=10)
    message = next(consumer)
    leave_unacknowledged(message)
    consumer.ack(message)
    acks = f"{broker.namespace}:__acks__.{broker.broker_id}.{EVENTS_QUEUE}"
    assert embedded.redis.smembers(acks) == {message.options["redis_message_id"].encode()}
    assert consumer.outstanding_message_count == 0
