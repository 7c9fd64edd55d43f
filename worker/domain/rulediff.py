"""What a candidate rule file would change for one renewal, and the tally over many (pure, no I/O).

Both rule sets go through the planner itself (``plan_renewal``), so the diff can never disagree with
what the worker would do once the new file is in force.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

from .events import ClientData, Owner, OwnerData, PartnerData, RenewalData, RenewalStatus
from .planner import Plan, plan_renewal
from .rules import RuleSet

__all__ = [
    "CHANGE_KINDS",
    "ChangeKind",
    "PlanFacts",
    "ReminderChange",
    "RuleDiff",
    "RuleDiffer",
    "diff_plans",
    "facts_of",
    "history_at",
]

ChangeKind = Literal["added", "moved", "removed", "immediate"]
CHANGE_KINDS: tuple[ChangeKind, ...] = ("added", "moved", "removed", "immediate")


@dataclass(frozen=True)
class ReminderChange:
    """One reminder of one renewal whose plan differs; ``immediate`` is one that would go out on deployment."""

    reminder_id: str
    kind: ChangeKind
    old_due: datetime | None
    new_due: datetime | None


def diff_plans(old: Plan, new: Plan, *, now: datetime) -> list[ReminderChange]:
    """The planned reminders that differ between two plans of the same renewal at ``now``.

    A reminder the new plan has due at or before ``now`` (a catch-up) that the old plan did not
    also have due by then is ``immediate``: deploying the new rules sends it at once. Otherwise a
    reminder only in the new plan is ``added``, one only in the old is ``removed`` (dropped, or
    skipped as missed or past its deadline), and one due at another instant is ``moved``.
    """
    old_due = {p.reminder_id: p.due_at for p in old.planned}
    new_due = {p.reminder_id: p.due_at for p in new.planned}
    changes: list[ReminderChange] = []
    for reminder_id, due in new_due.items():
        before = old_due.get(reminder_id)
        if due <= now:
            if before is None or before > now:
                changes.append(ReminderChange(reminder_id, "immediate", before, due))
        elif before is None:
            changes.append(ReminderChange(reminder_id, "added", None, due))
        elif before != due:
            changes.append(ReminderChange(reminder_id, "moved", before, due))
    for reminder_id, due in old_due.items():
        if reminder_id not in new_due:
            changes.append(ReminderChange(reminder_id, "removed", due, None))
    return changes


def history_at(plan: Plan, now: datetime) -> frozenset[str]:
    """The reminders a worker running these rules would have made final by ``now``: sent, caught up or skipped.

    For renewals that have no ledger (an events file rather than a store), so that the rules in
    force are not blamed for catch-ups the worker would long have sent.
    """
    return frozenset([p.reminder_id for p in plan.planned if p.due_at <= now] + [s.reminder_id for s in plan.skipped])


@dataclass
class RuleDiff:
    """The tally over many renewals: counts per reminder id and kind, and the first few changes of each kind."""

    sample_size: int = 5
    renewals: int = 0
    changed_renewals: int = 0
    counts: dict[str, dict[ChangeKind, int]] = field(default_factory=dict)
    samples: dict[ChangeKind, list[tuple[str, str, ReminderChange]]] = field(
        default_factory=lambda: {kind: [] for kind in CHANGE_KINDS}
    )

    def add(self, partner_id: str, renewal_id: str, changes: Iterable[ReminderChange]) -> None:
        self.renewals += 1
        changed = False
        for change in changes:
            changed = True
            per_kind = self.counts.setdefault(change.reminder_id, dict.fromkeys(CHANGE_KINDS, 0))
            per_kind[change.kind] += 1
            sample = self.samples[change.kind]
            if len(sample) < self.sample_size:
                sample.append((partner_id, renewal_id, change))
        self.changed_renewals += changed

    def total(self, kind: ChangeKind) -> int:
        return sum(per_kind[kind] for per_kind in self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        def when(moment: datetime | None) -> str | None:
            return None if moment is None else moment.isoformat()

        return {
            "renewals": self.renewals,
            "changed_renewals": self.changed_renewals,
            "totals": {kind: self.total(kind) for kind in CHANGE_KINDS},
            "reminders": {rid: dict(per_kind) for rid, per_kind in sorted(self.counts.items())},
            "samples": {
                kind: [
                    {
                        "partner_id": pid,
                        "renewal_id": rid,
                        "reminder_id": c.reminder_id,
                        "old_due": when(c.old_due),
                        "new_due": when(c.new_due),
                    }
                    for pid, rid, c in sample
                ]
                for kind, sample in self.samples.items()
            },
        }


@dataclass(frozen=True)
class PlanFacts:
    """What a renewal's plan depends on, and nothing else: renewals with equal facts get equal plans.

    ``start_date`` is None when nothing is known of the renewal; a time zone is None when unset, and
    ``partner_timezone`` also when the partner is unknown.
    """

    start_date: date | None
    status: RenewalStatus = "pending"
    removed: bool = False
    services_ended: bool = False
    client_known: bool = True
    client_timezone: str | None = None
    partner_timezone: str | None = None
    default_owner: Owner | None = None
    override_owner: Owner | None = None
    final: frozenset[str] = frozenset()


def facts_of(
    renewal: RenewalData | None,
    *,
    removed: bool,
    services_ended: bool,
    client: ClientData | None,
    partner: PartnerData | None,
    override: OwnerData | None,
    final: Collection[str] = (),
) -> PlanFacts:
    """The facts of a renewal given as the planner's models."""
    return PlanFacts(
        start_date=None if renewal is None else renewal.start_date,
        status="pending" if renewal is None else renewal.status,
        removed=removed,
        services_ended=services_ended,
        client_known=client is not None,
        client_timezone=None if client is None else client.timezone,
        partner_timezone=None if partner is None else partner.timezone,
        default_owner=None if partner is None else partner.default_owner,
        override_owner=None if override is None else override.owner,
        final=frozenset(final),
    )


class RuleDiffer:
    """Diffs renewal after renewal, planning each distinct case once.

    Renewals that share a start date, status, time zones, owner and history get the same plans, so
    a million stored reminders cost far fewer than a million planner calls. Each case is still
    planned by ``plan_renewal`` itself, from models holding just the facts.
    """

    def __init__(self, old: RuleSet, new: RuleSet, *, now: datetime, assume_history: bool = False) -> None:
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        self.old = old
        self.new = new
        self.now = now
        self.assume_history = assume_history
        self._cache: dict[PlanFacts, list[ReminderChange]] = {}

    def changes(self, facts: PlanFacts) -> list[ReminderChange]:
        cached = self._cache.get(facts)
        if cached is None:
            cached = self._cache[facts] = self._diff(facts)
        return cached

    def _diff(self, facts: PlanFacts) -> list[ReminderChange]:
        if facts.start_date is None:
            return []
        # Models holding just the facts the planner reads (model_construct: they come from records
        # validated when they were stored); the other fields are never looked at.
        renewal_fields: dict[str, Any] = {"renewal_id": "", "client_id": "", "start_date": facts.start_date}
        renewal = RenewalData.model_construct(**renewal_fields, status=facts.status)
        client_fields: dict[str, Any] = {"client_id": "", "timezone": facts.client_timezone}
        client = ClientData.model_construct(**client_fields)
        partner = None
        if facts.partner_timezone is not None:
            partner_fields: dict[str, Any] = {"timezone": facts.partner_timezone}
            partner = PartnerData.model_construct(**partner_fields, default_owner=facts.default_owner or "hubspot")
        override = None
        if facts.override_owner is not None:
            override = OwnerData.model_construct(client_id="", owner=facts.override_owner)

        def plan(rules: RuleSet, done: Collection[str]) -> Plan:
            return plan_renewal(
                renewal,
                removed=facts.removed,
                services_ended=facts.services_ended,
                client=client if facts.client_known else None,
                partner=partner,
                override=override,
                rules=rules,
                now=self.now,
                final=done,
            )

        done = facts.final
        if self.assume_history:
            done |= history_at(plan(self.old, done), self.now)
        return diff_plans(plan(self.old, done), plan(self.new, done), now=self.now)
