"""What a candidate rule file would change for one renewal, and the tally over many (pure, no I/O).

Both rule sets go through the planner itself (``plan_renewal``), so the diff can never disagree with
what the worker would do once the new file is in force.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from .events import ClientData, Owner, OwnerData, PartnerData, RenewalData, RenewalStatus
from .planner import Plan, RuleChange, plan_renewal, recipients_timezone, reminder_due_at
from .routing import effective_owner
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
    partner_known: bool = True
    client_timezone: str | None = None
    partner_timezone: str | None = None
    default_owner: Owner | None = None
    override_owner: Owner | None = None
    final: frozenset[str] = frozenset()
    known_since: datetime | None = None  # when the renewal's data last changed
    last_sent_at: datetime | None = None  # when a reminder of it was last sent


def facts_of(
    renewal: RenewalData | None,
    *,
    removed: bool,
    services_ended: bool,
    client: ClientData | None,
    partner: PartnerData | None,
    override: OwnerData | None,
    final: Collection[str] = (),
    known_since: datetime | None = None,
    last_sent_at: datetime | None = None,
) -> PlanFacts:
    """The facts of a renewal given as the planner's models."""
    return PlanFacts(
        start_date=None if renewal is None else renewal.start_date,
        status="pending" if renewal is None else renewal.status,
        removed=removed,
        services_ended=services_ended,
        client_known=client is not None,
        partner_known=partner is not None,
        client_timezone=None if client is None else client.timezone,
        partner_timezone=None if partner is None else partner.timezone,
        default_owner=None if partner is None else partner.default_owner,
        override_owner=None if override is None else override.owner,
        final=frozenset(final),
        known_since=known_since,
        last_sent_at=last_sent_at,
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
        self._grids: dict[tuple[date, str], tuple[datetime, ...]] = {}

    def changes(self, facts: PlanFacts) -> list[ReminderChange]:
        facts = self._canonical(facts)
        cached = self._cache.get(facts)
        if cached is None:
            cached = self._cache[facts] = self._diff(facts)
        return cached

    def _canonical(self, facts: PlanFacts) -> PlanFacts:
        """The same facts with ``known_since`` and ``last_sent_at`` moved onto the renewal's due times.

        The planner only compares them with due times (``known_since <= due``, ``due < last_sent_at``):
        the first due time at or after each gives the same answers, and renewals then share a plan.
        """
        if facts.start_date is None or (facts.known_since is None and facts.last_sent_at is None):
            return facts
        grid = self._due_times(facts)
        return replace(
            facts, known_since=_on_grid(facts.known_since, grid), last_sent_at=_on_grid(facts.last_sent_at, grid)
        )

    def _due_times(self, facts: PlanFacts) -> tuple[datetime, ...]:
        assert facts.start_date is not None
        tz = self._timezone(facts)
        key = (facts.start_date, tz.key)
        grid = self._grids.get(key)
        if grid is None:
            grid = self._grids[key] = tuple(
                sorted(
                    {
                        reminder_due_at(rule, facts.start_date, rules, tz)
                        for rules in (self.old, self.new)
                        for rule in rules.reminders
                    }
                )
            )
        return grid

    def _timezone(self, facts: PlanFacts) -> ZoneInfo:
        client, partner, override = self._models(facts)
        return recipients_timezone(effective_owner(partner, override), client, partner)

    def _models(self, facts: PlanFacts) -> tuple[ClientData | None, PartnerData | None, OwnerData | None]:
        # Models holding just the facts the planner reads (model_construct: they come from records
        # validated when they were stored); the other fields are never looked at.
        client_fields: dict[str, Any] = {"client_id": "", "timezone": facts.client_timezone}
        client = ClientData.model_construct(**client_fields) if facts.client_known else None
        partner = None
        if facts.partner_known:
            partner_fields: dict[str, Any] = {"timezone": facts.partner_timezone or "UTC"}
            partner = PartnerData.model_construct(**partner_fields, default_owner=facts.default_owner or "hubspot")
        override = None
        if facts.override_owner is not None:
            override = OwnerData.model_construct(client_id="", owner=facts.override_owner)
        return client, partner, override

    def _diff(self, facts: PlanFacts) -> list[ReminderChange]:
        if facts.start_date is None:
            return []
        renewal_fields: dict[str, Any] = {"renewal_id": "", "client_id": "", "start_date": facts.start_date}
        renewal = RenewalData.model_construct(**renewal_fields, status=facts.status)
        client, partner, override = self._models(facts)

        def plan(rules: RuleSet, done: Collection[str], change: RuleChange | None, last_sent: datetime | None) -> Plan:
            return plan_renewal(
                renewal,
                removed=facts.removed,
                services_ended=facts.services_ended,
                client=client,
                partner=partner,
                override=override,
                rules=rules,
                now=self.now,
                final=done,
                rule_change=change,
                known_since=facts.known_since,
                last_sent_at=last_sent,
            )

        done, last_sent = facts.final, facts.last_sent_at
        if self.assume_history:
            before = plan(self.old, done, None, last_sent)
            done |= history_at(before, self.now)
            sent_by_now = [p.due_at for p in before.planned if p.due_at <= self.now]
            last_sent = max([*sent_by_now, *([last_sent] if last_sent else [])], default=None)
        # Deployed now, the new rules are a rule change since now: what it puts in the past is
        # skipped, not caught up (the planner's rule), unless the renewal's data came later.
        old = plan(self.old, done, None, last_sent)
        new = plan(self.new, done, RuleChange(self.old, self.now), last_sent)
        return diff_plans(old, new, now=self.now)


def _on_grid(moment: datetime | None, grid: tuple[datetime, ...]) -> datetime | None:
    """The first of ``grid`` at or after ``moment`` (just past the last when none is)."""
    if moment is None:
        return None
    index = bisect_left(grid, moment)
    return grid[index] if index < len(grid) else grid[-1] + timedelta(microseconds=1)
