"""The running service seen as an operator sees it: /metrics scraped over HTTP, `renewals status`, the logs.

Real processes (`renewals scheduler`, `dramatiq worker.entrypoint`) on the real Redis and an SMTP server
on loopback.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from factories import client_updated, partner_updated, renewal_updated
from prometheus_client.parser import text_string_to_metric_families
from smtp_fixtures import SmtpServer

from worker import publish_many
from worker.config.settings import Settings, load_settings
from worker.service.runtime import Runtime, build_runtime
from worker.state.alarms import OutcomeCounts, SmtpAlarm
from worker.state.heartbeat import Heartbeat, Heartbeats

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
PREFIX = "ops"


def wait_for(check: Callable[[], Any], timeout_s: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free on loopback now."""
    for _ in range(200):
        first = random.randint(10_000, 30_000)  # below the ephemeral ports clients are given
        sockets = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError("no free ports")


def service_env(redis_url: str, tmp_path: Path, metrics_port: int, smtp: Settings | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "METRICS_", "LOG_", "REDIS_URL"))}
    env.update(
        REDIS_URL=redis_url,
        KEY_PREFIX=PREFIX,
        METRICS_PORT=str(metrics_port),
        METRICS_DIR=str(tmp_path / "metrics"),
        OUTBOX_DIR=str(tmp_path / "outbox"),
        SCHEDULER_POLL_S="0.2",
        HEARTBEAT_INTERVAL_S="0.5",
        DELIVERY_MIN_BACKOFF_MS="200",
        DELIVERY_MAX_BACKOFF_MS="400",
        MAIL_FROM="Partner Renewals <renewals@platform.example>",
    )
    if smtp is not None:
        env.update(SMTP_HOST=str(smtp.smtp_host), SMTP_PORT=str(smtp.smtp_port), SMTP_SECURITY=smtp.smtp_security)
        if smtp.smtp_ca_file:
            env["SMTP_CA_FILE"] = str(smtp.smtp_ca_file)
        if smtp.smtp_username:
            env.update(SMTP_USERNAME=smtp.smtp_username, SMTP_PASSWORD=str(smtp.smtp_password))
    return env


class Service:
    """A scheduler and a dramatiq CLI, logging to files; stopped by their own pids."""

    def __init__(self, env: dict[str, str], tmp_path: Path, *, processes: int) -> None:
        self.env = env
        self.scheduler_log = tmp_path / "scheduler.log"
        self.worker_log = tmp_path / "worker.log"
        self.scheduler = self._start([sys.executable, "-m", "worker.ops.cli", "scheduler"], self.scheduler_log)
        dramatiq_bin = str(Path(sys.executable).with_name("dramatiq"))
        command = [dramatiq_bin, "worker.entrypoint", "--processes", str(processes), "--threads", "2"]
        self.worker = self._start([*command, "--queues", "events", "deliveries"], self.worker_log)

    def _start(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            return subprocess.Popen(command, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def stop_worker(self) -> None:
        if self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            self.worker.wait(timeout=30)

    def stop(self) -> None:
        self.stop_worker()
        if self.scheduler.poll() is None:
            self.scheduler.send_signal(signal.SIGTERM)
            self.scheduler.wait(timeout=30)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "worker.ops.cli", *args]
        return subprocess.run(command, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture
def runtime(redis_url: str) -> Iterator[Runtime]:
    rt = build_runtime(load_settings(redis_url=redis_url, key_prefix=PREFIX))
    yield rt
    rt.close()


def alive(rt: Runtime, schedulers: int, workers: int) -> list[Heartbeat] | None:
    beats = Heartbeats(rt.redis, rt.keys).alive()
    roles = [b.role for b in beats if b.info.get("metrics_url")]
    if roles.count("scheduler") >= schedulers and roles.count("worker") >= workers:
        return beats
    return None


def due_now_events(count: int) -> list[dict[str, Any]]:
    """A partner, a client and ``count`` renewals whose first notice is already due (caught up now)."""
    start = date.today() + timedelta(days=45 + 20)
    events = [partner_updated(at="2026-01-01T00:00:00Z"), client_updated(at="2026-01-01T00:00:00Z")]
    events += [
        renewal_updated(renewal_id=f"r{i}", start_date=start.isoformat(), at="2026-01-02T00:00:00Z")
        for i in range(count)
    ]
    return events


def scrape(url: str) -> dict[str, list[Any]]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_are_served_by_scheduler_and_worker_processes_and_status_reports_them(redis_url, runtime, tmp_path):
    port = free_ports(3)
    service = Service(service_env(redis_url, tmp_path, port), tmp_path, processes=2)
    try:
        beats = wait_for(lambda: alive(runtime, schedulers=1, workers=2))
        urls = {b.role: b.info["metrics_url"] for b in beats}
        # Both start from METRICS_PORT: whichever binds first takes it, the other the port after it.
        assert {urls["scheduler"], urls["worker"]} == {f"http://127.0.0.1:{p}/metrics" for p in (port, port + 1)}
        events = due_now_events(6)
        publish_many([*events, events[0]], runtime=runtime)  # the partner event twice: one duplicate
        counts = OutcomeCounts(runtime.redis, runtime.keys)
        wait_for(lambda: counts.last_day(now=datetime.now(UTC)).get("sent") == 6)

        worker = wait_for(lambda: (s := scrape(urls["worker"])) and value(s, "renewals_reminders_total") >= 6 and s)
        # Summed over the CLI's two worker processes by the multiprocess collector.
        assert value(worker, "renewals_reminders_total", outcome="sent") == 6
        assert value(worker, "renewals_smtp_replies_total", reply_class="2xx") == 6
        assert value(worker, "renewals_delivery_lateness_seconds_count") == 6
        assert "renewals_scheduler_last_success_timestamp_seconds" not in worker

        scheduler = scrape(urls["scheduler"])
        assert value(scheduler, "renewals_events_total", result="applied") == 8
        assert value(scheduler, "renewals_events_total", result="duplicate") == 1
        assert value(scheduler, "renewals_redis_up") == 1
        last_tick = value(scheduler, "renewals_scheduler_last_success_timestamp_seconds")
        assert abs(time.time() - last_tick) < 10
        assert value(scheduler, "renewals_scheduler_tick_duration_seconds_count") > 0

        # Every metric an alert names exists in a real scrape.
        rules = yaml.safe_load((ROOT / "config" / "prometheus-alerts.yml").read_text())["groups"][0]["rules"]
        named = {name for rule in rules for name in re.findall(r"\brenewals_[a-z_]+", rule["expr"])}
        assert len(named) >= 8
        assert named <= set(worker) | set(scheduler), named - set(worker) - set(scheduler)

        status = service.cli("status", "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["healthy"], data["problems"]
        assert sorted(p["role"] for p in data["processes"]) == ["scheduler", "worker", "worker"]
        assert data["outcomes_24h"]["sent"] == 6
        assert data["counts"]["events"]["duplicate"] == 1
        text = service.cli("status")
        assert "health: ok" in text.stdout and "last 24 h: sent 6" in text.stdout
        assert service.cli("status", "--check").returncode == 0

        service.stop_worker()
        check = service.cli("status", "--check")
        assert check.returncode == 1
        assert "no worker is running (no worker heartbeat)" in check.stdout
    finally:
        service.stop()
    log = service.worker_log.read_text()
    # One format for worker and scheduler; start-up names what the process is connected to.
    for name in (service.worker_log, service.scheduler_log):
        text = name.read_text()
        assert re.search(r"INFO worker\.service \[\d+\]: redis: redis://127\.0\.0\.1:6379/\d+ \(key prefix ops\)", text)
        assert "rules fingerprint: " in text and "templates: " in text and "from: Partner Renewals" in text
    # The rule's own time (09:00 at the client, 30 days before a deadline 20 days ahead), then when it was caught up.
    line = re.search(r"reminder p1/r0/first-notice \(due (\S+), caught up (\S+)\): sent", log)
    assert line, log
    planned = datetime.combine(date.today() - timedelta(days=10), dt_time(9), ZoneInfo("America/New_York"))
    assert datetime.fromisoformat(line[1]) == planned.astimezone(UTC)
    assert abs(datetime.fromisoformat(line[2]) - datetime.now(UTC)) < timedelta(minutes=5)


def test_a_wrong_smtp_password_raises_the_alarm_without_a_traceback_or_the_password_in_the_log(
    smtp_server_auth: SmtpServer, redis_url, runtime, tmp_path
):
    wrong = "hunter2-Wr0ng-secret"
    smtp = smtp_server_auth.make_settings(smtp_password=wrong)
    service = Service(service_env(redis_url, tmp_path, free_ports(3), smtp), tmp_path, processes=1)
    try:
        wait_for(lambda: alive(runtime, schedulers=1, workers=1))
        publish_many(due_now_events(1), runtime=runtime)
        alarm = wait_for(lambda: SmtpAlarm(runtime.redis, runtime.keys).current())
        assert "535" in alarm.message
        check = service.cli("status", "--check")
        assert check.returncode == 1
        assert "SMTP error stops all sending since" in check.stdout
        time.sleep(1.0)  # a retry or two more
    finally:
        service.stop()
    log = service.worker_log.read_text()
    assert wrong not in log and wrong not in check.stdout
    assert "Traceback" not in log and "unhandled exception" not in log
    assert re.search(r"WARNING worker\.delivery \[\d+\]: reminder p1/r0/first-notice .*deferred, will retry", log)


def test_a_deferred_send_logs_one_warning_line_and_no_traceback(smtp_server: SmtpServer, redis_url, runtime, tmp_path):
    smtp_server.reply_next("451 4.3.0 Try again later", at="RCPT", messages=2)
    service = Service(
        service_env(redis_url, tmp_path, free_ports(3), smtp_server.make_settings()), tmp_path, processes=1
    )
    try:
        wait_for(lambda: alive(runtime, schedulers=1, workers=1))
        publish_many(due_now_events(1), runtime=runtime)
        wait_for(lambda: len(smtp_server.messages) == 1)
        assert SmtpAlarm(runtime.redis, runtime.keys).current() is None
    finally:
        service.stop()
    log = service.worker_log.read_text()
    warnings = [line for line in log.splitlines() if " WARNING " in line]
    assert len(warnings) == 2, warnings
    assert all("reminder p1/r0/first-notice" in w and "451" in w for w in warnings)
    assert "Traceback" not in log and " ERROR " not in log


def test_renewals_run_serves_one_endpoint_with_worker_and_scheduler_metrics_and_beats_for_both(
    redis_url, runtime, tmp_path
):
    port = free_ports(2)
    env = service_env(redis_url, tmp_path, port)
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.ops.cli", "run", "--threads", "2"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        beats = wait_for(lambda: alive(runtime, schedulers=1, workers=0))
        wait_for(lambda: [b for b in Heartbeats(runtime.redis, runtime.keys).alive() if b.role == "worker"])
        (url,) = {b.info["metrics_url"] for b in beats if b.role == "scheduler"}
        assert url == f"http://127.0.0.1:{port}/metrics"
        publish_many(due_now_events(2), runtime=runtime)
        samples = wait_for(
            lambda: (s := scrape(url)) and value(s, "renewals_reminders_total", outcome="sent") == 2 and s
        )
        assert value(samples, "renewals_events_total", result="applied") == 4
        assert value(samples, "renewals_scheduler_ticks_total", result="ok") > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert Heartbeats(runtime.redis, runtime.keys).alive() == []  # a clean stop says so at once
    assert "worker and scheduler starting" in log.read_text()
