"""The digest's schedule: the rule file's `digest:` block as `renewals rules check` sees it, and its periods."""

from __future__ import annotations

from datetime import UTC, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from worker.config.rulefile import RulesWatcher
from worker.domain.digest_periods import current_period, due_period, next_due_at
from worker.domain.digest_schedule import DIGEST_OFF, DigestRule
from worker.domain.rules import parse_rules

ROOT = Path(__file__).resolve().parent.parent
REMINDERS = """\
reminders:
  - id: first-notice
    anchor: deadline
    offset_days: -30
    send_time: "09:00"
    template: first-notice
"""
BERLIN = ZoneInfo("Europe/Berlin")
WEEKLY = DigestRule("weekly", weekday=0, send_time=time(8, 0))


def parse(digest_block: str):
    return parse_rules((REMINDERS + digest_block).encode(), "rules.yaml")


def test_a_file_without_a_digest_block_sends_no_digest():
    problems, rules = parse("")
    assert problems == []
    assert rules is not None and rules.digest == DIGEST_OFF


def test_a_full_digest_block_is_read():
    problems, rules = parse(
        'digest:\n  every: weekly\n  weekday: Thursday\n  send_time: "07:30"\n'
        "  horizon_days: 30\n  send_when_empty: true\n"
    )
    assert problems == []
    assert rules is not None
    assert rules.digest == DigestRule("weekly", weekday=3, send_time=time(7, 30), horizon_days=30, send_when_empty=True)


def test_the_shipped_rules_document_the_digest_and_leave_it_off_while_the_demo_turns_it_on():
    default = parse_rules((ROOT / "rules/default.yaml").read_bytes(), "default.yaml")[1]
    demo = parse_rules((ROOT / "examples/rules.yaml").read_bytes(), "rules.yaml")[1]
    assert default is not None and demo is not None
    assert default.digest.every == "off"
    assert demo.digest.every == "weekly"
    # The demo's reminders are the shipped ones: only the digest differs.
    assert demo.fingerprint == default.fingerprint


@pytest.mark.parametrize(
    ("block", "line", "field", "message"),
    [
        ("digest:\n  every: monthly\n", 8, "digest.every", "'monthly' is not one of: weekly, daily, off"),
        ("digest:\n  weekday: monday\n", 8, "digest.every", "missing"),
        ("digest:\n  every: weekly\n  weekday: funday\n", 9, "digest.weekday", "'funday' is not a day"),
        ("digest:\n  every: daily\n  weekday: monday\n", 9, "digest.weekday", "only used with every: weekly"),
        ('digest:\n  every: daily\n  send_time: "25:00"\n', 9, "digest.send_time", "is not a time of day"),
        ("digest:\n  every: daily\n  horizon_days: 0\n", 9, "digest.horizon_days", "must be from 1 to 366"),
        ('digest:\n  every: daily\n  horizon_days: "9"\n', 9, "digest.horizon_days", "whole number"),
        ("digest:\n  every: daily\n  send_when_empty: maybe\n", 9, "digest.send_when_empty", "not true or false"),
        ("digest:\n  every: daily\n  sent_time: 08:00\n", 9, "digest.sent_time", "unknown key"),
        ("digest: weekly\n", 7, "digest", "expected a mapping"),
    ],
)
def test_each_mistake_in_the_digest_block_is_named_with_line_and_field(block, line, field, message):
    problems, rules = parse(block)
    assert rules is None
    assert [(p.line, p.field) for p in problems] == [(line, field)], problems
    assert message in problems[0].message


def test_changing_only_the_digest_does_not_re_plan_reminders_but_takes_effect(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(REMINDERS + "digest:\n  every: off\n")
    watcher = RulesWatcher(path)
    before = watcher.rules
    path.write_text(REMINDERS + "digest:\n  every: daily\n")
    assert watcher.maybe_reload() is True
    assert watcher.rules.digest.every == "daily"
    assert watcher.rules.fingerprint == before.fingerprint


def test_a_weekly_period_is_the_iso_week_in_the_partners_time_zone():
    # Sunday 23:30 UTC is already Monday in Berlin: the new week's period.
    period = current_period(WEEKLY, BERLIN, datetime(2026, 12, 6, 23, 30, tzinfo=UTC))
    assert period is not None
    assert period.id == "digest/2026-W50"
    assert period.due_at == datetime(2026, 12, 7, 7, 0, tzinfo=UTC)  # Monday 08:00 in Berlin
    assert period.ends_at == datetime(2026, 12, 13, 23, 0, tzinfo=UTC)


def test_a_weekly_digest_is_due_from_its_time_to_the_end_of_its_week_only():
    assert due_period(WEEKLY, BERLIN, datetime(2026, 12, 7, 6, 59, tzinfo=UTC)) is None
    assert due_period(WEEKLY, BERLIN, datetime(2026, 12, 7, 7, 0, tzinfo=UTC)).id == "digest/2026-W50"
    # The worker was down on Monday: the same period's digest is still due on Saturday, once.
    assert due_period(WEEKLY, BERLIN, datetime(2026, 12, 12, 12, 0, tzinfo=UTC)).id == "digest/2026-W50"


def test_after_weeks_of_downtime_only_the_current_period_is_due():
    # Down from week 50 to a Wednesday of week 53: one digest, for week 53; the missed ones are not made up.
    moment = datetime(2026, 12, 30, 10, 0, tzinfo=UTC)
    assert due_period(WEEKLY, BERLIN, moment).id == "digest/2026-W53"
    # Down until the Sunday before: nothing is due until Monday's time.
    rule = DigestRule("weekly", weekday=2, send_time=time(8, 0))
    assert due_period(rule, BERLIN, datetime(2026, 12, 28, 10, 0, tzinfo=UTC)) is None


def test_a_daily_digest_has_a_period_per_local_day():
    rule = DigestRule("daily", send_time=time(7, 0))
    tokyo = ZoneInfo("Asia/Tokyo")
    period = current_period(rule, tokyo, datetime(2026, 12, 4, 20, 0, tzinfo=UTC))
    assert period is not None
    assert period.id == "digest/2026-12-05"
    assert period.due_at == datetime(2026, 12, 4, 22, 0, tzinfo=UTC)


def test_off_has_no_period_and_nothing_due():
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    assert current_period(DIGEST_OFF, BERLIN, now) is None
    assert next_due_at(DIGEST_OFF, BERLIN, now) is None


def test_next_due_is_this_periods_time_or_the_next_periods():
    assert next_due_at(WEEKLY, BERLIN, datetime(2026, 12, 7, 6, 0, tzinfo=UTC)) == datetime(
        2026, 12, 7, 7, 0, tzinfo=UTC
    )
    assert next_due_at(WEEKLY, BERLIN, datetime(2026, 12, 7, 7, 0, tzinfo=UTC)) == datetime(
        2026, 12, 14, 7, 0, tzinfo=UTC
    )


def test_send_time_follows_daylight_saving_time():
    rule = DigestRule("weekly", weekday=0, send_time=time(8, 0))
    summer = current_period(rule, BERLIN, datetime(2027, 4, 1, tzinfo=UTC))
    assert summer is not None and summer.due_at == datetime(2027, 3, 29, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every": "hourly"}, "every must be one of"),
        ({"weekday": 7}, "weekday must be from 0"),
        ({"horizon_days": 0}, "horizon_days must be from 1"),
        ({"send_time": time(8, 0, tzinfo=UTC)}, "must not carry a time zone"),
    ],
)
def test_a_digest_rule_built_in_code_is_held_to_the_file_check_limits(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DigestRule(**kwargs)
