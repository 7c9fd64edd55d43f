"""Long-running processes: rule edits picked up safely, and a worker that refuses invalid rules."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import fakeredis
import pytest
from factories import client_updated, partner_updated, renewal_updated

from worker.config.settings import load_settings
from worker.domain.events import parse_event
from worker.service.clock import VirtualClock
from worker.service.processes import replan_chunks, sync_rules
from worker.service.runtime import build_runtime
from worker.state.ledger import parse_due_member

ROOT = Path(__file__).resolve().parent.parent
RULE = (
    "deadline_days_before_start: 45\nreminders:\n"
    '  - {{id: {id}, anchor: deadline, offset_days: -{days}, send_time: "09:00", template: first-notice}}\n'
)


def planned_ids(rt) -> set[str]:
    return {parse_due_member(m)[2] for m in rt.redis.zrange(rt.keys.due(), 0, -1)}


@pytest.fixture
def runtime_with_rules(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULE.format(id="early", days=20), encoding="utf-8")
    settings = load_settings(redis_url=None, rules_path=rules, rules_reload_s=0.001)
    clock = VirtualClock(datetime(2026, 12, 1, tzinfo=UTC))
    rt = build_runtime(settings, clock=clock, redis_client=fakeredis.FakeRedis())
    for raw in (partner_updated(), client_updated(), renewal_updated(start_date="2027-03-15")):
        event = parse_event(raw)
        rt.store.apply(event)
        rt.planning.replan_for_event(event, rt.rules(), clock.now())
    return rt, rules


def test_a_valid_rule_edit_is_picked_up_and_every_renewal_re_planned(runtime_with_rules):
    rt, rules = runtime_with_rules
    assert sync_rules(rt)  # the first scheduler to start records the rules in force
    assert not sync_rules(rt)
    rules.write_text(RULE.format(id="late", days=3), encoding="utf-8")
    time.sleep(0.01)  # past RULES_RELOAD_S
    assert sync_rules(rt)
    assert planned_ids(rt) == {"early"}  # the re-plan is under way, in chunks between due claims
    while replan_chunks(rt):
        pass
    assert planned_ids(rt) == {"late"}


def test_an_invalid_rule_edit_is_logged_and_the_old_rules_stay(runtime_with_rules, caplog):
    rt, rules = runtime_with_rules
    sync_rules(rt)
    rules.write_text("reminders: [oops\n", encoding="utf-8")
    time.sleep(0.01)
    with caplog.at_level(logging.ERROR, logger="worker.domain.rules"):
        assert not sync_rules(rt)
    assert planned_ids(rt) == {"early"}
    assert any("keeping the rules in force" in r.getMessage() for r in caplog.records)


def test_the_worker_refuses_to_start_on_an_invalid_rule_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("deadline_days_before_start: -1\nreminders: []\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["RULES_PATH"] = str(bad)
    proc = subprocess.run(
        [sys.executable, "-c", "import worker.entrypoint"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode != 0
    assert "deadline_days_before_start" in proc.stderr
    run = subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "run"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert run.returncode == 2
    assert "deadline_days_before_start" in run.stderr
