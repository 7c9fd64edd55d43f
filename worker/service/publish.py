"""The producers' API: validate an event here, then put it on the queue the worker consumes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from ..domain.events import parse_event_json
from .runtime import Runtime, get_runtime

__all__ = ["publish", "publish_many", "send_batches"]


def _validated(event: Mapping[str, Any] | str | bytes | BaseModel) -> tuple[str, str]:
    """The event's id and the JSON text to enqueue; raises InvalidEvent naming each bad field."""
    raw = event.model_dump_json() if isinstance(event, BaseModel) else event
    parsed, text = parse_event_json(raw)
    return parsed.event_id, text


def publish(event: Mapping[str, Any] | str | bytes | BaseModel, *, runtime: Runtime | None = None) -> str:
    """Validate and enqueue one event; returns its event id. Raises InvalidEvent naming each bad field."""
    event_id, text = _validated(event)
    rt = runtime or get_runtime()
    rt.actors.ingest.send(text)
    return event_id


def publish_many(
    events: Iterable[Mapping[str, Any] | str | bytes | BaseModel], *, runtime: Runtime | None = None
) -> list[str]:
    """Validate every event first, then enqueue them all: nothing is sent when any is invalid.

    They go in batches of INGEST_BATCH_SIZE events per message, in the order given.
    """
    checked = [_validated(e) for e in events]
    rt = runtime or get_runtime()
    send_batches(rt, [text for _, text in checked])
    return [event_id for event_id, _ in checked]


def send_batches(rt: Runtime, texts: Sequence[str]) -> int:
    """Enqueue already validated events, INGEST_BATCH_SIZE per message; returns the messages sent.

    The worker's cost is mostly per message (about 1 ms of dramatiq and Redis round trips), so
    one message per event caps ingest far below what validating and storing would allow.
    """
    size = rt.settings.ingest_batch_size
    sent = 0
    for start in range(0, len(texts), size):
        rt.actors.ingest_batch.send(list(texts[start : start + size]))
        sent += 1
    return sent
