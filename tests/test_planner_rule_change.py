"""A rule edit never mails at once: reminders it adds or moves into the past are skipped (pure planner)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_planner import DEFAULT, client, partner, planned, renewal, skipped, utc
from test_planner_properties import make_renewal, rule_sets

from worker.domain.planner import RuleChange, plan_renewal, reminder_due_at
from worker.domain.rules import ReminderRule, RuleSet

# Deadline 2025-05-01: first-notice 04-01 09:00, second-notice 04-24, final-notice 04-30 (UTC).
KNOWN_EARLY = utc(2025, 1, 1)
DAY_29 = ReminderRule("day-29", "deadline", -29, time(9), "first-notice")  # due 04-02 09:00
WITH_DAY_29 = RuleSet(45, (*DEFAULT.reminders, DAY_29))
SECOND_EARLIER = RuleSet(
    45,
    (
        DEFAULT.reminders[0],
        ReminderRule("second-notice", "deadline", -25, time(9), "second-notice"),
        DEFAULT.reminders[2],
    ),
)  # second-notice moved from 04-24 to 04-06
SECOND_LATER_BY_A_DAY = RuleSet(
    45,
    (
        DEFAULT.reminders[0],
        ReminderRule("second-notice", "deadline", -6, time(9), "second-notice"),
        DEFAULT.reminders[2],
    ),
)


def plan_after_edit(rules, *, now, since, previous=DEFAULT, known=KNOWN_EARLY, final=(), last_sent_at=None):
    return plan_renewal(
        renewal(),
        removed=False,
        services_ended=False,
        client=client(),
        partner=partner(),
        override=None,
        rules=rules,
        now=now,
        final=final,
        rule_change=RuleChange(previous, since) if since is not None else None,
        known_since=known,
        last_sent_at=last_sent_at,
    )


@pytest.mark.parametrize(
    ("case", "options", "expected_planned", "expected_skipped"),
    [
        (
            "a reminder added after the first notice went out, its time passed: skipped, not sent",
            dict(rules=WITH_DAY_29, now=utc(2025, 4, 3, 10), since=utc(2025, 4, 3, 10), final=("first-notice",),
                 last_sent_at=utc(2025, 4, 1, 9)),
            [("second-notice", utc(2025, 4, 24, 9), False), ("final-notice", utc(2025, 4, 30, 9), False)],
            [("day-29", "rule_change")],
        ),
        (
            "a reminder moved from the future into the past: skipped, the next one stays",
            dict(rules=SECOND_EARLIER, now=utc(2025, 4, 10), since=utc(2025, 4, 10), final=("first-notice",),
                 last_sent_at=utc(2025, 4, 1, 9)),
            [("final-notice", utc(2025, 4, 30, 9), False)],
            [("second-notice", "rule_change")],
        ),
        (
            "the same edit with nothing sent yet: the added reminder does not displace the first notice's catch-up",
            dict(rules=WITH_DAY_29, now=utc(2025, 4, 3, 10), since=utc(2025, 4, 3, 10)),
            [("first-notice", utc(2025, 4, 3, 10), True), ("second-notice", utc(2025, 4, 24, 9), False),
             ("final-notice", utc(2025, 4, 30, 9), False)],
            [("day-29", "rule_change")],
        ),
        (
            "a renewal that arrived after the added reminder's time is caught up as before (latest missed)",
            dict(rules=WITH_DAY_29, now=utc(2025, 4, 3, 10), since=utc(2025, 4, 3, 10), known=utc(2025, 4, 3, 9)),
            [("day-29", utc(2025, 4, 3, 10), True), ("second-notice", utc(2025, 4, 24, 9), False),
             ("final-notice", utc(2025, 4, 30, 9), False)],
            [("first-notice", "missed")],
        ),
        (
            "a reminder the edit left alone, due in a backlog when the edit came, still goes",
            dict(rules=SECOND_LATER_BY_A_DAY, now=utc(2025, 4, 1, 9, 0, 30), since=utc(2025, 4, 1, 9, 0, 10)),
            [("first-notice", utc(2025, 4, 1, 9, 0, 30), True), ("second-notice", utc(2025, 4, 25, 9), False),
             ("final-notice", utc(2025, 4, 30, 9), False)],
            [],
        ),
        (
            "a reminder added before its time comes is sent when it comes",
            dict(rules=WITH_DAY_29, now=utc(2025, 4, 2, 9), since=utc(2025, 3, 1), final=("first-notice",),
                 last_sent_at=utc(2025, 4, 1, 9)),
            [("day-29", utc(2025, 4, 2, 9), False), ("second-notice", utc(2025, 4, 24, 9), False),
             ("final-notice", utc(2025, 4, 30, 9), False)],
            [],
        ),
        (
            "nothing due before a reminder already sent goes out, even for a renewal that came late",
            dict(rules=WITH_DAY_29, now=utc(2025, 4, 3, 11), since=utc(2025, 4, 3, 10, 30), known=utc(2025, 4, 3, 9),
                 final=("first-notice",), last_sent_at=utc(2025, 4, 3, 10)),
            [("second-notice", utc(2025, 4, 24, 9), False), ("final-notice", utc(2025, 4, 30, 9), False)],
            [("day-29", "missed")],
        ),
        (
            "once the deadline day is over, an added reminder is skipped as late as every other",
            dict(rules=WITH_DAY_29, now=utc(2025, 5, 2), since=utc(2025, 5, 2)),
            [],
            [("first-notice", "deadline_passed"), ("second-notice", "deadline_passed"),
             ("final-notice", "deadline_passed"), ("day-29", "deadline_passed")],
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)  # fmt: skip
def test_a_rule_edit_never_mails_what_it_added_or_moved_into_the_past(
    case, options, expected_planned, expected_skipped
):
    result = plan_after_edit(**options)
    assert planned(result) == expected_planned, case
    assert sorted(skipped(result)) == sorted(expected_skipped), case


@settings(max_examples=150, deadline=None)
@given(
    before=rule_sets(),
    after=rule_sets(),
    known=st.datetimes(datetime(2024, 1, 1), datetime(2026, 12, 31), timezones=st.just(UTC)),
    start_after_known=st.integers(0, 120),
    edit_after_known=st.integers(0, 60 * 24 * 60),
    now_after_edit=st.integers(0, 10 * 24 * 60),
    sent_ago=st.one_of(st.none(), st.integers(0, 20 * 24 * 60)),
    tz=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Pacific/Chatham"]),
)
def test_after_any_edit_nothing_is_caught_up_that_the_edit_put_in_the_past_or_that_a_sent_one_follows(
    before: RuleSet,
    after: RuleSet,
    known: datetime,
    start_after_known: int,
    edit_after_known: int,
    now_after_edit: int,
    sent_ago: int | None,
    tz: str,
) -> None:
    # Start dates near the edit, so that reminders fall due around it.
    start = known.date() + timedelta(days=start_after_known)
    since = known + timedelta(minutes=edit_after_known)
    now = since + timedelta(minutes=now_after_edit)
    last_sent_at = None if sent_ago is None else now - timedelta(minutes=sent_ago)
    result = plan_renewal(
        make_renewal(start, "pending"),
        removed=False,
        services_ended=False,
        client=client(tz),
        partner=partner(tz),
        override=None,
        rules=after,
        now=now,
        rule_change=RuleChange(before, since),
        known_since=known,
        last_sent_at=last_sent_at,
    )
    zone = ZoneInfo(result.timezone)
    due_after = {rule.id: reminder_due_at(rule, start, after, zone) for rule in after.reminders}
    due_before = {rule.id: reminder_due_at(rule, start, before, zone) for rule in before.reminders}
    for reminder in result.planned:
        due = due_after[reminder.reminder_id]
        if due <= now:  # sent at once: it was there before the edit at the same time, or came due after it
            assert due >= since or due < known or due_before.get(reminder.reminder_id) == due
        assert last_sent_at is None or due >= last_sent_at
    pending_ids = {r.id for r in after.reminders if "pending" in r.statuses}
    assert sorted([p.reminder_id for p in result.planned] + [s.reminder_id for s in result.skipped]) == sorted(
        pending_ids
    )
    assert {s.reason for s in result.skipped} <= {"missed", "deadline_passed", "rule_change"}
    assert sum(1 for p in result.planned if p.due_at <= now) <= 1  # the latest missed only
