"""The rules in force as the scheduler recorded them in Redis, with the rules before the last edit.

Every process plans with its own copy of the rule file; what an edit changed (a reminder added or
moved) is judged against the previous rules kept here, so all of them judge it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import redis

from ..domain.planner import RuleChange
from ..domain.rules import RuleSet, rules_from_json
from .keys import Keys
from .schedule import epoch_ms, from_epoch_ms
from .scripts import LuaScript

__all__ = ["RulesInForce", "RulesRecord", "parse_rules_in_force"]


@dataclass(frozen=True)
class RulesInForce:
    """The rules the scheduler put in force ``since``, and the ones they replaced (None at first)."""

    fingerprint: str
    since: datetime
    current: RuleSet
    previous: RuleSet | None

    def change_for(self, rules: RuleSet, now: datetime) -> RuleChange | None:
        """What the planner must know of the last edit, for a process planning with ``rules``."""
        if rules.fingerprint == self.fingerprint:
            return None if self.previous is None else RuleChange(self.previous, self.since)
        if self.previous is not None and rules.fingerprint == self.previous.fingerprint:
            # This process has yet to load the edit (within RULES_RELOAD_S): it plans as it did
            # before the edit, rather than skip for good what the edit may have moved later.
            return None
        # This process already reads an edit the scheduler has not recorded yet: whatever differs
        # from the recorded rules is treated as changed now, so nothing it put in the past goes.
        return RuleChange(self.current, now)


@lru_cache(maxsize=8)
def _parse(fingerprint: bytes, since_ms: bytes, current: bytes, previous: bytes) -> RulesInForce:
    return RulesInForce(
        fingerprint.decode(),
        from_epoch_ms(int(since_ms)),
        rules_from_json(current),
        rules_from_json(previous) if previous else None,
    )


def parse_rules_in_force(raw: dict[bytes, bytes]) -> RulesInForce | None:
    """The record as HGETALL returns it (None when no scheduler recorded the rules yet)."""
    if not raw:
        return None
    return _parse(raw[b"fingerprint"], raw[b"since_ms"], raw[b"current"], raw.get(b"previous", b""))


# Of several schedulers seeing the same edit, one records it: the others find its fingerprint.
_RECORD = """
if redis.call('HGET', KEYS[1], 'fingerprint') == ARGV[1] then return 0 end
local current = redis.call('HGET', KEYS[1], 'current') or ''
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'since_ms', ARGV[2], 'current', ARGV[3], 'previous', current)
return 1
"""


class RulesRecord:
    """Writes and reads the record of the rules in force (``Keys.rules_change``)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._record = LuaScript(client, _RECORD)

    def record(self, rules: RuleSet, now: datetime) -> bool:
        """Record ``rules`` as in force from ``now``, keeping the ones they replace; False if already so."""
        args = [rules.fingerprint, epoch_ms(now), rules.to_json()]
        return bool(self._record(keys=[self.keys.rules_change()], args=args))

    def read(self) -> RulesInForce | None:
        return parse_rules_in_force(self.redis.hgetall(self.keys.rules_change()))
