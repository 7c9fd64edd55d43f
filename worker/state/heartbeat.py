"""Heartbeats of the running schedulers and workers: one key with a TTL per process, found through one set."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from .keys import Keys

__all__ = ["Heartbeat", "Heartbeats"]


@dataclass(frozen=True)
class Heartbeat:
    """What a process said about itself at its last beat; ``info`` holds its role's details (last tick, URL)."""

    process_id: str
    role: str
    beat_at: datetime
    info: Mapping[str, Any]


class Heartbeats:
    """A process is alive while its key lives: it rewrites the key well within the TTL.

    The set of keys saves `renewals status` a SCAN over the whole database; a member whose key has
    expired is dropped when it is read, so a crashed process leaves nothing behind for long.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    def beat(self, process_id: str, role: str, *, now: datetime, ttl_s: float, info: Mapping[str, Any]) -> None:
        key = self.keys.heartbeat(process_id)
        body = json.dumps({"process_id": process_id, "role": role, "beat_at": now.isoformat(), **info}, default=str)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(key, body, px=max(1, int(ttl_s * 1000)))
            pipe.sadd(self.keys.heartbeats(), key)
            pipe.execute()

    def stop(self, process_id: str) -> None:
        """A process stopping cleanly says so at once, rather than when its TTL runs out."""
        key = self.keys.heartbeat(process_id)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(key)
            pipe.srem(self.keys.heartbeats(), key)
            pipe.execute()

    def alive(self) -> list[Heartbeat]:
        """Every process whose heartbeat has not expired, by role and id."""
        members = sorted(self.redis.smembers(self.keys.heartbeats()))
        if not members:
            return []
        bodies = self.redis.mget(members)
        gone = [member for member, body in zip(members, bodies, strict=True) if body is None]
        if gone:
            self.redis.srem(self.keys.heartbeats(), *gone)
        out = []
        for body in bodies:
            if body is None:
                continue
            data = json.loads(body)
            process_id, role = data.pop("process_id"), data.pop("role")
            beat_at = datetime.fromisoformat(data.pop("beat_at"))
            out.append(Heartbeat(process_id, role, beat_at, data))
        return sorted(out, key=lambda h: (h.role, h.process_id))
