"""The version of the Redis layout: checked when a process starts, and upgraded in place by `renewals migrate`.

Layout 1 (no version key) kept the ids of superseded or refused events themselves, one set per
time slice. Layout 2 keeps a digest of every applied, superseded or refused id in bucketed
intsets (see store.py), knows renewals that wait for their partner, and records the rules in force.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

import redis

from ..domain.errors import StoreLayoutError
from .keys import Keys
from .replan_run import ReplanRun
from .store import SEEN_BUCKETS, event_id_digest

__all__ = ["LAYOUT_VERSION", "MigrationReport", "check_layout", "migrate", "stored_layout"]

LAYOUT_VERSION = 2


def _has_data(client: redis.Redis, keys: Keys) -> bool:
    """Whether anything was ever written under the prefix (the keys every store soon has)."""
    core = [
        keys.partners(),
        keys.due(),
        keys.dirty(),
        keys.event_stats(),
        keys.dead_letters(),
        keys.rules_fingerprint(),
    ]
    return bool(client.exists(*core))


def stored_layout(client: redis.Redis, keys: Keys) -> int | None:
    """The layout of the store: its version key, 1 when data was written before there was one, None when empty."""
    raw = client.get(keys.layout())
    if raw is not None:
        try:
            return int(raw)
        except ValueError:
            raise StoreLayoutError(f"{keys.layout()} holds {raw[:20]!r}, not a layout version") from None
    return 1 if _has_data(client, keys) else None


def check_layout(client: redis.Redis, keys: Keys) -> None:
    """Stop a process that would misread the store; an empty store is stamped with this layout."""
    version = stored_layout(client, keys)
    if version is None:
        client.set(keys.layout(), LAYOUT_VERSION, nx=True)
        version = int(client.get(keys.layout()) or LAYOUT_VERSION)
    if version < LAYOUT_VERSION:
        raise StoreLayoutError(
            f"the Redis store (KEY_PREFIX={keys.prefix}) has layout {version}, this worker needs {LAYOUT_VERSION}:"
            " stop the workers and schedulers of the older version, then run `renewals migrate`"
        )
    if version > LAYOUT_VERSION:
        raise StoreLayoutError(
            f"the Redis store (KEY_PREFIX={keys.prefix}) has layout {version}, written by a newer version of"
            f" the worker (this one reads layout {LAYOUT_VERSION}): run that version, or upgrade this one"
        )


@dataclass
class MigrationReport:
    from_version: int | None
    to_version: int
    steps: list[str] = field(default_factory=list)


def migrate(client: redis.Redis, keys: Keys) -> MigrationReport:
    """Upgrade the store in place to this layout, step by step; running it again is harmless."""
    version = stored_layout(client, keys)
    report = MigrationReport(version, LAYOUT_VERSION)
    if version is None:
        client.set(keys.layout(), LAYOUT_VERSION, nx=True)
        report.steps.append(f"empty store: stamped with layout {LAYOUT_VERSION}")
        return report
    if version > LAYOUT_VERSION:
        check_layout(client, keys)  # raises, naming what to do
    if version == 1:
        report.steps += _from_1_to_2(client, keys)
        client.set(keys.layout(), 2)
    if not report.steps:
        report.steps.append(f"already at layout {LAYOUT_VERSION}: nothing to do")
    return report


_LAYOUT_1_SEEN = re.compile(r"seen:(\d+):(-?\d+)")


def _from_1_to_2(client: redis.Redis, keys: Keys) -> list[str]:
    """Remembered event ids into digests; then every renewal re-planned (partners never seen now wait)."""
    converted = slices = 0
    for key in client.scan_iter(match=f"{keys.prefix}:seen:*", count=1_000):
        name = key.decode()
        if not _LAYOUT_1_SEEN.fullmatch(name[len(keys.prefix) + 1 :]):
            continue  # a layout 2 bucket
        ttl_ms = client.pttl(key)
        by_bucket: dict[int, list[int]] = defaultdict(list)
        for member in client.sscan_iter(key, count=1_000):
            digest = event_id_digest(member.decode())
            by_bucket[digest % SEEN_BUCKETS].append(digest)
        with client.pipeline(transaction=True) as pipe:
            for bucket, digests in by_bucket.items():
                pipe.sadd(f"{name}:{bucket}", *digests)
                if ttl_ms > 0:
                    pipe.pexpire(f"{name}:{bucket}", ttl_ms)
            pipe.delete(key)
            pipe.execute()
        converted += sum(len(d) for d in by_bucket.values())
        slices += 1
    steps = [f"remembered event ids: {converted} in {slices} time slice(s) kept as digests"]
    fingerprint = client.get(keys.rules_fingerprint())
    if fingerprint is not None:
        partner_ids = sorted(m.decode() for m in client.smembers(keys.partners()))
        ReplanRun(client, keys).start(fingerprint.decode(), partner_ids)
        steps.append(
            f"re-plan of every renewal of {len(partner_ids)} partner(s) started: the schedulers do it in chunks"
            " (renewals whose partner was never seen now wait for it)"
        )
    return steps
