"""`renewals simulate` and `renewals demo`: the production pipeline on a virtual clock, read back from .eml files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from factories import client_updated, owner_changed, partner_updated, person, renewal_updated, services_ended

from worker.ops.simulate import simulate

ROOT = Path(__file__).resolve().parent.parent


def write_events(path: Path, events: list[dict | str]) -> Path:
    lines = [e if isinstance(e, str) else json.dumps(e, ensure_ascii=False) for e in events]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_outbox(outbox: Path) -> list:
    messages = [message_from_bytes(p.read_bytes(), policy=policy.default) for p in outbox.glob("*.eml")]
    return sorted(messages, key=lambda m: m["Date"].datetime)


def test_each_reminder_is_written_with_virtual_date_tag_and_locale(tmp_path):
    events = write_events(
        tmp_path / "events.jsonl",
        [
            partner_updated(at="2026-12-01T00:00:00Z", locale="sv", timezone="Europe/Stockholm"),
            client_updated(at="2026-12-01T00:00:00Z", locale="de", timezone="Europe/Berlin"),
            renewal_updated(at="2026-12-01T00:00:00Z", start_date="2027-03-15"),
        ],
    )
    report = simulate(events, until=datetime(2027, 2, 1, tzinfo=UTC), outbox=tmp_path / "out")
    messages = read_outbox(tmp_path / "out")
    assert [m["X-Renewal-Reminder"] for m in messages] == [
        "p1/r1/first-notice",
        "p1/r1/second-notice",
        "p1/r1/final-notice",
    ]
    assert [m["Date"].datetime for m in messages] == [
        datetime(2026, 12, 30, 8, 0, tzinfo=UTC),
        datetime(2027, 1, 22, 8, 0, tzinfo=UTC),
        datetime(2027, 1, 28, 8, 0, tzinfo=UTC),
    ]
    assert {m["Content-Language"] for m in messages} == {"de"}
    assert report.counts == {"sent": 3}


def test_partner_owned_mail_goes_to_the_point_of_contact_in_the_partners_locale(tmp_path):
    events = write_events(
        tmp_path / "events.jsonl",
        [
            partner_updated(
                at="2026-12-01T00:00:00Z",
                locale="pl",
                timezone="Europe/Warsaw",
                notify_user=person("Marek", "marek@agency.pl"),
            ),
            client_updated(at="2026-12-01T00:00:00Z", locale="de"),
            owner_changed(at="2026-12-01T00:00:00Z", owner="partner", notify_user=None),
            renewal_updated(at="2026-12-01T00:00:00Z", start_date="2027-03-15"),
        ],
    )
    simulate(events, until=datetime(2027, 1, 1, tzinfo=UTC), outbox=tmp_path / "out")
    (message,) = read_outbox(tmp_path / "out")
    assert message["To"] == "Marek <marek@agency.pl>"
    assert message["Cc"] is None
    assert message["Content-Language"] == "pl"
    assert message["Date"].datetime == datetime(2026, 12, 30, 8, 0, tzinfo=UTC)  # 09:00 in Warsaw


def test_ended_services_stop_reminders_already_planned(tmp_path):
    events = write_events(
        tmp_path / "events.jsonl",
        [
            partner_updated(at="2026-12-01T00:00:00Z"),
            client_updated(at="2026-12-01T00:00:00Z"),
            renewal_updated(at="2026-12-01T00:00:00Z", start_date="2027-03-15"),
            services_ended(at="2027-01-05T00:00:00Z"),
        ],
    )
    report = simulate(events, until=datetime(2027, 3, 1, tzinfo=UTC), outbox=tmp_path / "out")
    assert [m["X-Renewal-Reminder"] for m in read_outbox(tmp_path / "out")] == ["p1/r1/first-notice"]
    assert any("services_ended" in line for line in report.inactive)


def test_the_clock_never_moves_back_and_invalid_events_are_reported_and_skipped(tmp_path):
    events = write_events(
        tmp_path / "events.jsonl",
        [
            partner_updated(at="2027-01-10T00:00:00Z"),
            client_updated(at="2027-01-10T00:00:00Z"),
            "{not json",
            # Older than the clock: applied at the clock's time, so its first notice is caught up at once.
            renewal_updated(at="2026-12-01T00:00:00Z", start_date="2027-03-15"),
        ],
    )
    report = simulate(events, until=datetime(2027, 1, 11, tzinfo=UTC), outbox=tmp_path / "out")
    assert len(report.rejected) == 1 and "events.jsonl:3" in report.rejected[0]
    (message,) = read_outbox(tmp_path / "out")
    assert message["X-Renewal-Reminder"] == "p1/r1/first-notice"
    assert message["Date"].datetime == datetime(2027, 1, 10, tzinfo=UTC)


def test_an_invalid_rule_file_stops_the_simulation_before_anything_is_sent(tmp_path):
    from worker.domain.errors import RulesError

    rules = tmp_path / "rules.yaml"
    rules.write_text("reminders: []\n", encoding="utf-8")
    events = write_events(tmp_path / "events.jsonl", [client_updated()])
    with pytest.raises(RulesError):
        simulate(events, until=datetime(2027, 1, 1, tzinfo=UTC), outbox=tmp_path / "out", rules_path=rules)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_the_bundled_examples_send_the_documented_story(tmp_path):
    report = simulate(ROOT / "examples" / "events.jsonl", until=datetime(2027, 6, 1, tzinfo=UTC), outbox=tmp_path)
    sent = [(e.renewal_id, e.reminder_id) for e in report.timeline if e.outcome.kind == "sent"]
    # The ended client's renewal got its first notice before services ended, and nothing after.
    assert ("r-1003", "first-notice") in sent
    assert ("r-1003", "second-notice") not in sent
    # The renewed renewal stops after the caught-up first notice.
    assert [r for r in sent if r[0] == "r-2002"] == [("r-2002", "first-notice")]
    # Partner-owned renewals reach only the point of contact.
    for entry in report.timeline:
        if entry.renewal_id in ("r-1002", "r-2001"):
            assert entry.outcome.cc == () and len(entry.outcome.to) == 1
    assert len(report.rejected) == 1
    assert report.events == {"applied": 19, "duplicate": 1, "stale": 1, "dead_lettered": 0}
    assert len(list(tmp_path.glob("*.eml"))) == len(sent)
    # The German client owned by the platform gets German mail.
    assert any(e.renewal_id == "r-1005" and e.outcome.extra.get("locale") == "de" for e in report.timeline)
