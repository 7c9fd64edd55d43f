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
import time
from typing import Any

import redis
from dramatiq import Message, get_encoder
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff, current_millis
from dramatiq.errors import ConnectionClosed

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


class _QueueConsumer(_RedisConsumer):  # type: ignore[misc]
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
                    # which logs twice every three seconds per queue.
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
        count = min(count, broker._max_unpack_size())
        reply = broker.fetch_script(
            keys=[broker.namespace], args=[self.queue_name, broker.broker_id, current_millis(), count]
        )
        if not reply:
            return []
        ids, datas = reply
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

    def requeue(self, messages: Any) -> None:
        try:
            super().requeue(messages)
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None
