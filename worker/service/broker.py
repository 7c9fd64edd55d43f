"""dramatiq's Redis broker, hardened: no queue entry stalls a consumer, and Redis outages are waited out.

dramatiq's consumer decodes what it fetched and, on an entry it cannot decode, restarts, dropping the
entries it had prefetched: they stay unacknowledged until the worker dies. A message for an actor
this worker does not know goes to dramatiq's own dead-letter queue, where nobody looks. Here every
entry is fetched with its id, so one that cannot be run becomes a message for the actor that keeps
it in our dead letters (``DEAD_LETTER_ENTRY_ACTOR``), acknowledged by that id once it is kept.
"""

from __future__ import annotations

import base64
import logging
import random
import threading
import time
from collections import defaultdict
from typing import Any

from dramatiq import Message, get_encoder
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff, current_millis
from dramatiq.errors import ConnectionClosed
from dramatiq.worker import ConsumerThread

from ..domain.errors import RedisUnavailable
from ..state.connection import REDIS_ERRORS, RedisOutage

__all__ = [
    "DEAD_LETTER_ENTRY_ACTOR",
    "QueueBroker",
    "entry_raw_text",
    "is_left_unacknowledged",
    "leave_unacknowledged",
    "read_entry",
]

DEAD_LETTER_ENTRY_ACTOR = "dead_letter_queue_entry"
_log = logging.getLogger("worker.broker")

# dramatiq's fetch, returning each entry's id with its data: an entry that cannot be decoded carries
# no id of its own, and without it could never be acknowledged. Key names are those of dramatiq's
# dispatch.lua, which does every other operation on the queues.
_FETCH = """
local namespace, queue_name, worker_id = KEYS[1], ARGV[1], ARGV[2]
local timestamp, count = ARGV[3], tonumber(ARGV[4])
local queue = namespace .. ":" .. queue_name
local acks = namespace .. ":__acks__." .. worker_id .. "." .. queue_name
redis.call("zadd", namespace .. ":__heartbeats__", timestamp, worker_id)
local ids = {}
for i = 1, count do
    local id = redis.call("lpop", queue)
    if not id then break end
    ids[i] = id
    redis.call("sadd", acks, id)
end
if #ids == 0 then return {} end
return {ids, redis.call("hmget", queue .. ".msgs", unpack(ids))}
"""

# Entries this worker took but holds no more (the reply of a fetch lost with its connection, or a
# requeue that failed) are in its acknowledgement set and nowhere else: dramatiq would hand them on
# only once this worker is dead. After such a failure they go back to the head of their queue.
_RECOVER = """
local namespace, queue_name, worker_id = KEYS[1], ARGV[1], ARGV[2]
local queue = namespace .. ":" .. queue_name
local acks = namespace .. ":__acks__." .. worker_id .. "." .. queue_name
local held = {}
for i = 3, #ARGV do held[ARGV[i]] = true end
local recovered = 0
for _, id in ipairs(redis.call("smembers", acks)) do
    if not held[id] then
        redis.call("srem", acks, id)
        if redis.call("hexists", queue .. ".msgs", id) == 1 then
            redis.call("lpush", queue, id)
            recovered = recovered + 1
        end
    end
end
return recovered
"""

# What a dramatiq message holds, and of which type, for a worker to run it (the last two may be left out).
_FIELDS: dict[str, type] = {
    "queue_name": str,
    "actor_name": str,
    "args": list,
    "kwargs": dict,
    "options": dict,
    "message_id": str,
    "message_timestamp": int,
}
_OPTIONAL = ("message_id", "message_timestamp")


def read_entry(data: bytes) -> dict[str, Any]:
    """The fields of a queue entry, or ValueError saying why it is not a dramatiq message.

    Never another error: too deep a nesting (RecursionError) or bytes that are not UTF-8 are reasons too.
    """
    try:
        fields = get_encoder().decode(data)
    except Exception as exc:  # dramatiq wraps decoding failures; the innermost cause says what it was
        cause = _innermost(exc)
        raise ValueError(f"not a dramatiq message: {type(cause).__name__}: {str(cause)[:200]}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"not a dramatiq message: a JSON {type(fields).__name__}, not an object")
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise ValueError(f"not a dramatiq message: unknown field(s) {', '.join(map(repr, unknown))}")
    for name, kind in _FIELDS.items():
        if name not in fields:
            if name in _OPTIONAL:
                continue
            raise ValueError(f"not a dramatiq message: no field {name!r}")
        value = fields[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"not a dramatiq message: field {name!r} is {type(value).__name__}, not {kind.__name__}")
    return fields


def _innermost(exc: BaseException) -> BaseException:
    """The error under dramatiq's DecodeErrors (kept as ``error`` or as the cause)."""
    for _ in range(10):
        inner = getattr(exc, "error", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def entry_raw_text(data: bytes) -> str:
    """An entry's bytes as text for the dead letters: UTF-8 as is, other bytes as \\x escapes."""
    return data.decode("utf-8", errors="backslashreplace")


def leave_unacknowledged(message: MessageProxy) -> None:
    """Neither ack nor nack ``message``: it stays with this worker in Redis, which dramatiq hands to
    another worker once this one's heartbeat has stopped (the process is stopping in an outage)."""
    message._left_unacknowledged = True  # type: ignore[attr-defined]


def is_left_unacknowledged(message: MessageProxy) -> bool:
    return bool(getattr(message, "_left_unacknowledged", False))


class QueueBroker(RedisBroker):
    """RedisBroker whose consumers never fail on an entry and wait out Redis outages through ``outage``."""

    def __init__(self, *, outage: RedisOutage, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outage = outage
        self.fetch_script = self.client.register_script(_FETCH)
        self.recover_script = self.client.register_script(_RECOVER)
        # The entry ids each queue's consumer has taken and not yet acknowledged, kept by the broker so
        # that they outlive a consumer that dramatiq restarts; and the queues to recover (see _RECOVER).
        self._held: dict[str, set[str]] = defaultdict(set)
        self._suspect: set[str] = set()
        self._held_lock = threading.Lock()

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Enqueue; from a consumer thread (a delayed message come due), wait for Redis rather than fail.

        A failure there restarts the consumer, which logs every three seconds of an outage.
        """
        if isinstance(threading.current_thread(), ConsumerThread):
            return self.outage.call(lambda: super(QueueBroker, self).enqueue(message, delay=delay))
        return super().enqueue(message, delay=delay)

    def hold(self, queue_name: str, entry_ids: list[str]) -> None:
        with self._held_lock:
            self._held[queue_name].update(entry_ids)

    def release(self, queue_name: str, entry_ids: list[str]) -> None:
        with self._held_lock:
            self._held[queue_name].difference_update(entry_ids)

    def suspect(self, queue_name: str) -> None:
        """Entries of ``queue_name`` may be stranded in this worker's acknowledgement set: recover them."""
        with self._held_lock:
            self._suspect.add(queue_name)

    def recover(self, queue_name: str) -> None:
        """Put back on the queue the entries this worker took but no longer holds (after a suspect failure)."""
        with self._held_lock:
            if queue_name not in self._suspect:
                return
            held = list(self._held[queue_name])
        recovered = self.recover_script(keys=[self.namespace], args=[queue_name, self.broker_id, *held])
        with self._held_lock:
            self._suspect.discard(queue_name)
        if recovered:
            _log.warning("queue %s: %d entries taken before a connection failure put back", queue_name, recovered)

    @property
    def consumer_class(self) -> type[_QueueConsumer]:
        return _QueueConsumer

    def maintain(self, queue_name: str) -> None:
        """dramatiq's queue maintenance (requeue the entries of dead workers, expire its dead letters),
        which its dispatch script runs on a fraction of fetches."""
        args = [
            "qsize",
            current_millis(),
            queue_name,
            self.broker_id,
            self.heartbeat_timeout,
            self.dead_message_ttl,
            1,
            self._max_unpack_size(),
        ]
        self.scripts["dispatch"](args=args, keys=[self.namespace])


class _QueueConsumer(_RedisConsumer):
    broker: QueueBroker

    def __init__(self, broker: QueueBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self.entries: list[tuple[bytes, bytes | None]] = []
        self.fetch_failures = 0

    @property
    def outstanding_message_count(self) -> int:
        return len(self.queued_message_ids) + len(self.entries)

    def __next__(self) -> MessageProxy | None:
        while True:
            while self.entries:
                entry_id, data = self.entries.pop(0)
                message = self._message_of(entry_id.decode(), data)
                if message is not None:
                    self.misses = 0
                    self.queued_message_ids.add(message.message_id)
                    return MessageProxy(message)
            if self.outstanding_message_count < self.prefetch:
                try:
                    self.entries = self._fetch(self.prefetch - self.outstanding_message_count)
                except REDIS_ERRORS as exc:
                    # Waited out here, quietly, rather than by dramatiq's restart of the consumer,
                    # which logs twice every three seconds per queue. The fetch may have run with
                    # its reply lost (or run twice, retried by redis-py): recover what it took.
                    self.broker.suspect(self.queue_name)
                    self.broker.outage.failed(exc)
                    self.broker.outage.pause(self.fetch_failures)
                    self.fetch_failures += 1
                    return None
                self.broker.outage.recovered()
                self.fetch_failures = 0
                if self.entries:
                    continue
            # Nothing to hand out: poll less often the longer the queue stays empty, as dramatiq does.
            self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
            time.sleep(backoff_ms / 1000)
            return None

    def _fetch(self, count: int) -> list[tuple[bytes, bytes | None]]:
        broker = self.broker
        if random.randint(1, MAINTENANCE_SCALE) <= broker.maintenance_chance:
            broker.maintain(self.queue_name)
        broker.recover(self.queue_name)
        count = min(count, broker._max_unpack_size())
        reply = broker.fetch_script(
            keys=[broker.namespace], args=[self.queue_name, broker.broker_id, current_millis(), count]
        )
        if not reply:
            return []
        ids, datas = reply
        broker.hold(self.queue_name, [entry_id.decode() for entry_id in ids])
        return list(zip(ids, datas, strict=True))

    def _message_of(self, entry_id: str, data: bytes | None) -> Message[Any] | None:
        """The message to run for one entry: its own, or one that dead-letters it with the reason."""
        if data is None:  # acknowledged meanwhile by another worker's requeue; nothing left to run
            self._settle("ack", entry_id)
            return None
        try:
            fields = read_entry(data)
        except ValueError as exc:
            return self._dead_letter_message(entry_id, data, "undecodable_message", str(exc))
        if fields["actor_name"] not in self.broker.actors:
            detail = f"no actor {fields['actor_name']!r} in this worker (deployed before the worker that has it?)"
            return self._dead_letter_message(entry_id, data, "unknown_actor", detail)
        fields["args"] = tuple(fields["args"])
        # Acknowledged by the id it was fetched with, whatever a hand-written entry says its id is.
        fields["options"]["redis_message_id"] = entry_id
        fields["queue_name"] = self.queue_name
        return Message(**fields)

    def _dead_letter_message(self, entry_id: str, data: bytes, reason: str, detail: str) -> Message[Any]:
        _log.warning("queue %s: entry %s goes to the dead letters: %s: %s", self.queue_name, entry_id, reason, detail)
        return Message(
            queue_name=self.queue_name,
            actor_name=DEAD_LETTER_ENTRY_ACTOR,
            args=(base64.b64encode(data).decode("ascii"), reason, detail),
            kwargs={},
            options={"redis_message_id": entry_id},
            message_id=entry_id,
            message_timestamp=current_millis(),
        )

    def ack(self, message: MessageProxy) -> None:
        self._finish("ack", message)

    def nack(self, message: MessageProxy) -> None:
        self._finish("nack", message)

    def _finish(self, command: str, message: MessageProxy) -> None:
        try:
            if is_left_unacknowledged(message):
                _log.warning("message %s left unacknowledged: another worker takes it over", message.message_id)
            else:
                self._settle(command, message.options["redis_message_id"])
        finally:
            self.queued_message_ids.discard(message.message_id)

    def _settle(self, command: str, entry_id: str) -> None:
        """Ack or nack, waiting for Redis: acknowledged too early, a message would be lost."""
        operation = getattr(self.broker, f"do_{command}")
        try:
            self.broker.outage.call(lambda: operation(self.queue_name, entry_id))
        except RedisUnavailable:
            _log.warning("entry %s on %s left unacknowledged: Redis is away and the worker stops", entry_id, command)
        finally:
            self.broker.release(self.queue_name, [entry_id])

    def requeue(self, messages: Any) -> None:
        messages = list(messages)
        self.broker.release(self.queue_name, [m.options["redis_message_id"] for m in messages])
        try:
            super().requeue(messages)
        except REDIS_ERRORS as exc:
            self.broker.suspect(self.queue_name)  # the next fetch puts them back
            raise ConnectionClosed(exc) from None
