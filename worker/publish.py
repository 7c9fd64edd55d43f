"""The producers' API: validate an event here, then put it on the queue the worker consumes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from .events import parse_event
from .runtime import Runtime, get_runtime

__all__ = ["publish", "publish_many"]


def _raw(event: Mapping[str, Any] | str | bytes | BaseModel) -> str | bytes | dict[str, Any]:
    if isinstance(event, BaseModel):
        return event.model_dump_json()
    if isinstance(event, Mapping):
        return dict(event)
    return event


def publish(event: Mapping[str, Any] | str | bytes | BaseModel, *, runtime: Runtime | None = None) -> str:
    """Validate and enqueue one event; returns its event id. Raises InvalidEvent naming each bad field."""
    parsed = parse_event(_raw(event))
    rt = runtime or get_runtime()
    rt.actors.ingest.send(parsed.model_dump_json())
    return parsed.event_id


def publish_many(
    events: Iterable[Mapping[str, Any] | str | bytes | BaseModel], *, runtime: Runtime | None = None
) -> list[str]:
    """Validate every event first, then enqueue them all: nothing is sent when any is invalid."""
    parsed = [parse_event(_raw(e)) for e in events]
    rt = runtime or get_runtime()
    for event in parsed:
        rt.actors.ingest.send(event.model_dump_json())
    return [e.event_id for e in parsed]
