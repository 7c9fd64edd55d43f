"""The production worker and scheduler processes, run against a private Redis and an SMTP server on loopback.

Shared by the fault tests and the end-to-end operations tests: the worker runs as `dramatiq
worker.entrypoint` and the scheduler as `renewals scheduler`, each in its own process group so a
test can kill it whole; what the SMTP server received is read back with ``arrivals``. The
``service`` fixture is registered for every test by ``pytest_plugins`` in ``conftest.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from redis_server import RedisServer
from smtp_fixtures import SmtpServer

__all__ = [
    "BIN",
    "PREFIX",
    "ROOT",
    "Service",
    "arrivals",
    "caught_up_start_date",
    "clean_environ",
    "running_service",
    "service",
    "wait_for",
]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PREFIX = "fx"


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str | Callable[[], str]) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took, fails the test after ``timeout_s``.

    ``what`` may be a callable, so that the failure can say how far things got.
    """
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"after {timeout_s}s: {what() if callable(what) else what}")
        time.sleep(0.05)
    return time.monotonic() - start


def clean_environ() -> dict[str, str]:
    """This process's environment without the worker's Redis and SMTP settings, so a developer's cannot leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "SMTP_", "KEY_PREFIX"))}


def caught_up_start_date(today: date | None = None) -> str:
    """A renewal start date for which, under rules/default.yaml, the first notice is already past (ten
    days ago) and the second not yet due: the renewal's one reminder is sent at once, when planned."""
    return ((today or date.today()) + timedelta(days=45 + 20)).isoformat()


class Service:
    """The worker and scheduler processes, started and killed as a test needs.

    ``settings`` (environment variables) are added to, or replace, the defaults below.
    """

    def __init__(
        self,
        redis_url: str,
        smtp_server: SmtpServer,
        tmp_path: Path,
        *,
        prefix: str = PREFIX,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.env = {
            **clean_environ(),
            "REDIS_URL": redis_url,
            "KEY_PREFIX": prefix,
            "SMTP_HOST": smtp_server.host,
            "SMTP_PORT": str(smtp_server.port),
            "SMTP_SECURITY": "none",
            "SMTP_POOL_SIZE": "2",
            "MAIL_FROM": "Renewals <renewals@platform.example>",
            "SEND_LEASE_MS": "3000",
            "CLAIM_LEASE_S": "10",
            "SCHEDULER_POLL_S": "0.2",
            "DELIVERY_MIN_BACKOFF_MS": "200",
            "DELIVERY_MAX_BACKOFF_MS": "1000",
            "DELIVERY_MAX_RETRIES": "30",
            "OUTBOX_DIR": str(tmp_path / "outbox"),
            **(settings or {}),
        }
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []

    def _start(self, command: list[str], name: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp_path / f"{name}-{len(self.processes)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            command, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.processes.append(proc)
        return proc

    def worker(self, *, processes: int = 1, threads: int = 2) -> subprocess.Popen[bytes]:
        """`dramatiq worker.entrypoint` on the events and deliveries queues."""
        command = [str(BIN / "dramatiq"), "worker.entrypoint", "--processes", str(processes), "--threads", str(threads)]
        return self._start([*command, "--queues", "events", "deliveries"], "worker")

    def scheduler(self) -> subprocess.Popen[bytes]:
        return self._start([str(BIN / "renewals"), "scheduler"], "scheduler")

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL to the whole process group: dramatiq's parent and its worker process die at once."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def log_text(self, name: str = "") -> str:
        """The whole logs of the processes whose log name starts with ``name`` (all of them by default)."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp_path.glob(f"{name}*.log")))

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp_path.glob("*.log")))


@contextmanager
def running_service(
    redis_url: str,
    smtp_server: SmtpServer,
    tmp_path: Path,
    *,
    prefix: str = PREFIX,
    settings: Mapping[str, str] | None = None,
) -> Iterator[Service]:
    """A ``Service`` whose processes are all stopped on the way out, whatever happened."""
    svc = Service(redis_url, smtp_server, tmp_path, prefix=prefix, settings=settings)
    try:
        yield svc
    finally:
        svc.stop_all()


@pytest.fixture
def service(private_redis: RedisServer, smtp_server: SmtpServer, tmp_path: Path) -> Iterator[Service]:
    """A ``Service`` on the test's private Redis and SMTP server, with the key prefix ``PREFIX``."""
    with running_service(private_redis.url(), smtp_server, tmp_path) as svc:
        yield svc


def arrivals(smtp_server: SmtpServer) -> list[tuple[str, str, float]]:
    """(reminder tag, Message-ID, arrival time) of each message the server accepted."""
    out = []
    for m in smtp_server.messages:
        msg = message_from_bytes(m.content, policy=policy.default)
        out.append((str(msg["X-Renewal-Reminder"]), str(msg["Message-ID"]), m.mail_at))
    return out
