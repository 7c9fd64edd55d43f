"""A re-plan of every renewal after a rule edit, cut into chunks that schedulers claim between due claims.

A chunk is one of a partner's ``CLIENT_BUCKETS`` index hashes (the renewals of at most some 500
clients). Chunks are handed out by one counter in Redis, so several schedulers share a run and
none re-plans what another did; a chunk whose scheduler died is handed out again once its lease
runs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import redis

from .keys import CLIENT_BUCKETS, Keys
from .schedule import epoch_ms
from .scripts import LuaScript

__all__ = ["ReplanChunk", "ReplanProgress", "ReplanRun"]

# Starts a run: a snapshot of the partners, the counter at 0, no chunk in progress. Partners that
# arrive later are planned under the new rules by their own events.
_START = """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
if #ARGV > 1 then redis.call('RPUSH', KEYS[1], unpack(ARGV, 2)) end
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""

# The next chunk: first one whose lease ran out (its scheduler died), else the next never handed
# out; -1 when none is left (the last claim after the run ends it).
# -2 when the run is for other rules than the caller's (it has yet to load the edit, or another
# edit is on its way): it plans nothing with rules the run is not for.
#   KEYS: partners, run, in progress, counter. ARGV: now ms, lease ms, buckets per partner, fingerprint.
_CLAIM = """
local run = redis.call('GET', KEYS[2])
if not run then return {-1, ''} end
if run ~= ARGV[4] then return {-2, ''} end
local now = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1)
local index
if #expired > 0 then
  index = tonumber(expired[1])
else
  index = redis.call('HINCRBY', KEYS[4], 'next', 1) - 1
  if index >= redis.call('LLEN', KEYS[1]) * tonumber(ARGV[3]) then
    if redis.call('ZCARD', KEYS[3]) == 0 then redis.call('DEL', KEYS[1], KEYS[2], KEYS[4]) end
    return {-1, ''}
  end
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), index)
local partner = redis.call('LINDEX', KEYS[1], math.floor(index / tonumber(ARGV[3])))
return {index, partner}
"""


@dataclass(frozen=True)
class ReplanChunk:
    index: int
    partner_id: str
    bucket: int


@dataclass(frozen=True)
class ReplanProgress:
    """Chunks handed out and left of the run under way (None when no run is under way)."""

    rules_fingerprint: str | None
    handed_out: int
    total: int
    in_progress: int


class ReplanRun:
    """The re-plan under way, in Redis: which partners, which chunk is next, which are being planned."""

    def __init__(self, client: redis.Redis, keys: Keys, *, lease_ms: int = 300_000) -> None:
        self.redis = client
        self.keys = keys
        self.lease_ms = lease_ms
        self._start = LuaScript(client, _START)
        self._claim = LuaScript(client, _CLAIM)

    def _keys(self) -> list[str]:
        k = self.keys
        return [k.replan_partners(), k.replan_run(), k.replan_in_progress(), k.replan_counter()]

    def start(self, rules_fingerprint: str, partner_ids: list[str]) -> None:
        """Begin a run over ``partner_ids`` (a run under way for older rules is dropped)."""
        self._start(keys=self._keys(), args=[rules_fingerprint, *partner_ids])

    def claim(self, rules_fingerprint: str, now: datetime) -> ReplanChunk | None:
        """The next chunk to re-plan under the rules ``rules_fingerprint``, leased to this caller; None
        when no run for those rules has a chunk left."""
        args = [epoch_ms(now), self.lease_ms, CLIENT_BUCKETS, rules_fingerprint]
        index, partner = self._claim(keys=self._keys(), args=args)
        if int(index) < 0:
            return None
        partner_id = partner.decode() if isinstance(partner, bytes) else str(partner)
        return ReplanChunk(int(index), partner_id, int(index) % CLIENT_BUCKETS)

    def done(self, chunk: ReplanChunk) -> None:
        self.redis.zrem(self.keys.replan_in_progress(), chunk.index)

    def progress(self) -> ReplanProgress:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.replan_run())
            pipe.hget(self.keys.replan_counter(), "next")
            pipe.llen(self.keys.replan_partners())
            pipe.zcard(self.keys.replan_in_progress())
            run, handed_out, partners, in_progress = pipe.execute()
        total = int(partners) * CLIENT_BUCKETS
        return ReplanProgress(
            None if run is None else run.decode(), min(int(handed_out or 0), total), total, int(in_progress)
        )
