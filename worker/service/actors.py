"""The dramatiq actors: thin edges that hand each message to the store, the planner and the delivery."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from ..domain.errors import InvalidEvent, PermanentError, RedisUnavailable
from ..domain.events import Event, parse_event
from ..state.schedule import DueItem
from .broker import DEAD_LETTER_ENTRY_ACTOR, entry_raw_text
from .context import Context
from .delivery import deliver_many
from .digests import deliver_digest_message

__all__ = [
    "DELIVERIES_QUEUE",
    "EVENTS_QUEUE",
    "Actors",
    "dead_letter_entry",
    "deliver_batch",
    "deliver_reminder",
    "handle_batch_message",
    "handle_event_message",
    "ingest_batch",
    "ingest_event",
    "refuse_far_future",
    "screen_event",
]

EVENTS_QUEUE = "events"
DELIVERIES_QUEUE = "deliveries"
_log = logging.getLogger("worker.ingest")
_log_delivery = logging.getLogger("worker.delivery")


INGEST_MAX_RETRIES = 20
# The time limit of actors that wait for Redis: dramatiq's default (10 minutes) would interrupt the
# wait of a longer outage; an ingest message otherwise takes milliseconds.
_WAITS_OUT_OUTAGES_MS = 7 * 86_400_000
# Expected, so logged without a traceback: RedisUnavailable is a wait given up as the worker stops,
# whose message DurableRetries leaves unacknowledged for another worker.
_INGEST_THROWS = (PermanentError, RedisUnavailable)


def screen_event(raw: str, *, now: datetime, max_future_s: int) -> Event:
    """Validate one event as the worker must: the contract, and a date no further ahead than allowed.

    A producer with a wrong clock would, once applied, make every real event look stale.
    """
    event = parse_event(raw)
    refuse_far_future(event, now=now, max_future_s=max_future_s)
    return event


def refuse_far_future(event: Event, *, now: datetime, max_future_s: int) -> None:
    """Raise InvalidEvent when ``occurred_at`` is further ahead of ``now`` than ``max_future_s``."""
    ahead = event.occurred_at - now
    if ahead.total_seconds() > max_future_s:
        raise InvalidEvent([("occurred_at", f"is {ahead} in the future (EVENT_MAX_FUTURE_S={max_future_s})")])


def _retries_left() -> bool:
    message = CurrentMessage.get_current_message()
    retries = message.options.get("retries", 0) if message is not None else INGEST_MAX_RETRIES
    return bool(retries < INGEST_MAX_RETRIES)


def ingest_event(rt: Context, *args: Any, **kwargs: Any) -> None:
    """The actor body: takes any message shape, so even a malformed one is dead-lettered, not retried."""
    _ingest(rt, handle_event_message, _single_item, args, kwargs)


def _ingest(
    rt: Context,
    handle: Callable[[Context, tuple[Any, ...], dict[str, Any]], object],
    events_of: Callable[[tuple[Any, ...], dict[str, Any]], list[str] | None],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """Run an ingest message's handler; when it fails for the last time, keep its events as dead letters.

    Redis away, or a bug: the message is retried with backoff (safe: events already applied come
    back as duplicates and change nothing). After the last try each event is kept, one by one, with
    the error in the dead letters, where ops look, rather than only in dramatiq's own queue.
    """
    try:
        # Redis away: wait for it here, the message unacknowledged, rather than retry it through
        # Redis. Only a worker that stops meanwhile gives up (RedisUnavailable): the message then
        # stays unacknowledged in Redis, for another worker.
        rt.redis_outage.call(lambda: handle(rt, args, kwargs))
    except RedisUnavailable:
        raise
    except Exception as exc:
        if _retries_left():
            raise
        raws = events_of(args, kwargs) or [json.dumps([args, kwargs], default=repr)]
        error = [("", f"{type(exc).__name__}: {exc}")]
        letters = [(raw, "processing_failed", error) for raw in raws]
        rt.redis_outage.call(lambda: rt.store.add_dead_letters(letters, now=rt.clock.now()))
        _log.exception("%d event(s) dead-lettered after %d retries", len(raws), INGEST_MAX_RETRIES)


def _single_item(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str] | None:
    """The event of a single-event message as its JSON text, or None when the message is not one text."""
    return [args[0]] if len(args) == 1 and isinstance(args[0], str) else None


def handle_event_message(rt: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Validate and apply one event; a bad one is dead-lettered with its reason."""
    if len(args) != 1 or kwargs or not isinstance(args[0], (str, dict)):
        raw = json.dumps({"args": args, "kwargs": kwargs}, default=repr)
        rt.store.add_dead_letter(raw, "malformed_message", [("", "expected one JSON event")], now=rt.clock.now())
        _log.warning("dead-lettered a malformed message")
        return "dead_letter"
    raw = args[0] if isinstance(args[0], str) else json.dumps(args[0])
    now = rt.clock.now()
    try:
        event = screen_event(raw, now=now, max_future_s=rt.settings.event_max_future_s)
    except InvalidEvent as exc:
        rt.store.add_dead_letter(raw, "invalid_event", exc.errors, now=now)
        _log.warning("dead-lettered an invalid event: %s", exc)
        return "dead_letter"
    # Applying also marks what must be re-planned; the scheduler loop re-plans it in batches.
    outcome = rt.store.apply(event, now=now)
    _log.debug("event %s (%s): %s", event.event_id, event.type, outcome)
    return outcome


def _batch_items(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str] | None:
    """The events of a batch message as JSON texts, or None when the message is not one list."""
    if len(args) != 1 or kwargs or not isinstance(args[0], list):
        return None
    return [item if isinstance(item, str) else json.dumps(item) for item in args[0]]


def ingest_batch(rt: Context, *args: Any, **kwargs: Any) -> None:
    """The batch actor body: like ``ingest_event`` for each event of a list, at one message's cost."""
    _ingest(rt, handle_batch_message, _batch_items, args, kwargs)


def handle_batch_message(rt: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    """Validate each event of a batch on its own, apply the good ones in one round trip, dead-letter the rest.

    Returns one outcome per event, in order: what ``handle_event_message`` would have returned.
    """
    raws = _batch_items(args, kwargs)
    now = rt.clock.now()
    if raws is None:
        raw = json.dumps({"args": args, "kwargs": kwargs}, default=repr)
        rt.store.add_dead_letter(raw, "malformed_message", [("", "expected one list of JSON events")], now=now)
        _log.warning("dead-lettered a malformed batch message")
        return ["dead_letter"]
    good: list[tuple[int, Event]] = []
    rejected: list[tuple[str, str, list[tuple[str, str]]]] = []
    outcomes = ["dead_letter"] * len(raws)
    for position, raw in enumerate(raws):
        try:
            good.append((position, screen_event(raw, now=now, max_future_s=rt.settings.event_max_future_s)))
        except InvalidEvent as exc:
            rejected.append((raw, "invalid_event", exc.errors))
            _log.warning("dead-lettered an invalid event: %s", exc)
    # Applied first: should the dead letters fail to be written, the retry finds the good events
    # already seen, instead of dead-lettering the bad ones twice.
    applied = rt.store.apply_many([event for _, event in good], now=now)
    for (position, _), outcome in zip(good, applied, strict=True):
        outcomes[position] = outcome
    rt.store.add_dead_letters(rejected, now=now)
    _log.debug("batch of %d event(s): %d valid, %d dead-lettered", len(raws), len(good), len(rejected))
    return outcomes


def dead_letter_entry(rt: Context, raw_b64: str, reason: str, detail: str) -> None:
    """Keep a queue entry that no actor can run (undecodable, or for an unknown actor) in the dead
    letters with its bytes and the reason; the broker acknowledges it once this returns."""
    raw = entry_raw_text(base64.b64decode(raw_b64))
    rt.redis_outage.call(lambda: rt.store.add_dead_letter(raw, reason, [("", detail)], now=rt.clock.now()))


async def deliver_reminder(rt: Context, partner_id: str, renewal_id: str, reminder_id: str, due_ms: int) -> None:
    """Send one due reminder; the message is only a pointer, everything else is read now."""
    await deliver_batch(rt, [[partner_id, renewal_id, reminder_id, due_ms]])


async def deliver_batch(rt: Context, items: list[list[Any]]) -> None:
    """Send due reminders, each ``[partner_id, renewal_id, reminder_id, due_ms]``, at most once each.

    A reminder that a retry may fix makes the whole message retry; the others are final by then,
    and the retry finds them so in the ledger and leaves them alone.
    """
    message = CurrentMessage.get_current_message()
    retries = message.options.get("retries", 0) if message is not None else 0
    refs = [(str(pid), str(rid), str(rem)) for pid, rid, rem, _ in items]
    results = await deliver_many(rt, refs, last_try=retries >= rt.settings.delivery_max_retries, attempt=retries + 1)
    errors = []
    for (partner_id, renewal_id, reminder_id), item, result in zip(refs, items, results, strict=True):
        due = _due_text(item[3])
        if isinstance(result, Exception):
            errors.append(result)
            _log_delivery.warning(
                "reminder %s/%s/%s (due %s): will retry: %s", partner_id, renewal_id, reminder_id, due, result
            )
        else:
            _log_delivery.info("reminder %s/%s/%s (due %s): %s", partner_id, renewal_id, reminder_id, due, result)
    if errors:
        raise errors[0]


def _due_text(due_ms: object) -> str:
    """The due time of a delivery message (epoch milliseconds) as UTC, for the log."""
    try:
        return datetime.fromtimestamp(int(due_ms) / 1000, tz=UTC).isoformat(timespec="seconds")  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError, OSError):
        return repr(due_ms)


class Actors:
    """The actors declared on one broker (the embedded default and production each have their own)."""

    def __init__(self, broker: RedisBroker, context: Context) -> None:
        """Declare the actors on ``broker``; each runs with ``context`` (the process's runtime)."""
        self.broker = broker
        settings = context.settings
        rt = context

        def ingest_event_actor(*args: Any, **kwargs: Any) -> None:
            ingest_event(rt, *args, **kwargs)

        def ingest_batch_actor(*args: Any, **kwargs: Any) -> None:
            ingest_batch(rt, *args, **kwargs)

        def dead_letter_entry_actor(raw_b64: str, reason: str, detail: str) -> None:
            dead_letter_entry(rt, raw_b64, reason, detail)

        async def deliver_reminder_actor(partner_id: str, renewal_id: str, reminder_id: str, due_ms: int) -> None:
            await deliver_reminder(rt, partner_id, renewal_id, reminder_id, due_ms)

        async def deliver_batch_actor(items: list[list[Any]]) -> None:
            await deliver_batch(rt, items)

        async def deliver_digest_actor(partner_id: str, period_id: str) -> None:
            await deliver_digest_message(rt, partner_id, period_id)

        self.ingest = dramatiq.actor(
            broker=broker,
            actor_name="ingest_event",
            queue_name=EVENTS_QUEUE,
            max_retries=INGEST_MAX_RETRIES,
            min_backoff=500,
            max_backoff=300_000,
            throws=_INGEST_THROWS,
            time_limit=_WAITS_OUT_OUTAGES_MS,
        )(ingest_event_actor)
        self.ingest_batch = dramatiq.actor(
            broker=broker,
            actor_name="ingest_batch",
            queue_name=EVENTS_QUEUE,
            max_retries=INGEST_MAX_RETRIES,
            min_backoff=500,
            max_backoff=300_000,
            throws=_INGEST_THROWS,
            time_limit=_WAITS_OUT_OUTAGES_MS,
        )(ingest_batch_actor)
        # Its messages are made by the broker's consumers, on whichever queue the entry was found.
        self.dead_letter_entry = dramatiq.actor(
            broker=broker,
            actor_name=DEAD_LETTER_ENTRY_ACTOR,
            queue_name=EVENTS_QUEUE,
            max_retries=INGEST_MAX_RETRIES,
            throws=(RedisUnavailable,),
            time_limit=_WAITS_OUT_OUTAGES_MS,
        )(dead_letter_entry_actor)
        self.deliver = dramatiq.actor(
            broker=broker,
            actor_name="deliver_reminder",
            queue_name=DELIVERIES_QUEUE,
            max_retries=settings.delivery_max_retries,
            min_backoff=settings.delivery_min_backoff_ms,
            max_backoff=settings.delivery_max_backoff_ms,
            throws=(PermanentError,),
        )(deliver_reminder_actor)
        self.deliver_batch = dramatiq.actor(
            broker=broker,
            actor_name="deliver_batch",
            queue_name=DELIVERIES_QUEUE,
            max_retries=settings.delivery_max_retries,
            min_backoff=settings.delivery_min_backoff_ms,
            max_backoff=settings.delivery_max_backoff_ms,
            throws=(PermanentError,),
        )(deliver_batch_actor)
        self.deliver_digest = dramatiq.actor(
            broker=broker,
            actor_name="deliver_digest",
            queue_name=DELIVERIES_QUEUE,
            max_retries=settings.delivery_max_retries,
            min_backoff=settings.delivery_min_backoff_ms,
            max_backoff=settings.delivery_max_backoff_ms,
            throws=(PermanentError,),
        )(deliver_digest_actor)
        self.delivery_batch_size = settings.delivery_batch_size

    def enqueue_deliveries(self, items: list[DueItem]) -> None:
        """One message per ``DELIVERY_BATCH_SIZE`` due reminders: dramatiq's cost per message and the
        Redis round trips of a delivery are shared by the batch."""
        size = self.delivery_batch_size
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            self.deliver_batch.send([[i.partner_id, i.renewal_id, i.reminder_id, i.due_ms] for i in chunk])

    def enqueue_digest(self, partner_id: str, period_id: str) -> None:
        """One message per partner and period: the worker works out each user's digest when it runs."""
        self.deliver_digest.send(partner_id, period_id)
