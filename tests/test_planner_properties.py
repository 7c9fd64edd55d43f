"""Properties of the planner over whole lifetimes of a renewal, with the clock and the data moving on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.domain.events import ClientData, Contacts, OwnerData, PartnerData, Product, RenewalData
from worker.domain.planner import Plan, deadline_end, plan_renewal
from worker.domain.rules import RENEWAL_STATUSES, Anchor, ReminderRule, RuleSet

# Zones with daylight saving in either hemisphere, half-hour shifts, and changes at midnight.
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Santiago",
    "America/Havana",
    "Asia/Beirut",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
    "Asia/Kathmandu",
]
STATUSES = sorted(RENEWAL_STATUSES)


@st.composite
def rule_sets(draw: st.DrawFn) -> RuleSet:
    deadline_days = draw(st.integers(1, 60))
    count = draw(st.integers(1, 4))
    reminders = []
    for i in range(count):
        anchor: Anchor = draw(st.sampled_from(["deadline", "start"]))
        latest = 0 if anchor == "deadline" else -deadline_days
        offset_days = draw(st.integers(latest - 40, latest))
        send_time = time(draw(st.integers(0, 23)), draw(st.sampled_from([0, 15, 30, 59])))
        some_statuses = st.frozensets(st.sampled_from(STATUSES), min_size=1)
        statuses = draw(st.one_of(st.just(None), st.just(None), some_statuses))
        reminders.append(
            ReminderRule(f"r{i}", anchor, offset_days, send_time, f"t{i}", statuses or frozenset({"pending"}))
        )
    return RuleSet(deadline_days, tuple(reminders))


@dataclass(frozen=True)
class Step:
    """Time passing, then one change to the data; with the worker down, nothing due meanwhile is sent."""

    advance: timedelta
    worker_up: bool
    change: tuple[str, Any]


steps = st.builds(
    Step,
    advance=st.integers(0, 6 * 24 * 60).map(lambda minutes: timedelta(minutes=minutes)),
    worker_up=st.booleans(),
    # Most steps change nothing, so that many lifetimes reach their reminders before they end.
    change=st.one_of(
        *[st.just(("nothing", None))] * 6,
        st.tuples(st.just("move_start"), st.integers(-40, 40)),
        st.tuples(st.just("status"), st.sampled_from(STATUSES)),
        st.tuples(st.just("owner"), st.sampled_from(["hubspot", "partner", None])),
        st.just(("end_services", None)),
        st.just(("remove", None)),
    ),
)


def make_renewal(start: date, status: str) -> RenewalData:
    product = Product(name="CRM", current_mrr=Decimal("10"), renewal_mrr=Decimal("12"))
    return RenewalData(
        renewal_id="r-1",
        client_id="c-1",
        start_date=start,
        products=[product],
        currency="USD",
        current_mrr=Decimal("10"),
        renewal_mrr=Decimal("12"),
        status=status,  # type: ignore[arg-type]
    )


@settings(max_examples=150, deadline=None)
@given(
    rules=rule_sets(),
    start=st.dates(date(2024, 1, 1), date(2026, 12, 31)),
    lead_minutes=st.integers(-3 * 24 * 60, 70 * 24 * 60),
    client_tz=st.sampled_from(ZONES),
    partner_tz=st.sampled_from(ZONES),
    has_client=st.booleans(),
    lifetime=st.lists(steps, min_size=1, max_size=15),
)
def test_over_any_lifetime_each_reminder_goes_out_once_inside_the_deadline_day_and_never_after_services_end(
    rules: RuleSet,
    start: date,
    lead_minutes: int,
    client_tz: str,
    partner_tz: str,
    has_client: bool,
    lifetime: list[Step],
) -> None:
    deadline_noon = datetime.combine(start - timedelta(days=rules.deadline_days_before_start), time(12), tzinfo=UTC)
    now = deadline_noon - timedelta(minutes=lead_minutes)
    client = ClientData(client_id="c-1", domain="acme.com", locale="en", timezone=client_tz, contacts=Contacts())
    partner = PartnerData(name="Agency", timezone=partner_tz)
    status, owner, removed, services_ended = "pending", None, False, False
    final: dict[str, str] = {}
    sent: list[str] = []

    def replan(at: datetime) -> Plan:
        result = plan_renewal(
            make_renewal(start, status),
            removed=removed,
            services_ended=services_ended,
            client=client if has_client else None,
            partner=partner,
            override=OwnerData(client_id="c-1", owner=owner),
            rules=rules,
            now=at,
            final=final,
        )
        assert result.deadline is not None
        end = deadline_end(result.deadline, ZoneInfo(result.timezone))
        assert not {p.reminder_id for p in result.planned} & final.keys(), "a final reminder was planned again"
        assert not {s.reminder_id for s in result.skipped} & final.keys()
        assert all(at <= p.due_at < end for p in result.planned), "planned outside [now, end of deadline day)"
        assert sum(p.due_at <= at for p in result.planned) <= 1, "more than one reminder sent at once"
        assert [p.due_at for p in result.planned] == sorted(p.due_at for p in result.planned)
        if removed or services_ended:
            assert not result.planned and not result.skipped
        final.update((s.reminder_id, "skipped") for s in result.skipped)
        return result

    def send_due(result: Plan, until: datetime) -> None:
        for reminder in result.planned:
            if reminder.due_at <= until:
                assert not (removed or services_ended), "a reminder went out for an ended or removed renewal"
                final[reminder.reminder_id] = "sent"
                sent.append(reminder.reminder_id)

    for step in lifetime:
        result = replan(now)
        send_due(result, now)
        later = now + step.advance
        if step.worker_up:
            # The scheduler sends each planned reminder when its time comes; a plan made at `now`
            # holds until the data changes, which happens only at the end of the step.
            send_due(replan(now), later)
        now = later
        kind, value = step.change
        if kind == "move_start":
            start += timedelta(days=value)
        elif kind == "status":
            status = value
        elif kind == "owner":
            owner = value
        elif kind == "end_services":
            services_ended = True
        elif kind == "remove":
            removed = True
    replan(now)

    assert len(sent) == len(set(sent)), f"a reminder was sent twice: {sent}"


@settings(max_examples=100, deadline=None)
@given(
    rules=rule_sets(),
    start=st.dates(date(2024, 1, 1), date(2026, 12, 31)),
    now=st.datetimes(datetime(2023, 9, 1), datetime(2027, 1, 1), timezones=st.just(UTC)),
    tz=st.sampled_from(ZONES),
)
def test_every_open_reminder_is_either_planned_or_skipped_and_skips_only_for_missed_or_late(
    rules: RuleSet, start: date, now: datetime, tz: str
) -> None:
    client = ClientData(client_id="c-1", domain="acme.com", locale="en", timezone=tz, contacts=Contacts())
    result = plan_renewal(
        make_renewal(start, "pending"),
        removed=False,
        services_ended=False,
        client=client,
        partner=PartnerData(name="Agency", timezone=tz),
        override=None,
        rules=rules,
        now=now,
    )

    pending_ids = {r.id for r in rules.reminders if "pending" in r.statuses}
    planned_ids = [p.reminder_id for p in result.planned]
    skipped_ids = [s.reminder_id for s in result.skipped]
    assert sorted(planned_ids + skipped_ids) == sorted(pending_ids)
    assert {s.reason for s in result.skipped} <= {"missed", "deadline_passed"}
    # Compare instants by timestamp: PEP 495 makes == between zones False for a time in a DST fold.
    assert all(p.local_due_at.timestamp() == p.due_at.timestamp() and p.due_at.tzinfo is UTC for p in result.planned)
