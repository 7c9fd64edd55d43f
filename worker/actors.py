"""The dramatiq actors: thin edges that hand each message to the store and the planner."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from .errors import InvalidEvent, PermanentError
from .events import parse_event

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["EVENTS_QUEUE", "Actors", "handle_event_message", "ingest_event"]

EVENTS_QUEUE = "events"
_log = logging.getLogger("worker.ingest")


def ingest_event(*args: Any, **kwargs: Any) -> None:
    """The actor body: takes any message shape, so even a malformed one is dead-lettered, not retried."""
    from .runtime import get_runtime

    handle_event_message(get_runtime(), args, kwargs)


def handle_event_message(rt: Runtime, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Validate and apply one event; a bad one is dead-lettered with its reason. Returns the outcome."""
    if len(args) != 1 or kwargs or not isinstance(args[0], (str, dict)):
        raw = json.dumps({"args": args, "kwargs": kwargs}, default=repr)
        rt.store.add_dead_letter(raw, "malformed_message", [("", "expected one JSON event")], now=rt.clock.now())
        _log.warning("dead-lettered a malformed message")
        return "dead_letter"
    raw = args[0] if isinstance(args[0], str) else json.dumps(args[0])
    try:
        event = parse_event(raw)
    except InvalidEvent as exc:
        rt.store.add_dead_letter(raw, "invalid_event", exc.errors, now=rt.clock.now())
        _log.warning("dead-lettered an invalid event: %s", exc)
        return "dead_letter"
    outcome = rt.store.apply(event)
    _log.info("event %s (%s): %s", event.event_id, event.type, outcome)
    replan = rt.extras.get("replan")
    if replan is not None and outcome in ("applied", "duplicate", "already_ended"):
        # A duplicate still re-plans: it may be the redelivery of an event whose re-plan failed.
        replan(rt, event)
    return outcome


class Actors:
    """The actors declared on one broker (the embedded default and production each have their own)."""

    def __init__(self, broker: RedisBroker) -> None:
        self.ingest = dramatiq.actor(
            ingest_event,
            broker=broker,
            actor_name="ingest_event",
            queue_name=EVENTS_QUEUE,
            max_retries=20,
            min_backoff=500,
            max_backoff=300_000,
            throws=(PermanentError,),
        )
