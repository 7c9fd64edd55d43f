"""The `renewals` command as ops use it: exit codes and what it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from factories import client_updated, owner_changed, partner_updated, renewal_updated, services_ended

from worker.config.settings import load_settings
from worker.domain.events import parse_event
from worker.ops.cli import main
from worker.service.clock import VirtualClock
from worker.service.runtime import build_runtime
from worker.state.ledger import Outcome

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["demo"],
        ["run"],
        ["scheduler"],
        ["simulate"],
        ["enqueue"],
        ["dead-letters"],
        ["show", "client"],
        ["plan"],
        ["rules", "check"],
        ["rules", "diff"],
        ["preview"],
        ["schema"],
    ],
)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: renewals" in capsys.readouterr().out


def test_rules_check_passes_the_shipped_rules(capsys):
    assert main(["rules", "check"]) == 0
    assert "ok" in capsys.readouterr().out


def test_rules_check_names_file_line_and_field_of_each_problem(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "deadline_days_before_start: 45\n"
        "reminders:\n"
        "  - id: one\n"
        "    anchor: deadline\n"
        "    offset_days: -3\n"
        '    send_time: "25:00"\n'
        "    template: no-such-template\n"
        "  - id: one\n"
        "    anchor: deadline\n"
        "    offset_days: 2\n"
        '    send_time: "09:00"\n'
        "    template: final-notice\n"
        "    colour: red\n",
        encoding="utf-8",
    )
    assert main(["rules", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:6: reminders[0].send_time" in out
    assert f"{bad}:7: reminders[0].template" in out
    assert f"{bad}:8: reminders[1].id" in out
    assert f"{bad}:10: reminders[1].offset_days" in out
    assert f"{bad}:13: reminders[1].colour" in out


def test_a_bad_setting_stops_the_command_naming_the_variable():
    proc = run_cli("dead-letters", env={"SMTP_PORT": "seventy"})
    assert proc.returncode == 2
    assert "SMTP_PORT" in proc.stderr


def test_schema_prints_the_committed_contract():
    proc = run_cli("schema")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == json.loads((ROOT / "docs" / "event-schema.json").read_text(encoding="utf-8"))


def test_demo_runs_on_the_embedded_default_and_writes_emails(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SMTP_HOST")}
    proc = subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "demo", "--outbox", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "first-notice: sent" in proc.stdout
    assert "services_ended" in proc.stdout
    assert "totals: sent" in proc.stdout
    assert list(tmp_path.glob("*.eml"))


@pytest.fixture
def stored(redis_url):
    """A real Redis holding one partner, client and renewal, as the CLI (REDIS_URL) will see them."""
    clock = VirtualClock(datetime(2026, 12, 1, tzinfo=UTC))
    rt = build_runtime(load_settings(redis_url=redis_url, key_prefix="cli"), clock=clock)
    for raw in (
        partner_updated(),
        client_updated(
            contacts={
                "primary": {"name": "Jane", "email": "jane@acme.com"},
                "billing": {"name": "Jane B", "email": "JANE@acme.com"},
            }
        ),
        renewal_updated(start_date="2027-03-15"),
    ):
        event = parse_event(raw)
        rt.store.apply(event)
        rt.planning.replan_for_event(event, rt.rules(), clock.now())
    rt.ledger.finish(
        "p1", "r1", "first-notice", Outcome("sent", clock.now(), message_id="<m@x>", to=("jane@acme.com",))
    )
    rt.store.add_dead_letter('{"broken": true}', "invalid_event", [("type", "field required")], now=clock.now())
    yield rt
    rt.close()


@pytest.mark.integration
def test_show_client_prints_owner_recipients_and_why(stored, redis_url):
    proc = run_cli("show", "client", "p1", "c1", env={"REDIS_URL": redis_url, "KEY_PREFIX": "cli"})
    assert proc.returncode == 0, proc.stderr
    assert "effective owner: hubspot (partner default)" in proc.stdout
    assert "To: Jane <jane@acme.com>  [primary, billing]" in proc.stdout
    assert "Cc: Anna Reed <anna@northwind.agency>  [partner_user (partner default)]" in proc.stdout


@pytest.mark.integration
def test_show_client_explains_partner_ownership_and_ended_services(stored, redis_url):
    for raw in (owner_changed(at="2026-12-02T00:00:00Z"), services_ended(at="2026-12-03T00:00:00Z")):
        stored.store.apply(parse_event(raw))
    proc = run_cli("show", "client", "p1", "c1", env={"REDIS_URL": redis_url, "KEY_PREFIX": "cli"})
    assert "effective owner: partner (client override)" in proc.stdout
    assert "SERVICES ENDED" in proc.stdout
    assert "reminders: none (services ended)" in proc.stdout


@pytest.mark.integration
def test_plan_prints_each_reminder_with_utc_and_local_time_and_state(stored, redis_url):
    proc = run_cli("plan", "p1", "r1", env={"REDIS_URL": redis_url, "KEY_PREFIX": "cli"})
    assert proc.returncode == 0, proc.stderr
    assert "first-notice: due 2026-12-30 14:00 UTC / 2026-12-30 09:00 EST (America/New_York): sent" in proc.stdout
    assert "second-notice: due 2027-01-22 14:00 UTC / 2027-01-22 09:00 EST (America/New_York): planned" in proc.stdout
    assert "To now: Jane <jane@acme.com>" in proc.stdout


@pytest.mark.integration
def test_dead_letters_lists_reason_field_and_raw_body(stored, redis_url):
    proc = run_cli("dead-letters", env={"REDIS_URL": redis_url, "KEY_PREFIX": "cli"})
    assert "invalid_event" in proc.stdout
    assert "type: field required" in proc.stdout
    assert '{"broken": true}' in proc.stdout


@pytest.mark.integration
def test_an_unknown_renewal_or_client_is_said_plainly_with_exit_1(stored, redis_url):
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": "cli"}
    plan = run_cli("plan", "p1", "r-nope", env=env)
    assert plan.returncode == 1 and "no events received for renewal r-nope of partner p1" in plan.stderr
    show = run_cli("show", "client", "p1", "c-nope", env=env)
    assert show.returncode == 1 and "no events received for client c-nope" in show.stderr


@pytest.mark.parametrize(
    ("env", "code", "message"),
    [
        ({"REDIS_URL": "localhost:6379"}, 2, "invalid setting REDIS_URL: must start with redis://"),
        ({"REDIS_URL": "redis://127.0.0.1:1/0"}, 1, "error: cannot reach Redis (REDIS_URL)"),
    ],
)
def test_redis_problems_are_one_clear_line_not_a_traceback(env, code, message):
    proc = run_cli("dead-letters", env=env)
    assert proc.returncode == code
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_missing_events_file_is_one_clear_line(tmp_path):
    proc = run_cli("simulate", "--events", str(tmp_path / "nope.jsonl"), "--until", "2027-01-01", "--outbox", "x")
    assert proc.returncode == 1
    assert "No such file or directory" in proc.stderr and "Traceback" not in proc.stderr


def test_inspecting_without_redis_url_warns_that_the_store_is_empty():
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "dead-letters"], capture_output=True, text=True, timeout=60, env=env
    )
    assert "REDIS_URL is not set" in proc.stderr
