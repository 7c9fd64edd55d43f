"""When each reminder of a renewal is due: a pure function of the renewal, the rules and a given ``now``.

No I/O and no clock reads, so that every timing decision can be tested with a table of cases.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from .events import ClientData, Owner, OwnerData, PartnerData, RenewalData
from .routing import effective_owner
from .rules import ReminderRule, RuleSet

__all__ = [
    "NO_CLIENT_DETAILS",
    "NO_PARTNER_SETTINGS",
    "WAITING_REASONS",
    "Plan",
    "PlannedReminder",
    "RuleChange",
    "SkipReason",
    "SkippedReminder",
    "deadline_end",
    "local_instant",
    "plan_renewal",
    "recipients_timezone",
    "reminder_due_at",
    "renewal_deadline",
]

SkipReason = Literal["missed", "deadline_passed", "rule_change"]
# The one reason a plan is empty only for now: the renewal is planned again when its client arrives.
NO_CLIENT_DETAILS = "no_client_details"
# Likewise for a partner never seen: its default owner decides who may be mailed at all.
NO_PARTNER_SETTINGS = "no_partner_settings"
# The reasons a renewal waits for missing data rather than being inactive for good.
WAITING_REASONS = (NO_CLIENT_DETAILS, NO_PARTNER_SETTINGS)
_UTC = ZoneInfo("UTC")


@dataclass(frozen=True)
class PlannedReminder:
    """A reminder to send at ``due_at`` (aware, UTC); ``caught_up`` when it was missed and moved to
    ``now``, its rule's own time then kept in ``rule_due_at`` (logs and views name that one)."""

    reminder_id: str
    template: str
    due_at: datetime
    local_due_at: datetime
    caught_up: bool = False
    rule_due_at: datetime | None = None

    @property
    def planned_at(self) -> datetime:
        """When its rule put it: before any catch-up moved it."""
        return self.rule_due_at if self.rule_due_at is not None else self.due_at


@dataclass(frozen=True)
class SkippedReminder:
    """A reminder that will never be sent; the caller records it as final so it is not weighed again."""

    reminder_id: str
    due_at: datetime
    reason: SkipReason


@dataclass(frozen=True)
class RuleChange:
    """The last edit of the rules: the rules before it, and when the new ones came into force."""

    previous: RuleSet
    since: datetime


@dataclass(frozen=True)
class Plan:
    """What to send for one renewal and what to give up on.

    ``inactive_reason`` says why nothing at all is planned: ``removed``, ``services_ended`` or
    ``status_<status>`` when no reminder applies to the renewal's status.
    """

    renewal_id: str
    deadline: date | None
    timezone: str
    planned: tuple[PlannedReminder, ...] = ()
    skipped: tuple[SkippedReminder, ...] = ()
    inactive_reason: str | None = None

    def planned_reminder(self, reminder_id: str) -> PlannedReminder | None:
        return next((p for p in self.planned if p.reminder_id == reminder_id), None)


def renewal_deadline(start_date: date, rules: RuleSet) -> date:
    """The last day on which the contract terms can still be changed."""
    return start_date - timedelta(days=rules.deadline_days_before_start)


def recipients_timezone(owner: Owner, client: ClientData | None, partner: PartnerData | None) -> ZoneInfo:
    """The time zone of whoever reads the reminder: the client's for ``hubspot``, the partner's for ``partner``.

    A platform-owned renewal of a client with no known time zone falls back to the partner's, then UTC.
    """
    if owner == "hubspot" and client is not None and client.timezone is not None:
        return ZoneInfo(client.timezone)
    if partner is not None:
        return ZoneInfo(partner.timezone)
    return _UTC


def local_instant(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock ``at`` on ``day`` in ``tz``.

    Resolved with ``fold=0`` (PEP 495), which gives: a time that does not exist (skipped by a
    spring-forward gap) is moved forward by the length of the gap (02:30 becomes 03:30 when
    clocks jump from 02:00 to 03:00); an ambiguous time (repeated by a fall-back fold) is its
    first occurrence, the one still on summer time.
    """
    return datetime.combine(day, at.replace(tzinfo=None, fold=0), tzinfo=tz).astimezone(UTC)


def deadline_end(deadline: date, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) after the deadline day in ``tz``: a reminder may go out only before it.

    This is the local midnight that starts the next day; where that midnight falls in a gap, the
    day ends at the gap, and where it is repeated, at its first occurrence (the earlier instant).
    """
    return local_instant(deadline + timedelta(days=1), time(0), tz)


def reminder_due_at(rule: ReminderRule, start_date: date, rules: RuleSet, tz: ZoneInfo) -> datetime:
    """The UTC instant a reminder falls due: its anchor date plus ``offset_days``, at ``send_time`` local."""
    anchor = renewal_deadline(start_date, rules) if rule.anchor == "deadline" else start_date
    return local_instant(anchor + timedelta(days=rule.offset_days), rule.send_time, tz)


def _check_arguments(
    renewal: RenewalData | None, client: ClientData | None, override: OwnerData | None, now: datetime
) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if renewal is None:
        return
    if client is not None and client.client_id != renewal.client_id:
        raise ValueError(f"client {client.client_id!r} is not the client of renewal {renewal.renewal_id!r}")
    if override is not None and override.client_id != renewal.client_id:
        raise ValueError(f"owner override for {override.client_id!r} is not for renewal {renewal.renewal_id!r}")


def plan_renewal(
    renewal: RenewalData | None,
    *,
    removed: bool,
    services_ended: bool,
    client: ClientData | None,
    partner: PartnerData | None,
    override: OwnerData | None,
    rules: RuleSet,
    now: datetime,
    final: Collection[str] = (),
    rule_change: RuleChange | None = None,
    known_since: datetime | None = None,
    last_sent_at: datetime | None = None,
) -> Plan:
    """Which reminders of a renewal to send and when, given everything known at ``now``.

    ``final`` holds the ids of reminders with a recorded outcome (sent, skipped, suppressed,
    failed): they are never planned again, so each reminder goes out at most once whatever
    changes later. ``renewal=None`` (no data, e.g. removed before it was ever seen) plans nothing.

    Missed reminders (due at or before ``now``): only the most recent is planned, at ``now``; the
    others are skipped as ``missed``. A missed reminder due before one that is already final is
    skipped too, so that a first notice never arrives after the second one. Of reminders due at
    the same instant, only the one listed first goes out once that instant has passed. Once the
    deadline day has ended, every open reminder is skipped as ``deadline_passed``.

    Catch-up is for renewals that arrive or change late, not for edits of the rules: a reminder
    that ``rule_change`` added or moved (its due time differs from the previous rules') to a time
    before the edit, and whose renewal was known (``known_since``: its data last changed) by that
    time, is skipped as ``rule_change``. And no reminder is planned that is due before
    ``last_sent_at``, when one was already sent for this renewal (``rule_change`` or ``missed``).
    """
    _check_arguments(renewal, client, override, now)
    now = now.astimezone(UTC)
    tz = recipients_timezone(effective_owner(partner, override), client, partner)
    if renewal is None:
        return Plan("", None, tz.key, inactive_reason="removed")
    deadline = renewal_deadline(renewal.start_date, rules)
    inactive = _inactive_reason(
        renewal,
        rules,
        removed=removed,
        services_ended=services_ended,
        client_known=client is not None,
        partner_known=partner is not None,
    )
    if inactive is not None:
        return Plan(renewal.renewal_id, deadline, tz.key, inactive_reason=inactive)

    end = deadline_end(deadline, tz)
    applicable = [rule for rule in rules.reminders if renewal.status in rule.statuses]
    due = {rule.id: reminder_due_at(rule, renewal.start_date, rules, tz) for rule in applicable}
    open_rules = [rule for rule in applicable if rule.id not in final]
    if now >= end:
        skipped = tuple(SkippedReminder(rule.id, due[rule.id], "deadline_passed") for rule in open_rules)
        return Plan(renewal.renewal_id, deadline, tz.key, skipped=skipped)

    # Only a daylight-saving gap right at midnight could push a due time past the deadline day.
    too_late = [rule for rule in open_rules if due[rule.id] >= end]
    by_edit = _moved_by_edit(renewal, open_rules, due, rule_change, known_since, now, tz)
    before_sent = {rule.id for rule in open_rules if last_sent_at is not None and due[rule.id] < last_sent_at}
    withheld = by_edit | before_sent
    past = [rule for rule in applicable if due[rule.id] <= now and due[rule.id] < end and rule.id not in withheld]
    # max() keeps the first of equal candidates, so a tie goes to the reminder listed first.
    latest = max(past, key=lambda rule: due[rule.id], default=None)
    catch_up = latest if latest is not None and latest.id not in final else None

    planned: list[PlannedReminder] = []
    skipped_list = [SkippedReminder(rule.id, due[rule.id], "deadline_passed") for rule in too_late]
    for rule in open_rules:
        if rule.id in withheld and rule not in too_late:
            reason: SkipReason = "rule_change" if rule.id in by_edit else "missed"
            skipped_list.append(SkippedReminder(rule.id, due[rule.id], reason))
        elif rule is catch_up:
            late = due[rule.id] < now
            planned.append(
                PlannedReminder(
                    rule.id, rule.template, now, now.astimezone(tz), late, rule_due_at=due[rule.id] if late else None
                )
            )
        elif rule in past:
            skipped_list.append(SkippedReminder(rule.id, due[rule.id], "missed"))
        elif rule not in too_late:
            planned.append(PlannedReminder(rule.id, rule.template, due[rule.id], due[rule.id].astimezone(tz)))
    planned.sort(key=lambda reminder: reminder.due_at)
    return Plan(renewal.renewal_id, deadline, tz.key, tuple(planned), tuple(skipped_list))


def _moved_by_edit(
    renewal: RenewalData,
    open_rules: list[ReminderRule],
    due: dict[str, datetime],
    rule_change: RuleChange | None,
    known_since: datetime | None,
    now: datetime,
    tz: ZoneInfo,
) -> set[str]:
    """Ids of open reminders that the last rule edit added or moved to a time already past at the edit.

    A reminder whose due time the edit left alone is not one of them (a backlog or a downtime
    still catches it up), nor one due before the renewal's data last changed (it came late).
    """
    if rule_change is None:
        return set()
    previous = rule_change.previous
    before = {
        rule.id: reminder_due_at(rule, renewal.start_date, previous, tz)
        for rule in previous.reminders
        if renewal.status in rule.statuses
    }
    return {
        rule.id
        for rule in open_rules
        if due[rule.id] <= now
        and due[rule.id] < rule_change.since
        and before.get(rule.id) != due[rule.id]
        and (known_since is None or known_since <= due[rule.id])
    }


def _inactive_reason(
    renewal: RenewalData,
    rules: RuleSet,
    *,
    removed: bool,
    services_ended: bool,
    client_known: bool,
    partner_known: bool,
) -> str | None:
    if removed:
        return "removed"
    if services_ended:
        return "services_ended"
    if not any(renewal.status in rule.statuses for rule in rules.reminders):
        return f"status_{renewal.status}"
    if not client_known:
        # Events may arrive out of order: the renewal before its client. Nothing can be addressed,
        # nor its time zone known, until the client's details arrive; they re-plan it then.
        return NO_CLIENT_DETAILS
    if not partner_known:
        # Without the partner's settings its default owner is unknown: routing with the built-in
        # default could mail the contacts of a client the partner owns. partner.updated re-plans it.
        return NO_PARTNER_SETTINGS
    return None
