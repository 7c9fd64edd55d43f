"""The send-once ledger: one final outcome per (renewal, reminder), and a lease while a send is under way."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import redis

from .history import History, HistoryEntry
from .keys import COUNTS_TTL_S, SEP, Keys
from .scripts import LuaScript, run_pipeline
from .store import dirty_member
from .suppressions import Suppression, Suppressions

__all__ = ["ClaimResult", "Ledger", "Outcome", "OutcomeKind", "ReminderRef", "due_member", "parse_due_member"]

OutcomeKind = Literal["sent", "skipped", "suppressed", "failed"]
ClaimResult = Literal["claimed", "final", "busy"]
ReminderRef = tuple[str, str, str]
"""(partner id, renewal id, reminder id): what a delivery message names."""


def due_member(partner_id: str, renewal_id: str, reminder_id: str) -> str:
    """The due-index member naming one reminder of one renewal."""
    return SEP.join((partner_id, renewal_id, reminder_id))


def parse_due_member(member: str | bytes) -> tuple[str, str, str]:
    text = member.decode() if isinstance(member, bytes) else member
    partner_id, renewal_id, reminder_id = text.split(SEP)
    return partner_id, renewal_id, reminder_id


@dataclass(frozen=True)
class Outcome:
    """What finally happened to one reminder; once written it never changes."""

    kind: OutcomeKind
    at: datetime
    reason: str | None = None
    message_id: str | None = None
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    reply: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data: dict[str, Any] = {"kind": self.kind, "at": self.at.isoformat()}
        for name in ("reason", "message_id", "reply"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.to:
            data["to"] = list(self.to)
        if self.cc:
            data["cc"] = list(self.cc)
        if self.extra:
            data["extra"] = self.extra
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Outcome:
        data = json.loads(raw)
        return cls(
            kind=data["kind"],
            at=datetime.fromisoformat(data["at"]),
            reason=data.get("reason"),
            message_id=data.get("message_id"),
            to=tuple(data.get("to", ())),
            cc=tuple(data.get("cc", ())),
            reply=data.get("reply"),
            extra=data.get("extra", {}),
        )


_CLAIM = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 'final' end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return 'claimed' end
return 'busy'
"""

# Writing the outcome, dropping the lease, un-planning the reminder, ending its in-flight claim and
# marking the renewal to be planned again (the due index holds only its next reminder; ARGV[5] is
# '' when nothing follows) is one step, so no other worker or re-plan can see the reminder neither
# final nor claimed, and the next reminder cannot be forgotten.
# Writes a final outcome unless one is there, ends its lease and claims, marks the renewal to be
# planned again, and counts the outcome in its hour (for `status`: "the last 24 hours" by kind).
#   KEYS: ledger, lease, due, claimed, dirty, the hour's outcome counts
#   ARGV: reminder id, lease token, outcome JSON, due member, dirty mark ('' = none), its score, kind
_FINISH = """
local written = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3])
if written == 1 then
  redis.call('HINCRBY', KEYS[6], ARGV[7], 1)
  redis.call('EXPIRE', KEYS[6], ARGV[8])
end
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('ZREM', KEYS[4], ARGV[4])
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[5], ARGV[6], ARGV[5]) end
return written
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Ledger:
    def __init__(self, client: redis.Redis, keys: Keys, *, lease_ms: int = 300_000, history_days: int = 90) -> None:
        self.redis = client
        self.keys = keys
        self.lease_ms = lease_ms
        self.history = History(client, keys, days=history_days)
        self.suppressions = Suppressions(client, keys)
        self._claim = LuaScript(client, _CLAIM)
        self._finish = LuaScript(client, _FINISH)
        self._release = LuaScript(client, _RELEASE)
        self._renew = LuaScript(client, _RENEW)

    def claim(
        self, partner_id: str, renewal_id: str, reminder_id: str, *, check_suppressed: Sequence[str] = ()
    ) -> tuple[ClaimResult, str, list[bool]]:
        """Take the lease on a reminder unless it is final or another worker holds it.

        Returns the result, the lease token and, in the same round trip, whether each address in
        ``check_suppressed`` is on the suppression list.
        """
        return self.claim_many([((partner_id, renewal_id, reminder_id), check_suppressed)])[0]

    def claim_many(
        self, requests: Sequence[tuple[ReminderRef, Sequence[str]]], *, hold_claims_until_ms: int | None = None
    ) -> list[tuple[ClaimResult, str, list[bool]]]:
        """``claim`` for many reminders in one round trip; each is claimed (or not) on its own.

        ``hold_claims_until_ms`` also sets the scheduler's claims on them to end then (the worker
        that holds them renews both while it works).
        """
        if not requests:
            return []
        tokens = [uuid.uuid4().hex for _ in requests]
        addresses = [[e.casefold() for e in emails] for _, emails in requests]

        def build(pipe: redis.client.Pipeline) -> None:
            for ((pid, rid, rem), _), token, emails in zip(requests, tokens, addresses, strict=True):
                if emails:
                    pipe.smismember(self.keys.suppressed(), emails)
                keys = [self.keys.ledger(pid, rid), self.keys.lease(pid, rid, rem)]
                self._claim.queue(pipe, keys=keys, args=[rem, token, self.lease_ms])
            if hold_claims_until_ms is not None:
                pipe.zadd(self.keys.claimed(), {due_member(*ref): hold_claims_until_ms for ref, _ in requests}, xx=True)

        replies = iter(run_pipeline(self.redis, build, [self._claim]))
        out: list[tuple[ClaimResult, str, list[bool]]] = []
        for token, emails in zip(tokens, addresses, strict=True):
            flags = [bool(v) for v in next(replies)] if emails else []
            result = next(replies)
            out.append((result.decode() if isinstance(result, bytes) else result, token, flags))
        return out

    def release(self, partner_id: str, renewal_id: str, reminder_id: str, token: str) -> None:
        """Give the lease back without an outcome (a retryable failure): another attempt may take it."""
        self._release(keys=[self.keys.lease(partner_id, renewal_id, reminder_id)], args=[token])

    def finish(
        self,
        partner_id: str,
        renewal_id: str,
        reminder_id: str,
        outcome: Outcome,
        token: str = "",
        *,
        plan_next: bool = True,
    ) -> bool:
        """Record the final outcome; False when one was already there (it is never overwritten).

        ``plan_next`` marks the renewal to be planned again, which puts its next reminder in the due
        index; the delivery leaves it out when the plan it read has no other reminder.
        """
        return self.finish_many([((partner_id, renewal_id, reminder_id), outcome, token, plan_next)])[0]

    def finish_many(
        self,
        items: Sequence[tuple[ReminderRef, Outcome, str, bool]],
        *,
        suppress: Sequence[str | Suppression] = (),
        release: Sequence[str | bytes] = (),
        history: Sequence[HistoryEntry] = (),
    ) -> list[bool]:
        """``finish`` many reminders (ref, outcome, lease token, plan_next) in one round trip, with the
        addresses to suppress (with why, when given as Suppression), the scheduler claims to release
        (reminders already final or handed back to planning) and the history entries to append."""
        if not (items or suppress or release or history):
            return []
        # Re-run whole on NOSCRIPT: HSETNX of an outcome, SADD and ZREM are all idempotent; a history
        # entry would be written twice (only after Redis forgot the scripts: a restart or a flush).
        replies = run_pipeline(
            self.redis,
            lambda pipe: self.queue_finish(pipe, items, suppress=suppress, release=release, history=history),
            [self._finish],
        )
        return [bool(written) for written in replies[: len(items)]]

    def queue_finish(
        self,
        pipe: redis.client.Pipeline,
        items: Sequence[tuple[ReminderRef, Outcome, str, bool]],
        *,
        suppress: Sequence[str | Suppression] = (),
        release: Sequence[str | bytes] = (),
        history: Sequence[HistoryEntry] = (),
    ) -> int:
        """Queue what ``finish_many`` writes into ``pipe`` (so a read can share its round trip).

        Returns how many replies it adds to the pipeline's; the first ``len(items)`` say whether each
        outcome was written. Safe to run again whole on NOSCRIPT, like ``finish_many``.
        """
        k = self.keys
        for (pid, rid, rem), outcome, token, plan_next in items:
            score = int(outcome.at.timestamp() * 1000)
            keys = [
                k.ledger(pid, rid),
                k.lease(pid, rid, rem),
                k.due(),
                k.claimed(),
                k.dirty(),
                k.outcome_counts_at(outcome.at),
            ]
            mark = dirty_member("renewal", pid, rid) if plan_next else ""
            args = [rem, token, outcome.to_json(), due_member(pid, rid, rem), mark, score, outcome.kind, COUNTS_TTL_S]
            self._finish.queue(pipe, keys=keys, args=args)
        plain = [e for e in suppress if isinstance(e, str)]
        if plain:
            pipe.sadd(k.suppressed(), *[e.casefold() for e in plain])
        count = (
            len(items)
            + bool(plain)
            + self.suppressions.queue_add(pipe, [e for e in suppress if not isinstance(e, str)])
        )
        if release:
            pipe.zrem(k.claimed(), *release)
        return count + bool(release) + self.history.queue(pipe, history)

    @property
    def finish_script(self) -> LuaScript:
        """The script ``queue_finish`` runs, for callers that run the pipeline themselves."""
        return self._finish

    def renew(self, leases: Sequence[tuple[ReminderRef, str]], *, claims_until_ms: int) -> None:
        """Keep the leases this worker holds, and the scheduler's claims on them, alive while it works.

        Leases are short so that a worker that dies mid-batch gives its reminders back within
        seconds; the living one renews them (only where its token still holds the lease).
        """
        if not leases:
            return

        def build(pipe: redis.client.Pipeline) -> None:
            for (pid, rid, rem), token in leases:
                self._renew.queue(pipe, keys=[self.keys.lease(pid, rid, rem)], args=[token, self.lease_ms])
            pipe.zadd(self.keys.claimed(), {due_member(*ref): claims_until_ms for ref, _ in leases}, xx=True)

        run_pipeline(self.redis, build, [self._renew])

    def outcomes(self, partner_id: str, renewal_id: str) -> dict[str, Outcome]:
        raw = self.redis.hgetall(self.keys.ledger(partner_id, renewal_id))
        return {key.decode(): Outcome.from_json(value) for key, value in raw.items()}

    def outcome(self, partner_id: str, renewal_id: str, reminder_id: str) -> Outcome | None:
        raw = self.redis.hget(self.keys.ledger(partner_id, renewal_id), reminder_id)
        return None if raw is None else Outcome.from_json(raw)

    def is_suppressed(self, emails: list[str]) -> list[bool]:
        if not emails:
            return []
        return [bool(v) for v in self.redis.smismember(self.keys.suppressed(), [e.casefold() for e in emails])]

    def suppress(self, emails: list[str]) -> None:
        if emails:
            self.redis.sadd(self.keys.suppressed(), *[e.casefold() for e in emails])
