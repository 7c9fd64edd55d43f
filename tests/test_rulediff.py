"""`renewals rules diff`: the planner run under both rule sets, per reminder added / moved / removed / at once."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
from factories import client_updated, partner_updated, renewal_updated

from worker.config.settings import load_settings
from worker.domain.events import parse_event
from worker.domain.planner import Plan, PlannedReminder
from worker.domain.rulediff import ReminderChange, RuleDiff, RuleDiffer, diff_plans, facts_of
from worker.domain.rules import ReminderRule, RuleSet
from worker.ops.cli import main
from worker.service.runtime import build_runtime
from worker.state.ledger import Outcome

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def at(day: int, hour: int = 9) -> datetime:
    return datetime(2026, 12, day, hour, tzinfo=UTC)


def plan(*reminders: tuple[str, datetime]) -> Plan:
    planned = tuple(PlannedReminder(rid, rid, due, due) for rid, due in reminders)
    return Plan("r1", date(2027, 1, 1), "UTC", planned)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ([("a", at(5))], [("a", at(5))], []),
        ([("a", at(5))], [("a", at(6))], [ReminderChange("a", "moved", at(5), at(6))]),
        ([], [("a", at(5))], [ReminderChange("a", "added", None, at(5))]),
        ([("a", at(5))], [], [ReminderChange("a", "removed", at(5), None)]),
        # Catch-ups at now: new ones go out the moment the rules are deployed...
        ([], [("a", NOW)], [ReminderChange("a", "immediate", None, NOW)]),
        ([("a", at(5))], [("a", NOW)], [ReminderChange("a", "immediate", at(5), NOW)]),
        # ...but one the rules in force already send now is no change.
        ([("a", NOW)], [("a", NOW)], []),
    ],
)
def test_diff_plans_names_each_kind_of_change(old, new, expected) -> None:
    assert diff_plans(plan(*old), plan(*new), now=NOW) == expected


def rules(*reminders: tuple[str, int]) -> RuleSet:
    return RuleSet(45, tuple(ReminderRule(rid, "deadline", days, time(9), "first-notice") for rid, days in reminders))


def renewal_inputs(start: str = "2027-03-15", tz: str = "UTC") -> dict[str, object]:
    renewal = parse_event(renewal_updated(start_date=start)).data
    client = parse_event(client_updated(timezone=tz)).data
    partner = parse_event(partner_updated()).data
    return {"renewal": renewal, "client": client, "partner": partner, "override": None}


def test_a_reminder_the_edit_puts_in_the_past_goes_out_at_once_only_for_a_renewal_that_changed_since() -> None:
    old = rules(("first", -30), ("final", -1))
    new = rules(("early", -60), ("first", -30), ("final", -1))
    # Deadline 2027-01-29: early was due 2026-11-30 09:00, first is due 2026-12-30.
    differ = RuleDiffer(old, new, now=NOW)
    inputs = renewal_inputs()

    known_before = facts_of(**inputs, removed=False, services_ended=False, known_since=at(1) - timedelta(days=30))
    assert differ.changes(known_before) == []  # skipped as a rule change: never sent
    changed_since = facts_of(**inputs, removed=False, services_ended=False, known_since=at(1, 10))
    assert [(c.reminder_id, c.kind) for c in differ.changes(changed_since)] == [("early", "immediate")]
    after_a_later_one = RuleDiffer(old, new, now=datetime(2027, 1, 2, tzinfo=UTC))
    sent_first = facts_of(
        **inputs,
        removed=False,
        services_ended=False,
        final={"first"},
        last_sent_at=datetime(2026, 12, 30, 9, tzinfo=UTC),
    )
    assert after_a_later_one.changes(sent_first) == []


def test_times_that_fall_between_the_same_due_times_share_one_plan() -> None:
    differ = RuleDiffer(rules(("first", -30)), rules(("early", -60), ("first", -30)), now=NOW)
    inputs = renewal_inputs()
    for hour in (10, 11, 12):
        differ.changes(facts_of(**inputs, removed=False, services_ended=False, known_since=at(1, hour)))

    assert len(differ._cache) == 1


def test_with_assumed_history_reminders_the_old_rules_would_have_sent_are_not_blamed() -> None:
    same = rules(("first", -30), ("final", -1))
    late = datetime(2027, 1, 5, tzinfo=UTC)  # first (2026-12-30) is long past
    inputs = renewal_inputs()

    assert (
        RuleDiffer(same, same, now=late, assume_history=True).changes(
            facts_of(**inputs, removed=False, services_ended=False)
        )
        == []
    )
    moved = RuleDiffer(same, rules(("first", -30), ("final", -2)), now=late, assume_history=True)
    assert [c.kind for c in moved.changes(facts_of(**inputs, removed=False, services_ended=False))] == ["moved"]


def test_removed_and_ended_renewals_change_nothing() -> None:
    differ = RuleDiffer(rules(("a", -30)), rules(("a", -20)), now=NOW)
    inputs = renewal_inputs()
    assert differ.changes(facts_of(**inputs, removed=True, services_ended=False)) == []
    assert differ.changes(facts_of(**inputs, removed=False, services_ended=True)) == []


def test_the_tally_counts_per_reminder_and_keeps_a_few_samples_of_each_kind() -> None:
    diff = RuleDiff(sample_size=2)
    for n in range(5):
        diff.add(
            "p1", f"r{n}", [ReminderChange("a", "moved", at(5), at(6)), ReminderChange("b", "immediate", None, NOW)]
        )
    diff.add("p1", "r-same", [])

    assert (diff.renewals, diff.changed_renewals) == (6, 5)
    assert diff.counts["a"]["moved"] == 5 and diff.counts["b"]["immediate"] == 5
    assert [rid for _, rid, _ in diff.samples["moved"]] == ["r0", "r1"]
    assert diff.to_dict()["totals"] == {"added": 0, "moved": 5, "removed": 0, "immediate": 5}


def write_rules(path: Path, reminders: list[tuple[str, int]]) -> Path:
    lines = ["deadline_days_before_start: 45", "reminders:"]
    for rid, days in reminders:
        lines += [
            f"  - id: {rid}",
            "    anchor: deadline",
            f"    offset_days: {days}",
            '    send_time: "09:00"',
            "    template: first-notice",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def events_file(path: Path) -> Path:
    raws = [
        partner_updated(at="2026-11-01T00:00:00Z"),
        client_updated(at="2026-11-01T00:00:00Z", timezone="UTC"),
        # r1 changed after its new early notice's time (2026-11-30 09:00): that one is caught up.
        renewal_updated(at="2026-12-01T10:00:00Z", start_date="2027-03-15"),
        renewal_updated(at="2026-11-01T00:00:00Z", renewal_id="r2", start_date="2027-04-15"),
    ]
    path.write_text("".join(json.dumps(raw) + "\n" for raw in raws))
    return path


def test_rules_diff_over_an_events_file_prints_the_table_and_exits_2_above_max_immediate(tmp_path, capsys) -> None:
    old = write_rules(tmp_path / "old.yaml", [("first", -30), ("final", -1)])
    new = write_rules(tmp_path / "new.yaml", [("early", -60), ("first", -30), ("final", -2)])
    events = events_file(tmp_path / "events.jsonl")
    args = ["rules", "diff", str(new), "--rules", str(old), "--events", str(events), "--at", "2026-12-01T12:00:00Z"]

    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 renewal(s) examined, 2 would change" in out
    # r1's deadline is 2027-01-29: early (2026-11-30) is past, so it goes at once; r2's is added.
    assert any(line.split() == ["early", "1", "0", "0", "1"] for line in out.splitlines()), out
    assert any(line.split() == ["final", "0", "2", "0", "0"] for line in out.splitlines()), out
    assert "p1/r1 early: - -> 2026-12-01 12:00 UTC" in out

    assert main([*args, "--max-immediate", "0", "--json"]) == 2
    result = json.loads(capsys.readouterr().out)
    assert result["totals"] == {"added": 1, "moved": 2, "removed": 0, "immediate": 1}
    assert result["samples"]["immediate"][0]["renewal_id"] == "r1"
    assert main([*args, "--max-immediate", "1"]) == 0


@pytest.mark.integration
def test_rules_diff_over_the_stored_renewals_reads_the_ledger(redis_url, tmp_path) -> None:
    today = datetime.now(UTC).date()
    rt = build_runtime(load_settings(redis_url=redis_url, key_prefix="diff"))
    start = today + timedelta(days=45 + 20)  # deadline in 20 days
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    for raw in (
        partner_updated(),
        client_updated(timezone="UTC"),
        # r1 changed yesterday, after the new reminder's time (5 days ago); r2 was known long before.
        renewal_updated(start_date=start.isoformat(), at=yesterday),
        renewal_updated(renewal_id="r2", start_date=start.isoformat()),
    ):
        rt.store.apply(parse_event(raw))
    # r1 already had its first notice (due 10 days ago under a -30 rule); r2 has nothing yet.
    rt.ledger.finish(
        "p1",
        "r1",
        "first",
        Outcome("sent", datetime.now(UTC) - timedelta(days=10), message_id="<m@x>", to=("jane@acme.com",)),
    )
    rt.close()
    old = write_rules(tmp_path / "old.yaml", [("first", -30), ("final", -1)])
    new = write_rules(tmp_path / "new.yaml", [("first", -30), ("second", -25), ("final", -1)])

    proc = subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "rules", "diff", str(new), "--rules", str(old), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"REDIS_URL": redis_url, "KEY_PREFIX": "diff", "PATH": ""},
        cwd=ROOT,
    )

    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["renewals"] == 2
    # "second" was due 5 days ago. A rule edit never sends what it puts in the past (skipped as
    # rule_change) unless the renewal's data changed after that time: r1 gets it at once, r2 never.
    # r2's missed first notice is caught up under both rules alike: no change.
    assert result["reminders"] == {"second": {"added": 0, "moved": 0, "removed": 0, "immediate": 1}}
    assert [s["renewal_id"] for s in result["samples"]["immediate"]] == ["r1"]
