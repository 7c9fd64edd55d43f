"""`renewals requiring-action`, and digests in `renewals simulate` and `renewals demo`."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from factories import client_updated, owner_changed, partner_updated, person, renewal_updated
from test_cli import run_cli

from worker.config.settings import load_settings
from worker.domain.events import parse_event
from worker.ops.cli import main
from worker.ops.simulate import simulate
from worker.service.runtime import build_runtime

ROOT = Path(__file__).resolve().parent.parent


def test_requiring_action_has_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["requiring-action", "--help"])
    assert exc.value.code == 0
    assert "--format {table,csv,json}" in capsys.readouterr().out


@pytest.fixture
def stored(redis_url):
    """A partner with two clients on the real Redis, dated from today (the CLI runs on the real clock)."""
    rt = build_runtime(load_settings(redis_url=redis_url, key_prefix="dcli"))
    soon = date.today() + timedelta(days=10)
    later = date.today() + timedelta(days=20)
    for raw in (
        partner_updated(at="2026-01-01T00:00:00Z", timezone="UTC"),
        client_updated(at="2026-01-01T00:00:00Z", client_id="c1", domain="acme.com", name="Acme"),
        client_updated(at="2026-01-01T00:00:00Z", client_id="c2", domain="globex.com", name="Globex, Inc."),
        owner_changed(at="2026-01-01T00:00:00Z", client_id="c2", notify_user=person("Jonas", "jonas@northwind.agency")),
        renewal_updated(at="2026-01-01T00:00:00Z", renewal_id="r2", client_id="c2", start_date=_start(later)),
        renewal_updated(at="2026-01-01T00:00:00Z", renewal_id="r1", client_id="c1", start_date=_start(soon)),
    ):
        rt.store.apply(parse_event(raw))
    yield {"REDIS_URL": redis_url, "KEY_PREFIX": "dcli"}
    rt.close()


def _start(deadline: date) -> str:
    return (deadline + timedelta(days=45)).isoformat()


@pytest.mark.integration
def test_requiring_action_prints_a_table_sorted_by_deadline_with_totals(stored):
    proc = run_cli("requiring-action", "p1", env=stored)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == [
        "client_domain", "renewal_id", "owner", "deadline", "days_left", "currency", "current_mrr", "renewal_mrr",
        "mrr_change",
    ]  # fmt: skip
    assert lines[1].split()[:3] == ["acme.com", "r1", "hubspot"]
    assert lines[1].split()[4] == "10"
    assert lines[1].split()[-1] == "+100.00"  # signed, as the totals are
    assert lines[2].split()[:3] == ["globex.com", "r2", "partner"]
    assert "EUR: 2 renewal(s), current MRR 1600.00, renewal MRR 1800.00, change +200.00" in proc.stdout


@pytest.mark.integration
def test_requiring_action_exports_csv_and_json_for_one_user(stored):
    proc = run_cli("requiring-action", "p1", "--user", "JONAS@northwind.agency", "--format", "csv", env=stored)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [(r["client_domain"], r["client_name"], r["renewal_id"]) for r in rows] == [
        ("globex.com", "Globex, Inc.", "r2")
    ]
    assert rows[0]["days_left"] == "20"
    proc = run_cli("requiring-action", "p1", "--format", "json", env=stored)
    data = json.loads(proc.stdout)
    assert [item["renewal_id"] for item in data] == ["r1", "r2"]
    assert data[0]["mrr_change"] == "100.00"


@pytest.mark.integration
def test_requiring_action_names_who_gets_a_digest_when_the_user_gets_none(stored):
    proc = run_cli("requiring-action", "p1", "--user", "jane@acme.com", env=stored)
    assert proc.returncode == 1
    assert "jane@acme.com gets no digest of partner p1" in proc.stderr
    assert "anna@northwind.agency, jonas@northwind.agency" in proc.stderr


def test_simulate_sends_a_weekly_digest_and_shows_it_in_the_timeline(tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    lines = [
        partner_updated(at="2026-12-01T00:00:00Z", locale="de", timezone="Europe/Berlin"),
        client_updated(at="2026-12-01T00:00:00Z"),
        renewal_updated(at="2026-12-01T00:00:00Z", start_date="2027-03-01"),
    ]
    events.write_text("\n".join(json.dumps(e) for e in lines) + "\n", encoding="utf-8")
    report = simulate(
        events,
        until=datetime(2026, 12, 15, tzinfo=UTC),
        outbox=tmp_path / "out",
        rules_path=ROOT / "examples/rules.yaml",
    )
    digests = [e for e in report.timeline if e.reminder_id.startswith("digest/")]
    # The partner arrived on a Tuesday, after its week's digest time and before its renewals: that
    # week's digest was due at once and had nothing in it.
    assert [(e.renewal_id, e.reminder_id, e.outcome.kind) for e in digests] == [
        ("anna@northwind.agency", "digest/2026-W49", "skipped"),
        ("anna@northwind.agency", "digest/2026-W50", "sent"),
        ("anna@northwind.agency", "digest/2026-W51", "sent"),
    ]
    assert digests[1].outcome.at == datetime(2026, 12, 7, 7, 0, tzinfo=UTC)  # Monday 08:00 in Berlin
    messages = [message_from_bytes(p.read_bytes(), policy=policy.default) for p in (tmp_path / "out").glob("*.eml")]
    subjects = sorted(m["Subject"] for m in messages if "digest" in m["X-Renewal-Reminder"])
    assert subjects == ["1 Entscheidung zur Verlängerung, bis 15. Januar"] * 2


def test_the_demo_timeline_shows_digests(tmp_path):
    proc = run_cli("demo", "--outbox", str(tmp_path / "out"), "--until", "2026-12-15T00:00:00+00:00")
    assert proc.returncode == 0, proc.stderr
    assert "northwind/anna@northwind.agency digest/2026-W50: sent [en]" in proc.stdout
    assert "wisla/marek@wislamedia.pl digest/2026-W50: sent [pl]" in proc.stdout


def test_rules_check_names_a_mistake_in_the_digest_block(tmp_path, capsys):
    text = (ROOT / "rules" / "default.yaml").read_text(encoding="utf-8").replace("  every: off\n", "  every: hourly\n")
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["rules", "check", str(path)]) == 1
    line = text.splitlines().index("  every: hourly") + 1
    assert f"{path}:{line}: digest.every: 'hourly' is not one of: weekly, daily, off" in capsys.readouterr().out
