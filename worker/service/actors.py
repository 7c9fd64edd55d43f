"""The dramatiq actors: thin edges that hand each message to the store, the planner and the delivery."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from ..domain.durations import describe_age
from ..domain.errors import InvalidEvent, PermanentError, RedisUnavailable, RenewalsError
from ..domain.events import Event, parse_event
from ..state.schedule import DueItem
from .broker import DEAD_LETTER_ENTRY_ACTOR, entry_raw_text
from .context import Context
from .delivery import deliver_many
from .digests import deliver_digest_message
from .telemetry import record_deliveries

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
        limit = f"EVENT_MAX_FUTURE_S={max_future_s}"
        raise InvalidEvent(
            [("occurred_at", f"is {describe_age(ahead)} of the worker's clock: too far in the future ({limit})")]
        )


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
            if isinstance(exc, RenewalsError):
                # Expected (Redis away): one line, and dramatiq retries without logging a traceback.
                _log.warning("events message will be retried: %s", exc)
                raise dramatiq.Retry(str(exc)) from exc
            raise
        raws = events_of(args, kwargs) or [json.dumps([args, kwargs], default=repr)]
        error = [("", f"{type(exc).__name__}: {exc}")]
        letters = [(raw, "processing_failed", error) for raw in raws]
        rt.redis_outage.call(lambda: rt.store.add_dead_letters(letters, now=rt.clock.now()))
        _log.exception(
            "%d event(s) dead-lettered after %d retries: %s", len(raws), INGEST_MAX_RETRIES, _event_names(raws)
        )


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
        _log_dead_letter(raw, exc)
        return "dead_letter"
    # Applying also marks what must be re-planned; the scheduler loop re-plans it in batches.
    outcome = rt.store.apply(event, now=now)
    _log.debug("event %s (%s, partner %s): %s", event.event_id, event.type, event.partner_id, outcome)
    return outcome


def _event_name(raw: str) -> tuple[str, str]:
    """(event id, partner id) as far as the raw text of an event gives them, else "?"."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return "?", "?"
    return str(data.get("event_id", "?"))[:200], str(data.get("partner_id", "?"))[:200]


def _event_names(raws: list[str], shown: int = 5) -> str:
    names = [f"{event_id} of partner {partner_id}" for event_id, partner_id in map(_event_name, raws[:shown])]
    return ", ".join(names) + (f" and {len(raws) - shown} more" if len(raws) > shown else "")


def _log_dead_letter(raw: str, exc: InvalidEvent) -> None:
    """One WARNING naming the event id and partner as far as the raw text gives them."""
    event_id, partner_id = _event_name(raw)
    _log.warning("dead-lettered event %s of partner %s: %s", event_id, partner_id, exc, extra={"partner": partner_id})


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
            _log_dead_letter(raw, exc)
    # Applied first: should the dead letters fail to be written, the retry finds the good events
    # already seen, instead of dead-lettering the bad ones twice.
    applied = rt.store.apply_many([event for _, event in good], now=now)
    for (position, event), outcome in zip(good, applied, strict=True):
        outcomes[position] = outcome
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("event %s (%s, partner %s): %s", event.event_id, event.type, event.partner_id, outcome)
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
    planned_at: dict[tuple[str, str, str], datetime] = {}
    results = await deliver_many(
        rt, refs, last_try=retries >= rt.settings.delivery_max_retries, attempt=retries + 1, planned_at=planned_at
    )
    record_deliveries(rt, items, results, planned_at=planned_at)
    errors = [result for result in results if isinstance(result, Exception)]
    if errors:
        if all(isinstance(error, (RenewalsError, redis.RedisError)) for error in errors):
            # Deferred sends and a Redis outage are expected: logged above, one line each (the outage
            # once per process); dramatiq retries without a traceback.
            raise dramatiq.Retry(str(errors[0])) from errors[0]
        raise errors[0]


class Actors:
    """The actors declared on one broker (the embedded default and production each have their own)."""

    def __init__(self, broker: RedisBroker, context: Context) -> None:
        """Declare the actors on ``broker``; each runs with ``context`` (the process's runtime)."""
        self.broker = broker
        settings = self._settings = context.settings
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

        self.ingest = self._ingest_actor("ingest_event", ingest_event_actor)
        self.ingest_batch = self._ingest_actor("ingest_batch", ingest_batch_actor)
        # Its messages are made by the broker's consumers, on whichever queue the entry was found.
        self.dead_letter_entry = dramatiq.actor(
            broker=broker,
            actor_name=DEAD_LETTER_ENTRY_ACTOR,
            queue_name=EVENTS_QUEUE,
            max_retries=INGEST_MAX_RETRIES,
            throws=(RedisUnavailable,),
            time_limit=_WAITS_OUT_OUTAGES_MS,
        )(dead_letter_entry_actor)
        self.deliver = self._delivery_actor("deliver_reminder", deliver_reminder_actor)
        self.deliver_batch = self._delivery_actor("deliver_batch", deliver_batch_actor)
        self.deliver_digest = self._delivery_actor("deliver_digest", deliver_digest_actor)
        self.delivery_batch_size = settings.delivery_batch_size

    def _ingest_actor(self, name: str, fn: Callable[..., None]) -> dramatiq.Actor[Any, Any]:
        """An ingest: on the events queue, waiting out Redis outages with its message unacknowledged."""
        return dramatiq.actor(
            broker=self.broker,
            actor_name=name,
            queue_name=EVENTS_QUEUE,
            max_retries=INGEST_MAX_RETRIES,
            min_backoff=500,
            max_backoff=300_000,
            throws=_INGEST_THROWS,
            time_limit=_WAITS_OUT_OUTAGES_MS,
        )(fn)

    def _delivery_actor(self, name: str, fn: Callable[..., Awaitable[None]]) -> dramatiq.Actor[Any, Any]:
        """A send: on the deliveries queue, retried with the DELIVERY_* backoff, a permanent error never."""
        settings = self._settings
        return dramatiq.actor(
            broker=self.broker,
            actor_name=name,
            queue_name=DELIVERIES_QUEUE,
            max_retries=settings.delivery_max_retries,
            min_backoff=settings.delivery_min_backoff_ms,
            max_backoff=settings.delivery_max_backoff_ms,
            throws=(PermanentError,),
        )(fn)

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
