"""Operations without running processes: status and health, metrics exposition, log format, heartbeats."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest
from factories import client_updated, partner_updated, renewal_updated
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from worker.config.rulefile import RulesWatcher
from worker.config.settings import load_settings
from worker.domain.durations import describe_age, describe_duration
from worker.domain.errors import ConfigError, InvalidEvent, TransientSendError
from worker.domain.events import parse_event
from worker.mail.transport import Envelope, SendResult
from worker.ops.status import gather_status, health_problems, render_status
from worker.service.actors import handle_event_message, screen_event
from worker.service.clock import VirtualClock
from worker.service.exposition import prepare_multiprocess_dir, serve_metrics
from worker.service.logs import JsonFormatter, TextFormatter, _Scrubber, configure_logging, mask_addresses
from worker.service.runtime import build_runtime
from worker.service.telemetry import InstrumentedMailer, metrics, outcome_of
from worker.state.alarms import OutcomeCounts, SmtpAlarm
from worker.state.heartbeat import Heartbeats
from worker.state.history import HistoryEntry
from worker.state.ledger import Outcome
from worker.state.replan_run import ReplanRun
from worker.state.schedule import epoch_ms

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(days=36, hours=10, minutes=46, seconds=51.8), "36 days"),
        (timedelta(days=1, hours=3), "1 day 3 h"),
        (timedelta(hours=2, minutes=5, seconds=9), "2 h 5 min"),
        (timedelta(minutes=4, seconds=10), "4 min 10 s"),
        (timedelta(seconds=40.7), "40 s"),
        (timedelta(milliseconds=668), "668 ms"),
        (-timedelta(hours=3), "3 h"),
    ],
)
def test_a_time_difference_reads_in_its_two_largest_units(delta, text):
    assert describe_duration(delta) == text


def test_an_event_dated_weeks_ahead_is_refused_saying_how_far_ahead_in_days():
    raw = json.dumps(partner_updated(at="2027-01-09T22:46:51Z"))
    with pytest.raises(InvalidEvent) as caught:
        screen_event(raw, now=NOW, max_future_s=86_400)
    assert "is 36 days ahead of the worker's clock" in str(caught.value)
    assert describe_age(-timedelta(minutes=2)) == "2 min ago"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("to jane.doe@acme.com", "to j***@acme.com"),
        ("Jane <jane@acme.com>, bob@b.co.uk: 451", "Jane <j***@acme.com>, b***@b.co.uk: 451"),
        ("juergen@bücher.de refused", "j***@bücher.de refused"),
        ("no address here @ all", "no address here @ all"),
    ],
)
def test_addresses_in_logs_are_masked_to_their_first_letter_and_domain(text, masked):
    assert mask_addresses(text) == masked


def _record(message: str, *, exc: BaseException | None = None, **extra: object) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = logging.LogRecord("worker.delivery", logging.WARNING, __file__, 1, message, (), exc_info)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_a_json_log_line_carries_time_level_logger_message_and_the_reminder_fields():
    scrub = _Scrubber([], mask=True)
    line = JsonFormatter(scrub).format(
        _record(
            "reminder p1/r1/first: sent to jane@acme.com", partner="p1", renewal="r1", reminder="first", outcome="sent"
        )
    )
    data = json.loads(line)
    assert data["level"] == "WARNING" and data["logger"] == "worker.delivery"
    assert data["message"] == "reminder p1/r1/first: sent to j***@acme.com"
    assert (data["partner"], data["renewal"], data["reminder"], data["outcome"]) == ("p1", "r1", "first", "sent")
    assert datetime.fromisoformat(data["time"]).tzinfo is not None


def test_secrets_never_reach_a_log_line_even_inside_a_traceback():
    settings = load_settings(
        redis_url="redis://app:r3dis-pass@redis.internal:6379/0",
        smtp_host="smtp.internal",
        smtp_username="renewals",
        smtp_password="s3cret-Pass",
    )
    assert settings.redis_url_redacted == "redis://app:***@redis.internal:6379/0"
    scrub = _Scrubber(settings.secrets(), mask=False)
    try:
        raise ConfigError("login with s3cret-Pass refused; redis://app:r3dis-pass@redis.internal")
    except ConfigError as exc:
        error = exc
    for formatter in (TextFormatter(scrub), JsonFormatter(scrub)):
        line = formatter.format(_record("password is s3cret-Pass", exc=error))
        assert "s3cret-Pass" not in line and "r3dis-pass" not in line
        assert "Traceback" in line or "exception" in line


def test_log_level_and_format_come_from_the_settings():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    formatters = [h.formatter for h in handlers]
    try:
        configure_logging(load_settings(log_level="debug", log_format="json"))
        assert root.level == logging.DEBUG
        assert all(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    finally:
        for handler, formatter in zip(handlers, formatters, strict=True):
            handler.setFormatter(formatter)
        for handler in root.handlers[len(handlers) :]:
            root.removeHandler(handler)
        root.setLevel(level)


def test_the_multiprocess_folder_of_a_new_cli_is_emptied_and_folders_of_dead_clis_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "unset-by-the-test")
    settings = load_settings(metrics_dir=tmp_path)
    mine = tmp_path / str(os.getppid())
    mine.mkdir()
    (mine / ".owner").write_text("an earlier process of the same pid")
    (mine / "counter_123.db").write_text("stale figures")
    dead = tmp_path / "999999999"  # above any pid_max: no such process
    dead.mkdir()
    assert prepare_multiprocess_dir(settings) == mine
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(mine)
    assert sorted(p.name for p in mine.iterdir()) == [".owner"]
    assert not dead.exists()
    # A second worker process of the same CLI keeps what the first wrote.
    (mine / "counter_456.db").write_text("live figures")
    prepare_multiprocess_dir(settings)
    assert (mine / "counter_456.db").exists()


def _free_port_pair() -> int:
    """A port below the ephemeral range (where client connections take theirs) free with the next one."""
    for _ in range(200):
        port = random.randint(10_000, 30_000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise AssertionError("no free ports")


def test_processes_on_one_host_take_consecutive_ports_on_loopback_and_serve_parsable_metrics():
    metrics().reminders.labels("sent", "").inc(0)
    port = _free_port_pair()
    settings = load_settings(metrics_port=port, metrics_port_tries=3)
    first, second = serve_metrics(settings, REGISTRY), serve_metrics(settings, REGISTRY)
    try:
        assert first is not None and second is not None
        assert first.url == f"http://127.0.0.1:{port}/metrics"
        assert second.url == f"http://127.0.0.1:{port + 1}/metrics"
        with urllib.request.urlopen(second.url, timeout=5) as reply:
            families = {f.name for f in text_string_to_metric_families(reply.read().decode())}
        assert {"renewals_reminders", "renewals_smtp_replies", "renewals_smtp_send_duration_seconds"} <= families
    finally:
        for served in (first, second):
            if served is not None:
                served.close()


class _Inner:
    def __init__(self) -> None:
        self.fail: BaseException | None = None

    async def send(self, *, sender, recipients, message) -> SendResult:
        if self.fail is not None:
            raise self.fail
        return SendResult(reply="250 OK")

    async def send_checked(self, prepare, *, accepted=None) -> SendResult | None:
        envelope = await prepare()
        if envelope is None:
            return None
        return await self.send(sender=envelope.sender, recipients=envelope.recipients, message=envelope.message)

    async def close(self) -> None:
        pass


def _count(reply_class: str) -> float:
    return REGISTRY.get_sample_value("renewals_smtp_replies_total", {"reply_class": reply_class}) or 0.0


def test_an_smtp_error_that_stops_all_sending_raises_the_alarm_until_a_send_is_accepted(fake_redis):
    import asyncio

    from worker.state.keys import Keys

    alarm = SmtpAlarm(fake_redis, Keys("t"))
    inner = _Inner()
    mailer = InstrumentedMailer(inner, alarm=alarm, clock=VirtualClock(NOW))
    send = {"sender": "a@x.example", "recipients": ["b@x.example"], "message": b"x"}
    before = {c: _count(c) for c in ("2xx", "4xx", "config")}
    inner.fail = ConfigError("SMTP refused the session: 535 5.7.8 bad credentials")
    with pytest.raises(ConfigError):
        asyncio.run(mailer.send(**send))
    state = alarm.current()
    assert state is not None and "535" in state.message and state.since == NOW
    inner.fail = TransientSendError("451 later", code=451)
    with pytest.raises(TransientSendError):
        asyncio.run(mailer.send(**send))
    assert alarm.current() is not None  # a deferral does not end it
    inner.fail = None

    async def nothing_to_send() -> None:
        return None

    assert asyncio.run(mailer.send_checked(nothing_to_send)) is None
    assert alarm.current() is not None  # nothing was sent, so nothing shows the server takes mail again

    async def this_message() -> Envelope:
        return Envelope("a@x.example", ["b@x.example"], b"x")

    asyncio.run(mailer.send_checked(this_message))
    assert alarm.current() is None
    assert {c: _count(c) - before[c] for c in before} == {"2xx": 1, "4xx": 1, "config": 1}


@pytest.mark.parametrize(
    ("result", "expected"),
    [("sent", ("sent", "")), ("skipped:deadline_passed", ("skipped", "deadline_passed")), ("failed", ("failed", ""))],
)
def test_a_delivery_result_is_counted_by_outcome_and_reason(result, expected):
    assert outcome_of(result) == expected
    assert outcome_of(TransientSendError("x")) == ("deferred", "TransientSendError")


def test_a_heartbeat_vanishes_when_its_process_stops_beating(fake_redis):
    from worker.state.keys import Keys

    beats = Heartbeats(fake_redis, Keys("t"))
    beats.beat("scheduler:h:1", "scheduler", now=NOW, ttl_s=0.05, info={"last_tick_at": NOW.isoformat()})
    beats.beat("worker:h:2", "worker", now=NOW, ttl_s=30, info={})
    assert [b.role for b in beats.alive()] == ["scheduler", "worker"]
    time.sleep(0.1)
    assert [b.process_id for b in beats.alive()] == ["worker:h:2"]
    assert fake_redis.smembers(Keys("t").heartbeats()) == {b"t:heartbeat:worker%3Ah%3A2"}
    beats.stop("worker:h:2")
    assert beats.alive() == []


def test_a_rule_edit_is_reported_as_applied_or_invalid(tmp_path):
    path = tmp_path / "rules.yaml"
    rule = '  - {{id: {id}, anchor: deadline, offset_days: -10, send_time: "09:00", template: first-notice}}\n'
    path.write_text("deadline_days_before_start: 45\nreminders:\n" + rule.format(id="a"), encoding="utf-8")
    heard: list[str] = []
    watcher = RulesWatcher(path, on_reload=heard.append)
    path.write_text("reminders: [oops\n", encoding="utf-8")
    watcher.maybe_reload()
    path.write_text("deadline_days_before_start: 45\nreminders:\n" + rule.format(id="b"), encoding="utf-8")
    watcher.maybe_reload()
    assert heard == ["invalid", "applied"]


@pytest.fixture
def runtime():
    rt = build_runtime(load_settings(redis_url=None), clock=VirtualClock(NOW), redis_client=fakeredis.FakeRedis())
    yield rt
    rt.close()


def _apply(rt, *raws) -> None:
    for raw in raws:
        event = parse_event(json.dumps(raw))
        rt.store.apply(event)
        rt.planning.replan_for_event(event, rt.rules(), rt.clock.now())


def test_status_shows_overdue_reminders_waiting_renewals_outcomes_and_why_the_service_is_unhealthy(runtime):
    start = (NOW.date() + timedelta(days=45 + 20)).isoformat()
    _apply(
        runtime,
        partner_updated(),
        client_updated(),
        renewal_updated(start_date=start),  # its first notice is caught up: due now
        renewal_updated(renewal_id="r-orphan", client_id="c-unknown", start_date=start),
        client_updated(partner_id="p-new"),
        renewal_updated(partner_id="p-new", renewal_id="r-np", start_date=start),  # no partner.updated yet
    )
    runtime.clock.advance_to(NOW + timedelta(minutes=30))
    OutcomeCounts(runtime.redis, runtime.keys).add(["sent", "sent", "failed"], now=runtime.clock.now())
    status = gather_status(runtime)
    assert status.due.overdue == 1
    assert status.due.oldest_overdue_s(status.now) == pytest.approx(30 * 60, abs=1)
    assert status.waiting == {"client": 1, "partner": 1}
    assert status.outcomes_24h == {"failed": 1, "sent": 2}
    assert status.counts.events["applied"] == 6
    problems = health_problems(status, max_tick_age_s=60, max_overdue_s=600)
    assert problems == [
        "no scheduler is running (no scheduler heartbeat)",
        "no worker is running (no worker heartbeat)",
        "1 reminder(s) overdue, the oldest for 30 min (HEALTH_MAX_OVERDUE_S=600)",
    ]
    text = render_status(status, problems)
    assert "overdue 1 (oldest 2026-12-04 12:00:00 UTC (30 min ago))" in text
    waiting = (
        "waiting for missing data: 1 renewal(s) wait for their client's details; 1 renewal(s) wait for their partner's"
    )
    assert waiting in text
    assert "last 24 h: failed 1, sent 2" in text
    assert text.endswith("  1 reminder(s) overdue, the oldest for 30 min (HEALTH_MAX_OVERDUE_S=600)")


def test_a_stale_scheduler_tick_and_an_smtp_alarm_make_the_service_unhealthy(runtime):
    beats = Heartbeats(runtime.redis, runtime.keys)
    tick = NOW - timedelta(minutes=5)
    beats.beat("scheduler:h:1", "scheduler", now=NOW, ttl_s=600, info={"last_tick_at": tick.isoformat()})
    beats.beat("worker:h:2", "worker", now=NOW, ttl_s=600, info={})
    SmtpAlarm(runtime.redis, runtime.keys).raise_("535 bad credentials", now=NOW - timedelta(hours=2))
    status = gather_status(runtime)
    assert health_problems(status, max_tick_age_s=60, max_overdue_s=600) == [
        "no scheduler tick for 5 min (HEALTH_MAX_TICK_AGE_S=60)",
        "SMTP error stops all sending since 2 h ago: 535 bad credentials",
    ]
    healthy = replace(status, smtp_alarm=None, processes=[replace(status.processes[0], info={}), status.processes[1]])
    assert health_problems(healthy, max_tick_age_s=60, max_overdue_s=600) == []
    # A rule change's re-plan under way makes ticks long: no reason to restart the scheduler.
    ReplanRun(runtime.redis, runtime.keys).start("f" * 64, ["p1", "p2"])
    replanning = replace(gather_status(runtime), smtp_alarm=None)
    assert health_problems(replanning, max_tick_age_s=60, max_overdue_s=600) == []
    assert "re-planning for rules ffffffffffff: 0 of 512 chunk(s) handed out, 0 in progress" in render_status(
        replanning, []
    )


def test_a_dead_lettered_event_is_logged_with_its_event_id_and_partner(runtime, caplog):
    raw = json.dumps({**partner_updated(partner_id="northwind", event_id="evt-bad"), "data": {"name": 3}})
    with caplog.at_level(logging.WARNING, logger="worker.ingest"):
        assert handle_event_message(runtime, (raw,), {}) == "dead_letter"
    assert any("dead-lettered event evt-bad of partner northwind:" in r.getMessage() for r in caplog.records)


def test_an_applied_event_is_logged_at_debug(runtime, caplog):
    raw = json.dumps(partner_updated(partner_id="northwind", event_id="evt-ok"))
    with caplog.at_level(logging.DEBUG, logger="worker.ingest"):
        handle_event_message(runtime, (raw,), {})
    (record,) = [r for r in caplog.records if "evt-ok" in r.getMessage()]
    assert record.levelno == logging.DEBUG and "partner northwind): applied" in record.getMessage()


def test_the_due_index_counts_ignore_what_is_not_due(runtime):
    runtime.redis.zadd(
        runtime.keys.due(), {"a": epoch_ms(NOW + timedelta(minutes=30)), "b": epoch_ms(NOW + timedelta(hours=5))}
    )
    status = gather_status(runtime)
    assert (status.due.overdue, status.due.due_next_hour, status.due.due_next_day, status.due.planned) == (0, 1, 2, 2)


def test_outcomes_are_counted_for_status_as_they_are_written_once_each_and_deferrals_with_them(runtime):
    counts = OutcomeCounts(runtime.redis, runtime.keys)
    now = runtime.clock.now()
    assert runtime.ledger.finish("p1", "r1", "first-notice", Outcome("sent", now))
    assert not runtime.ledger.finish("p1", "r1", "first-notice", Outcome("sent", now))  # already final
    runtime.ledger.finish("p1", "r2", "first-notice", Outcome("skipped", now, reason="status: won"))
    runtime.ledger.history.append(HistoryEntry("deferral", now, "deferred", partner="p1", renewal="r3"))
    assert counts.last_day(now=now) == {"deferred": 1, "sent": 1, "skipped": 1}
    assert counts.last_day(now=now + timedelta(hours=25)) == {}  # a day's window
