"""The rules the scheduler plans with, kept in Redis (text and fingerprint) so every CLI view uses them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

import redis

from .keys import Keys

__all__ = ["StoredRules", "publish_rules", "read_rules_in_force"]


@dataclass(frozen=True)
class StoredRules:
    text: str
    fingerprint: str
    source: str
    loaded_at: datetime


def publish_rules(client: redis.Redis, keys: Keys, rules: StoredRules) -> None:
    client.hset(
        keys.rules_in_force(),
        mapping={
            "text": rules.text,
            "fingerprint": rules.fingerprint,
            "source": rules.source,
            "loaded_at": rules.loaded_at.isoformat(),
        },
    )


def read_rules_in_force(client: redis.Redis, keys: Keys) -> StoredRules | None:
    stored = cast(dict[bytes, bytes], client.hgetall(keys.rules_in_force()))
    raw = {k.decode(): v.decode() for k, v in stored.items()}
    if "text" not in raw or "fingerprint" not in raw:
        return None
    return StoredRules(raw["text"], raw["fingerprint"], raw.get("source", ""), datetime.fromisoformat(raw["loaded_at"]))
