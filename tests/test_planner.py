"""The pure planner: due times per anchor and time zone, catch-up, the deadline day, and what stops a plan."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from worker.domain.events import ClientData, Contacts, OwnerData, PartnerData, Product, RenewalData
from worker.domain.planner import (
    NO_CLIENT_DETAILS,
    NO_PARTNER_SETTINGS,
    Plan,
    deadline_end,
    local_instant,
    plan_renewal,
    recipients_timezone,
    renewal_deadline,
)
from worker.domain.rules import ReminderRule, RuleSet

START = date(2025, 6, 15)  # deadline 2025-05-01 with the 45 days of the partner program
DEFAULT = RuleSet(
    45,
    (
        ReminderRule("first-notice", "deadline", -30, time(9), "first-notice"),
        ReminderRule("second-notice", "deadline", -7, time(9), "second-notice"),
        ReminderRule("final-notice", "deadline", -1, time(9), "final-notice"),
    ),
)
EARLY = datetime(2025, 1, 1, tzinfo=UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def renewal(start: date = START, status: str = "pending") -> RenewalData:
    product = Product(name="Marketing Hub", current_mrr=Decimal("800.00"), renewal_mrr=Decimal("880.00"))
    return RenewalData(
        renewal_id="r-1",
        client_id="c-1",
        start_date=start,
        products=[product],
        currency="EUR",
        current_mrr=Decimal("800.00"),
        renewal_mrr=Decimal("880.00"),
        status=status,  # type: ignore[arg-type]
    )


def client(tz: str | None = "UTC") -> ClientData:
    return ClientData(client_id="c-1", domain="acme.com", locale="en", timezone=tz, contacts=Contacts())


def partner(tz: str = "UTC", default_owner: str = "hubspot") -> PartnerData:
    return PartnerData(name="Agency", timezone=tz, default_owner=default_owner)  # type: ignore[arg-type]


def plan(
    *,
    renewal_data: RenewalData | None = None,
    rules: RuleSet = DEFAULT,
    now: datetime = EARLY,
    tz: str = "UTC",
    final: Collection[str] = (),
    **options: Any,
) -> Plan:
    arguments: dict[str, Any] = {
        "removed": False,
        "services_ended": False,
        "client": client(tz),
        "partner": partner(),
        "override": None,
    } | options
    return plan_renewal(renewal_data or renewal(), rules=rules, now=now, final=final, **arguments)


def one_rule(anchor: str, offset_days: int, send_time: time = time(9), deadline_days: int = 45) -> RuleSet:
    return RuleSet(deadline_days, (ReminderRule("n", anchor, offset_days, send_time, "n"),))  # type: ignore[arg-type]


def planned(result: Plan) -> list[tuple[str, datetime, bool]]:
    return [(p.reminder_id, p.due_at, p.caught_up) for p in result.planned]


def skipped(result: Plan) -> list[tuple[str, str]]:
    return [(s.reminder_id, s.reason) for s in result.skipped]


@pytest.mark.parametrize(
    ("start", "deadline_days", "deadline"),
    [
        (date(2025, 6, 15), 45, date(2025, 5, 1)),
        (date(2024, 3, 15), 45, date(2024, 1, 30)),
        (date(2025, 1, 1), 1, date(2024, 12, 31)),
    ],
)
def test_the_deadline_is_the_start_date_less_the_configured_days(
    start: date, deadline_days: int, deadline: date
) -> None:
    assert renewal_deadline(start, one_rule("deadline", 0, deadline_days=deadline_days)) == deadline


@pytest.mark.parametrize(
    ("anchor", "offset_days", "send_time", "tz", "due_at"),
    [
        ("deadline", -30, time(9), "UTC", utc(2025, 4, 1, 9)),
        ("deadline", -7, time(9), "UTC", utc(2025, 4, 24, 9)),
        ("deadline", -1, time(9), "Europe/Berlin", utc(2025, 4, 30, 7)),
        ("deadline", 0, time(23, 59), "Europe/Berlin", utc(2025, 5, 1, 21, 59)),
        ("deadline", 0, time(0), "America/New_York", utc(2025, 5, 1, 4)),
        ("start", -45, time(9), "America/New_York", utc(2025, 5, 1, 13)),
        ("start", -60, time(17, 30), "Asia/Tokyo", utc(2025, 4, 16, 8, 30)),
        ("start", -90, time(8, 15), "Australia/Sydney", utc(2025, 3, 16, 21, 15)),
    ],
)
def test_a_reminder_is_due_at_its_anchor_plus_offset_at_local_send_time(
    anchor: str, offset_days: int, send_time: time, tz: str, due_at: datetime
) -> None:
    result = plan(rules=one_rule(anchor, offset_days, send_time), tz=tz)

    assert planned(result) == [("n", due_at, False)]
    assert result.planned[0].local_due_at.utcoffset() == ZoneInfo(tz).utcoffset(due_at.replace(tzinfo=None))
    assert result.planned[0].local_due_at == due_at
    assert (result.deadline, result.timezone) == (date(2025, 5, 1), tz)


@pytest.mark.parametrize(
    ("tz", "day", "send_time", "due_at"),
    [
        # Europe/Berlin springs forward on 2025-03-30 and falls back on 2025-10-26.
        ("Europe/Berlin", date(2025, 3, 29), time(9), utc(2025, 3, 29, 8)),
        ("Europe/Berlin", date(2025, 3, 30), time(9), utc(2025, 3, 30, 7)),
        ("Europe/Berlin", date(2025, 10, 25), time(9), utc(2025, 10, 25, 7)),
        ("Europe/Berlin", date(2025, 10, 26), time(9), utc(2025, 10, 26, 8)),
        ("Europe/Berlin", date(2025, 3, 30), time(2, 30), utc(2025, 3, 30, 1, 30)),  # gap: 03:30 CEST
        ("Europe/Berlin", date(2025, 10, 26), time(2, 30), utc(2025, 10, 26, 0, 30)),  # fold: the first 02:30
        # America/New_York springs forward on 2025-03-09 and falls back on 2025-11-02.
        ("America/New_York", date(2025, 3, 8), time(9), utc(2025, 3, 8, 14)),
        ("America/New_York", date(2025, 3, 9), time(9), utc(2025, 3, 9, 13)),
        ("America/New_York", date(2025, 11, 1), time(9), utc(2025, 11, 1, 13)),
        ("America/New_York", date(2025, 11, 2), time(9), utc(2025, 11, 2, 14)),
        ("America/New_York", date(2025, 3, 9), time(2, 30), utc(2025, 3, 9, 7, 30)),  # gap: 03:30 EDT
        ("America/New_York", date(2025, 11, 2), time(1, 30), utc(2025, 11, 2, 5, 30)),  # fold: the EDT one
    ],
)
def test_send_time_is_local_on_both_sides_of_a_daylight_saving_change(
    tz: str, day: date, send_time: time, due_at: datetime
) -> None:
    rules = one_rule("deadline", 0, send_time)
    result = plan(renewal_data=renewal(start=day + timedelta(days=45)), rules=rules, tz=tz)

    assert planned(result) == [("n", due_at, False)]
    assert local_instant(day, send_time, ZoneInfo(tz)) == due_at


@pytest.mark.parametrize(
    ("deadline", "tz", "end"),
    [
        (date(2025, 5, 1), "UTC", utc(2025, 5, 2)),
        (date(2025, 3, 29), "Europe/Berlin", utc(2025, 3, 29, 23)),  # the next day starts on winter time
        (date(2025, 3, 30), "Europe/Berlin", utc(2025, 3, 30, 22)),  # the deadline day has 23 hours
        (date(2025, 10, 26), "Europe/Berlin", utc(2025, 10, 26, 23)),  # and this one 25
        (date(2025, 11, 2), "America/New_York", utc(2025, 11, 3, 5)),
        (date(2024, 9, 7), "America/Santiago", utc(2024, 9, 8, 4)),  # midnight itself is skipped in Chile
        (date(2025, 5, 1), "Pacific/Kiritimati", utc(2025, 5, 1, 10)),
    ],
)
def test_the_deadline_day_ends_at_the_next_local_midnight(deadline: date, tz: str, end: datetime) -> None:
    assert deadline_end(deadline, ZoneInfo(tz)) == end


@pytest.mark.parametrize(
    ("owner", "client_tz", "partner_tz", "has_client", "has_partner", "expected"),
    [
        ("hubspot", "Europe/Berlin", "America/New_York", True, True, "Europe/Berlin"),
        ("hubspot", None, "America/New_York", True, True, "America/New_York"),
        ("hubspot", "Europe/Berlin", "America/New_York", False, True, "America/New_York"),
        ("hubspot", None, "America/New_York", True, False, "UTC"),
        ("hubspot", "Europe/Berlin", None, True, False, "Europe/Berlin"),
        ("partner", "Europe/Berlin", "America/New_York", True, True, "America/New_York"),
        ("partner", "Europe/Berlin", "America/New_York", True, False, "UTC"),
    ],
)
def test_local_time_is_the_clients_for_the_platform_and_the_partners_for_the_partner(
    owner: str, client_tz: str | None, partner_tz: str | None, has_client: bool, has_partner: bool, expected: str
) -> None:
    the_client = client(client_tz) if has_client else None
    the_partner = partner(partner_tz or "UTC") if has_partner else None

    assert recipients_timezone(owner, the_client, the_partner).key == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("default_owner", "override_owner", "expected"),
    [
        ("hubspot", None, "Asia/Tokyo"),
        ("partner", None, "America/New_York"),
        ("hubspot", "partner", "America/New_York"),
        ("partner", "hubspot", "Asia/Tokyo"),
    ],
)
def test_the_plan_uses_the_time_zone_of_the_effective_owner(
    default_owner: str, override_owner: str | None, expected: str
) -> None:
    override = OwnerData(client_id="c-1", owner=override_owner)  # type: ignore[arg-type]

    result = plan(tz="Asia/Tokyo", partner=partner("America/New_York", default_owner), override=override)

    assert result.timezone == expected
    assert result.planned[0].local_due_at.time() == time(9)


def test_a_renewal_whose_client_has_not_arrived_plans_nothing_until_it_does() -> None:
    result = plan(client=None, partner=partner("Europe/Berlin"))

    assert result.inactive_reason == NO_CLIENT_DETAILS
    assert result.planned == () and result.skipped == ()
    assert result.timezone == "Europe/Berlin"
    # Once the client is there, a reminder whose time passed meanwhile is caught up, not lost.
    late = plan(client=client("Europe/Berlin"), partner=partner("Europe/Berlin"), now=utc(2025, 4, 2, 12))
    assert (late.planned[0].reminder_id, late.planned[0].caught_up) == ("first-notice", True)


def test_a_renewal_whose_partner_has_not_arrived_waits_like_one_without_its_client() -> None:
    # The built-in default owner must not route it: the partner may own its clients' mail.
    result = plan(partner=None, tz="Europe/Berlin")

    assert result.inactive_reason == NO_PARTNER_SETTINGS
    assert result.planned == () and result.skipped == ()
    # A renewal missing both waits for its client first, whose data it needs before anything else.
    assert plan(client=None, partner=None).inactive_reason == NO_CLIENT_DETAILS
    # Once the partner is there, a reminder whose time passed meanwhile is caught up, not lost.
    late = plan(partner=partner("Europe/Berlin"), now=utc(2025, 4, 2, 12))
    assert (late.planned[0].reminder_id, late.planned[0].caught_up) == ("first-notice", True)


def test_a_renewal_with_nothing_known_around_it_plans_in_utc() -> None:
    assert plan(client=None, partner=None).timezone == "UTC"


def test_future_reminders_are_planned_at_their_due_time_in_order() -> None:
    assert planned(plan()) == [
        ("first-notice", utc(2025, 4, 1, 9), False),
        ("second-notice", utc(2025, 4, 24, 9), False),
        ("final-notice", utc(2025, 4, 30, 9), False),
    ]


def test_only_the_latest_missed_reminder_is_sent_at_once_and_earlier_ones_are_skipped() -> None:
    now = utc(2025, 4, 26, 15)

    result = plan(now=now)

    assert planned(result) == [("second-notice", now, True), ("final-notice", utc(2025, 4, 30, 9), False)]
    assert result.planned[0].local_due_at == now
    # Logs and views name the time its rule gave it, not the catch-up time.
    assert [p.planned_at for p in result.planned] == [utc(2025, 4, 24, 9), utc(2025, 4, 30, 9)]
    assert skipped(result) == [("first-notice", "missed")]
    assert result.skipped[0].due_at == utc(2025, 4, 1, 9)


def test_a_reminder_due_exactly_now_is_sent_now_without_counting_as_caught_up() -> None:
    result = plan(now=utc(2025, 4, 24, 9), final={"first-notice"})

    assert planned(result)[0] == ("second-notice", utc(2025, 4, 24, 9), False)
    assert result.planned[0].planned_at == utc(2025, 4, 24, 9)


def test_on_the_deadline_day_the_last_missed_reminder_still_goes_out() -> None:
    now = utc(2025, 5, 1, 23, 59, 59)

    result = plan(now=now)

    assert planned(result) == [("final-notice", now, True)]
    assert skipped(result) == [("first-notice", "missed"), ("second-notice", "missed")]


@pytest.mark.parametrize("now", [utc(2025, 5, 2), utc(2025, 5, 2, 0, 0, 1), utc(2025, 7, 1)])
def test_after_the_deadline_day_nothing_is_sent_and_every_open_reminder_is_skipped(now: datetime) -> None:
    result = plan(now=now, final={"first-notice": "sent"})

    assert planned(result) == []
    assert skipped(result) == [("second-notice", "deadline_passed"), ("final-notice", "deadline_passed")]


def test_the_deadline_day_ends_in_the_recipients_time_zone() -> None:
    # 2025-05-01 ends at 22:00 UTC in Berlin, but not until 04:00 UTC the next day in New York.
    now = utc(2025, 5, 1, 23)

    assert planned(plan(now=now, tz="Europe/Berlin")) == []
    assert planned(plan(now=now, tz="America/New_York")) == [("final-notice", now, True)]


@pytest.mark.parametrize(
    "final",
    [{"first-notice"}, {"first-notice": "sent", "second-notice": "failed"}, ("final-notice",), set(DEFAULT.by_id)],
)
@pytest.mark.parametrize("now", [EARLY, utc(2025, 4, 26), utc(2025, 4, 30, 12), utc(2025, 6, 1)])
def test_a_reminder_with_a_final_outcome_is_never_planned_or_skipped_again(
    final: Collection[str], now: datetime
) -> None:
    result = plan(now=now, final=final)

    assert not {p.reminder_id for p in result.planned} & set(final)
    assert not {s.reminder_id for s in result.skipped} & set(final)


def test_a_missed_reminder_older_than_a_final_one_is_skipped_so_notices_never_arrive_out_of_order() -> None:
    result = plan(now=utc(2025, 4, 26), final={"second-notice"})

    assert planned(result) == [("final-notice", utc(2025, 4, 30, 9), False)]
    assert skipped(result) == [("first-notice", "missed")]


def test_a_start_date_that_moves_earlier_catches_up_only_the_latest_reminder() -> None:
    now = utc(2025, 4, 10)
    before = plan(now=now, final={"first-notice"})
    assert planned(before)[0] == ("second-notice", utc(2025, 4, 24, 9), False)

    after = plan(renewal_data=renewal(start=date(2025, 5, 20)), now=now, final={"first-notice"})

    # Deadline 2025-04-05 is gone already: nothing may be sent any more.
    assert planned(after) == []
    assert skipped(after) == [("second-notice", "deadline_passed"), ("final-notice", "deadline_passed")]

    # Deadline 2025-04-10 is today: the final notice (due yesterday) goes out now, the second is too old.
    closer = plan(renewal_data=renewal(start=date(2025, 5, 25)), now=now, final={"first-notice"})

    assert planned(closer) == [("final-notice", now, True)]
    assert skipped(closer) == [("second-notice", "missed")]


def test_a_start_date_that_moves_later_moves_open_reminders_but_never_resends_final_ones() -> None:
    now = utc(2025, 4, 10)

    result = plan(renewal_data=renewal(start=date(2025, 8, 15)), now=now, final={"first-notice"})

    assert result.deadline == date(2025, 7, 1)
    assert planned(result) == [
        ("second-notice", utc(2025, 6, 24, 9), False),
        ("final-notice", utc(2025, 6, 30, 9), False),
    ]
    assert skipped(result) == []


@pytest.mark.parametrize(
    ("options", "status", "reason"),
    [
        ({"removed": True}, "pending", "removed"),
        ({"services_ended": True}, "pending", "services_ended"),
        ({"removed": True, "services_ended": True}, "pending", "removed"),
        ({}, "renewed", "status_renewed"),
        ({}, "confirmed", "status_confirmed"),
        ({}, "cancellation_requested", "status_cancellation_requested"),
    ],
)
def test_a_removed_ended_or_decided_renewal_has_an_empty_plan_with_the_reason(
    options: dict[str, Any], status: str, reason: str
) -> None:
    result = plan(renewal_data=renewal(status=status), now=utc(2025, 4, 26), **options)

    assert (result.planned, result.skipped, result.inactive_reason) == ((), (), reason)
    assert result.deadline == date(2025, 5, 1)


def test_an_unknown_renewal_plans_nothing() -> None:
    result = plan_renewal(
        None, removed=True, services_ended=False, client=None, partner=None, override=None, rules=DEFAULT, now=EARLY
    )

    assert (result.planned, result.skipped, result.inactive_reason, result.deadline) == ((), (), "removed", None)


def test_a_status_change_keeps_only_the_reminders_that_apply_to_the_new_status() -> None:
    rules = RuleSet(
        45,
        (
            ReminderRule("first-notice", "deadline", -30, time(9), "first-notice"),
            ReminderRule(
                "cancel-check", "deadline", -3, time(9), "cancel-check", frozenset({"cancellation_requested"})
            ),
        ),
    )

    pending = plan(rules=rules)
    cancelling = plan(renewal_data=renewal(status="cancellation_requested"), rules=rules)

    assert [p.reminder_id for p in pending.planned] == ["first-notice"]
    assert [p.reminder_id for p in cancelling.planned] == ["cancel-check"]
    assert cancelling.inactive_reason is None


def test_a_renewal_back_to_pending_after_a_pause_catches_up_only_the_latest() -> None:
    now = utc(2025, 4, 28)
    assert plan(renewal_data=renewal(status="confirmed"), now=now).planned == ()

    result = plan(now=now)

    assert planned(result) == [("second-notice", now, True), ("final-notice", utc(2025, 4, 30, 9), False)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"now": datetime(2025, 4, 1, 9)}, "timezone-aware"),
        ({"client": ClientData(client_id="c-2", domain="b.com", locale="en", contacts=Contacts())}, "not the client"),
        ({"override": OwnerData(client_id="c-2", owner="partner")}, "owner override"),
    ],
)
def test_mismatched_or_naive_inputs_are_rejected_up_front(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan(**options)


def test_now_in_any_time_zone_plans_the_same_as_in_utc() -> None:
    now = utc(2025, 4, 26, 15)

    assert plan(now=now.astimezone(ZoneInfo("Asia/Kolkata"))) == plan(now=now)
    assert plan(now=now.astimezone(ZoneInfo("Asia/Kolkata"))).planned[0].due_at.tzinfo is UTC
