"""Steering from the `renewals` command on a real Redis: suppressions, dead letters, retry, cancel, history."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from factories import client_updated, partner_updated, renewal_updated

from worker.config.settings import load_settings
from worker.domain.events import parse_event
from worker.service.clock import VirtualClock
from worker.service.processes import sync_rules
from worker.service.runtime import Runtime, build_runtime
from worker.state.history import History, HistoryEntry
from worker.state.ledger import Outcome

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def cli(redis_url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "REDIS_URL": redis_url, "KEY_PREFIX": "st", "USER": "tester", **(env or {})},
        cwd=ROOT,
    )


@pytest.fixture
def rt(redis_url: str) -> Iterator[Runtime]:
    runtime = build_runtime(load_settings(redis_url=redis_url, key_prefix="st"), clock=VirtualClock(NOW))
    for raw in (partner_updated(), client_updated(), renewal_updated(start_date="2027-03-15")):
        event = parse_event(raw)
        runtime.store.apply(event)
        runtime.planning.replan_for_event(event, runtime.rules(), NOW)
    yield runtime
    runtime.close()


def steering_entries(rt: Runtime) -> list[tuple[str, str, str]]:
    return [(e.outcome, e.by, e.reason) for e in History(rt.redis, rt.keys).entries() if e.kind == "steering"]


def test_suppressions_add_list_remove_say_when_and_why_and_are_recorded_with_who(rt, redis_url):
    added = cli(redis_url, "suppressions", "add", "Jane@Acme.com", "--reason", "asked by phone", "--by", "kim")
    assert added.returncode == 0, added.stderr
    assert rt.ledger.is_suppressed(["jane@acme.com"]) == [True]
    listed = cli(redis_url, "suppressions", "list")
    assert "jane@acme.com  since " in listed.stdout and "asked by phone" in listed.stdout and "by kim" in listed.stdout
    as_json = json.loads(cli(redis_url, "suppressions", "list", "--json").stdout)
    assert as_json["address"] == "jane@acme.com" and as_json["reason"] == "asked by phone"
    removed = cli(redis_url, "suppressions", "remove", "jane@acme.com")
    assert removed.returncode == 0 and "receives later reminders again" in removed.stdout
    assert rt.ledger.is_suppressed(["jane@acme.com"]) == [False]
    assert cli(redis_url, "suppressions", "remove", "jane@acme.com").returncode == 1
    assert steering_entries(rt) == [
        ("suppressions remove", "tester", "jane@acme.com (was: asked by phone)"),
        ("suppressions add", "kim", "jane@acme.com: asked by phone"),
    ]


def test_dead_letters_are_newest_first_by_time_with_ids_and_limit_must_be_positive(rt, redis_url):
    rt.store.add_dead_letter('{"n": 1}', "invalid_event", [("type", "x")], now=datetime(2026, 12, 2, tzinfo=UTC))
    # A worker with a slower clock pushes after the newer one: the list order alone is wrong.
    rt.store.add_dead_letter('{"n": 0}', "invalid_event", [("type", "x")], now=datetime(2026, 12, 1, tzinfo=UTC))
    rt.store.add_dead_letter('{"n": 2}', "invalid_event", [("type", "x")], now=datetime(2026, 12, 3, tzinfo=UTC))
    rows = [json.loads(line) for line in cli(redis_url, "dead-letters", "--json").stdout.splitlines()]
    assert [r["raw"] for r in rows] == ['{"n": 2}', '{"n": 1}', '{"n": 0}']
    assert all(len(r["id"]) == 12 for r in rows)
    one = cli(redis_url, "dead-letters", "--limit", "1")
    assert one.stdout.startswith(rows[0]["id"]) and '{"n": 1}' not in one.stdout
    for bad in ("0", "-1"):
        proc = cli(redis_url, "dead-letters", "--limit", bad)
        assert proc.returncode == 2 and "must be at least 1" in proc.stderr


def test_dead_letters_replay_dry_run_changes_nothing_and_replay_enqueues_the_fixed_ones(rt, redis_url):
    good = json.dumps(partner_updated(partner_id="p9", at="2026-11-30T00:00:00Z"))
    rt.store.add_dead_letter(good, "processing_failed", [("", "Redis away")], now=NOW)
    rt.store.add_dead_letter('{"still": "bad"}', "invalid_event", [("type", "x")], now=NOW)
    ids = {
        json.loads(line)["raw"]: json.loads(line)["id"]
        for line in cli(redis_url, "dead-letters", "--json").stdout.splitlines()
    }
    dry = cli(redis_url, "dead-letters", "replay", "--all", "--dry-run")
    assert "would be enqueued" in dry.stdout and "still invalid" in dry.stdout
    assert len(rt.store.dead_letters()) == 2 and rt.broker.do_qsize("events") == 0
    proc = cli(redis_url, "dead-letters", "replay", ids[good], "--by", "kim")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{ids[good]}: valid (partner.updated" in proc.stdout
    assert [d.raw for d in rt.store.dead_letters()] == ['{"still": "bad"}']
    assert rt.broker.do_qsize("events") == 1
    assert steering_entries(rt)[0][:2] == ("dead-letters replay", "kim")
    unknown = cli(redis_url, "dead-letters", "replay", "nope")
    assert unknown.returncode == 1 and "nope: no such dead letter" in unknown.stderr


def test_replay_enqueues_a_kept_entry_whose_actor_is_known_now_and_keeps_entries_that_are_no_message(rt, redis_url):
    event = json.dumps(partner_updated(partner_id="p8", at="2026-11-30T00:00:00Z"))
    entry = {"queue_name": "events", "actor_name": "ingest_event", "args": [event], "kwargs": {}, "options": {}}
    future = {**entry, "actor_name": "ingest_from_the_future"}
    for raw, reason in (
        (json.dumps(entry), "unknown_actor"),  # kept by a worker deployed before the actor was
        (json.dumps(future), "unknown_actor"),
        ("\\xff not json", "undecodable_message"),
    ):
        rt.store.add_dead_letter(raw, reason, [("", "as a worker keeps it")], now=NOW)
    dry = cli(redis_url, "dead-letters", "replay", "--all", "--dry-run")
    assert dry.returncode == 1  # as the replay itself: not everything can go
    assert "ingest_event is known now, would be enqueued on events" in dry.stdout
    assert "still no actor 'ingest_from_the_future' in this version, kept" in dry.stdout
    assert "cannot be run (undecodable_message); nothing to replay, purge it, kept" in dry.stdout
    assert rt.broker.do_qsize("events") == 0
    proc = cli(redis_url, "dead-letters", "replay", "--all")
    assert proc.returncode == 1 and rt.broker.do_qsize("events") == 1
    assert sorted(d.reason for d in rt.store.dead_letters()) == ["undecodable_message", "unknown_actor"]


def test_dead_letters_purge_before_a_date_removes_only_older_ones(rt, redis_url):
    rt.store.add_dead_letter('{"old": 1}', "invalid_event", [], now=datetime(2026, 10, 1, tzinfo=UTC))
    rt.store.add_dead_letter('{"new": 1}', "invalid_event", [], now=datetime(2026, 12, 1, tzinfo=UTC))
    assert "1 dead letter(s)" in cli(redis_url, "dead-letters", "purge", "--before", "2026-11-01", "--dry-run").stdout
    assert len(rt.store.dead_letters()) == 2
    proc = cli(redis_url, "dead-letters", "purge", "--before", "2026-11-01")
    assert "removed 1" in proc.stdout
    assert [d.raw for d in rt.store.dead_letters()] == ['{"new": 1}']
    assert steering_entries(rt)[0][0] == "dead-letters purge"


def test_retry_clears_only_a_failed_outcome_and_marks_the_renewal_for_planning(rt, redis_url):
    rt.ledger.finish("p1", "r1", "first-notice", Outcome("failed", NOW, reason="refused", reply="550 no"))
    rt.redis.delete(rt.keys.dirty())
    proc = cli(redis_url, "retry", "p1", "r1", "first-notice")
    assert proc.returncode == 0, proc.stderr
    assert rt.ledger.outcome("p1", "r1", "first-notice") is None
    assert rt.redis.zcard(rt.keys.dirty()) == 1
    assert steering_entries(rt)[0][0] == "retry" and "550 no" in steering_entries(rt)[0][2]
    rt.ledger.finish("p1", "r1", "first-notice", Outcome("sent", NOW, message_id="<m@x>"))
    again = cli(redis_url, "retry", "p1", "r1", "first-notice")
    assert again.returncode == 1 and "recorded sent, not failed" in again.stderr
    assert rt.ledger.outcome("p1", "r1", "first-notice").kind == "sent"


def test_cancel_records_a_planned_reminder_skipped_and_takes_it_out_of_the_due_index(rt, redis_url):
    assert rt.due_index.size() == 1
    typo = cli(redis_url, "cancel", "p1", "r1", "first-notise", "--reason", "client asked")
    assert typo.returncode == 1 and "no reminder 'first-notise' in the rules in force" in typo.stderr
    assert rt.ledger.outcomes("p1", "r1") == {} and rt.due_index.size() == 1
    proc = cli(redis_url, "cancel", "p1", "r1", "first-notice", "--reason", "client asked", "--by", "kim")
    assert proc.returncode == 0, proc.stderr
    cancelled = rt.ledger.outcome("p1", "r1", "first-notice")
    assert (cancelled.kind, cancelled.reason) == ("skipped", "cancelled by an operator: client asked")
    assert rt.due_index.size() == 0  # the renewal is marked: its next reminder is indexed by the next tick
    assert steering_entries(rt)[0] == ("cancel", "kim", "client asked")
    again = cli(redis_url, "cancel", "p1", "r1", "first-notice", "--reason", "twice")
    assert again.returncode == 1 and "already final (skipped)" in again.stderr
    plan = cli(redis_url, "plan", "p1", "r1")
    assert "skipped (cancelled by an operator: client asked)" in plan.stdout and "by kim" in plan.stdout


def test_history_command_filters_and_writes_text_json_and_csv(rt, redis_url):
    sent = Outcome("sent", NOW, message_id="<m@x>", to=("jane@acme.com",), reply="250 OK")
    entry = HistoryEntry(
        "outcome",
        NOW,
        "sent",
        partner="p1",
        client="c1",
        renewal="r1",
        reminder="first-notice",
        to=sent.to,
        message_id="<m@x>",
        reply="250 OK",
        attempt=1,
    )
    rt.ledger.finish_many([(("p1", "r1", "first-notice"), sent, "", True)], history=[entry])
    cli(redis_url, "cancel", "p1", "r1", "second-notice", "--reason", "no longer needed")
    cli(redis_url, "suppressions", "add", "x@acme.com", "--reason", "bounces")
    text = cli(redis_url, "history", "--renewal", "r1")
    assert text.returncode == 0
    assert text.stdout.splitlines()[0].split()[2:4] == ["cancel", "p1/r1/second-notice"]
    rows = [json.loads(line) for line in cli(redis_url, "history", "--json").stdout.splitlines()]
    assert [r["outcome"] for r in rows] == ["suppressions add", "cancel", "sent"]
    assert rows[2]["to"] == ["jane@acme.com"] and rows[2]["message_id"] == "<m@x>" and rows[2]["client"] == "c1"
    assert cli(redis_url, "history", "--limit", "1", "--json").stdout.count("\n") == 1
    table = list(csv.DictReader(io.StringIO(cli(redis_url, "history", "--csv", "--outcome", "cancel").stdout)))
    assert [(r["outcome"], r["reminder"], r["by"]) for r in table] == [("cancel", "second-notice", "tester")]
    assert cli(redis_url, "history", "--since", "2999-01-01").stdout == ""


def test_views_use_the_rules_in_force_in_redis_and_say_when_the_local_file_differs(rt, redis_url, tmp_path):
    sync_rules(rt)  # what the scheduler does each tick
    local = tmp_path / "rules.yaml"
    local.write_text(
        "deadline_days_before_start: 45\nreminders:\n  - id: only-one\n    anchor: deadline\n    offset_days: -3\n"
        '    send_time: "09:00"\n    template: final-notice\n',
        encoding="utf-8",
    )
    proc = cli(redis_url, "plan", "p1", "r1", env={"RULES_PATH": str(local)})
    assert proc.returncode == 0, proc.stderr
    assert "first-notice: due" in proc.stdout and "only-one" not in proc.stdout
    assert "showing the rules in force" in proc.stderr and f"the local file {local} differs" in proc.stderr
    same = cli(redis_url, "plan", "p1", "r1")
    assert "showing the rules in force" not in same.stderr


def test_steering_without_redis_url_is_refused():
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "cancel", "p1", "r1", "first-notice", "--reason", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "REDIS_URL is not set" in proc.stderr


def test_show_client_lists_its_renewals_with_outcomes_and_the_next_reminder(rt, redis_url):
    rt.ledger.finish("p1", "r1", "first-notice", Outcome("sent", NOW, message_id="<m@x>"), plan_next=False)
    proc = cli(redis_url, "show", "client", "p1", "c1")
    assert proc.returncode == 0, proc.stderr
    assert "renewals (1; `renewals plan p1 RENEWAL` for each reminder):" in proc.stdout
    assert "  r1: start 2027-03-15, status pending; first-notice sent; next: second-notice at 2027-01-22 14:00 UTC" in (
        proc.stdout
    )


def test_plan_lists_reminders_in_due_order_and_keeps_outcomes_of_removed_rules(rt, redis_url):
    rt.ledger.finish("p1", "r1", "old-rule", Outcome("sent", NOW, message_id="<old@x>"), plan_next=False)
    proc = cli(redis_url, "plan", "p1", "r1")
    assert proc.returncode == 0, proc.stderr
    rows = [line.strip().split(" ")[0].rstrip(":") for line in proc.stdout.splitlines() if line.startswith("  ")]
    reminders = [r for r in rows if r in ("old-rule", "first-notice", "second-notice", "final-notice")]
    assert reminders == ["old-rule", "first-notice", "second-notice", "final-notice"]
    assert "old-rule (no longer in the rules): sent at 2026-12-01 00:00 UTC, <old@x>" in proc.stdout


def test_history_outcome_takes_only_known_kinds_and_knows_every_steering_command(redis_url):
    import re
    from pathlib import Path

    from worker.ops.history import HISTORY_OUTCOMES

    steering = Path(__file__).resolve().parent.parent / "worker" / "ops" / "steering.py"
    recorded = set(re.findall(r'_record\(rt, "([^"]+)"', steering.read_text()))
    assert recorded and recorded <= set(HISTORY_OUTCOMES)
    typo = cli(redis_url, "history", "--outcome", "sendt")
    assert typo.returncode == 2 and "invalid choice: 'sendt'" in typo.stderr
