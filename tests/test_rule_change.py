"""The record of the rules in force, and what each process makes of it (fakeredis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from test_planner import DEFAULT
from test_planner_rule_change import SECOND_LATER_BY_A_DAY, WITH_DAY_29

from worker.state.keys import Keys
from worker.state.rule_change import RulesRecord

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def test_the_first_rules_recorded_are_no_change_and_an_edit_keeps_the_rules_it_replaces(fake_redis):
    record = RulesRecord(fake_redis, Keys("t"))
    assert record.record(DEFAULT, T0)
    assert not record.record(DEFAULT, T0 + timedelta(hours=1))  # the same rules: nothing to record
    first = record.read()
    assert first is not None and first.previous is None and first.since == T0
    assert first.change_for(DEFAULT, T0) is None
    assert record.record(WITH_DAY_29, T0 + timedelta(days=1))
    edited = record.read()
    assert edited is not None and edited.current.fingerprint == WITH_DAY_29.fingerprint
    change = edited.change_for(WITH_DAY_29, T0 + timedelta(days=2))
    assert change is not None and change.previous.fingerprint == DEFAULT.fingerprint
    assert change.since == T0 + timedelta(days=1)


def test_a_process_behind_plans_as_before_the_edit_and_one_ahead_treats_its_rules_as_changed_now(fake_redis):
    record = RulesRecord(fake_redis, Keys("t"))
    record.record(DEFAULT, T0)
    record.record(WITH_DAY_29, T0 + timedelta(days=1))
    in_force = record.read()
    assert in_force is not None
    now = T0 + timedelta(days=2)
    assert in_force.change_for(DEFAULT, now) is None  # has yet to load the edit
    ahead = SECOND_LATER_BY_A_DAY
    change = in_force.change_for(ahead, now)
    assert change is not None and change.previous.fingerprint == WITH_DAY_29.fingerprint and change.since == now
