"""The suppression list: addresses no reminder goes to, with when, why and by what each was added.

The set ``Keys.suppressed`` is what a send checks (SMISMEMBER in the claim's round trip); the hash
``Keys.suppression_info`` beside it says why, for ops. An address refused with 5xx is added by the
delivery; ops add and remove addresses with `renewals suppressions`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import redis

from .keys import Keys

__all__ = ["Suppression", "Suppressions"]


@dataclass(frozen=True)
class Suppression:
    """Why one address is suppressed: ``reason`` in words, ``reply`` the server's refusal when there was one,
    ``source`` the reminder (partner/renewal/reminder) whose send was refused, ``by`` the operator."""

    address: str
    at: datetime | None
    reason: str
    reply: str = ""
    source: str = ""
    by: str = ""

    def to_json(self) -> str:
        data = {"at": self.at.isoformat() if self.at else None, "reason": self.reason}
        data.update({k: v for k, v in (("reply", self.reply), ("source", self.source), ("by", self.by)) if v})
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, address: str, raw: bytes | str | None) -> Suppression:
        if raw is None:  # suppressed before the reasons were kept
            return cls(address, None, "(no record of why)")
        data = json.loads(raw)
        at = datetime.fromisoformat(data["at"]) if data.get("at") else None
        return cls(
            address, at, data.get("reason", ""), data.get("reply", ""), data.get("source", ""), data.get("by", "")
        )


class Suppressions:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    def queue_add(self, pipe: redis.client.Pipeline, entries: Sequence[Suppression]) -> int:
        """Add to a pipeline the caller runs anyway (the first reason given for an address is kept);
        returns how many replies that adds."""
        if not entries:
            return 0
        pipe.sadd(self.keys.suppressed(), *[e.address.casefold() for e in entries])
        for entry in entries:
            pipe.hsetnx(self.keys.suppression_info(), entry.address.casefold(), entry.to_json())
        return 1 + len(entries)

    def add(self, entry: Suppression) -> bool:
        """Suppress an address; False when it already was (its first reason stays)."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.sismember(self.keys.suppressed(), entry.address.casefold())
            self.queue_add(pipe, [entry])
            already = pipe.execute()[0]
        return not already

    def remove(self, address: str) -> Suppression | None:
        """Lift a suppression: later reminders reach the address again. Returns what it was, or None."""
        address = address.casefold()
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(self.keys.suppression_info(), address)
            pipe.srem(self.keys.suppressed(), address)
            pipe.hdel(self.keys.suppression_info(), address)
            info, removed, _ = pipe.execute()
        return Suppression.from_json(address, info) if removed else None

    def get_many(self, addresses: Sequence[str]) -> dict[str, Suppression]:
        """The suppressions among ``addresses`` (casefolded keys); the others are left out."""
        folded = list(dict.fromkeys(a.casefold() for a in addresses))
        if not folded:
            return {}
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.smismember(self.keys.suppressed(), folded)
            pipe.hmget(self.keys.suppression_info(), folded)
            flags, infos = pipe.execute()
        return {a: Suppression.from_json(a, info) for a, flag, info in zip(folded, flags, infos, strict=True) if flag}

    def all(self) -> list[Suppression]:
        """Every suppressed address, the most recent first (those without a record last)."""
        members = sorted(m.decode() for m in cast(set[bytes], self.redis.smembers(self.keys.suppressed())))
        found = self.get_many(members)
        return sorted(found.values(), key=lambda s: (s.at is not None, s.at.timestamp() if s.at else 0), reverse=True)
