"""A private redis-server for fault tests: on a free loopback port, in its own directory, stoppable at will.

Fault tests stop, kill and restart Redis under running workers; they must never do that to the
shared Redis that other tests (and other people) use, so each starts its own with this helper.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

__all__ = ["RedisServer", "free_port", "private_redis", "redis_server_binary", "running_redis"]


def redis_server_binary() -> str | None:
    """The redis-server executable on PATH, or None."""
    return shutil.which("redis-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process on 127.0.0.1, its data (and append-only file) kept in ``directory``.

    The port and the directory stay the same across ``stop``/``kill`` and ``start``, so a restart
    looks to clients like the production server coming back, with what it had persisted.
    ``appendonly`` with ``appendfsync always`` loses nothing acknowledged even to ``kill`` (SIGKILL);
    without it, only a graceful ``stop`` (SIGTERM) keeps the data, and ``kill`` loses it all.
    """

    def __init__(self, directory: Path, *, appendonly: bool = True, port: int | None = None) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        self.binary = binary
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def _command(self) -> list[str]:
        command = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--logfile",
            str(self.log_path),
            "--daemonize",
            "no",
        ]
        if self.appendonly:
            command += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            command += ["--appendonly", "no"]
        return command

    def start(self, *, timeout_s: float = 10.0) -> None:
        """Start (or restart) the server and wait until it answers PING with its data loaded."""
        if self.running:
            return
        self.process = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self._log_tail()}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"redis-server did not answer within {timeout_s} s: {self._log_tail()}")
                time.sleep(0.02)
        finally:
            client.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Shut down gracefully (SIGTERM: the append-only file is flushed), waiting until it has exited."""
        self._signal(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """Kill with SIGKILL, as a crash or an OOM kill would: nothing is flushed."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self, *, down_s: float = 0.0, hard: bool = False) -> None:
        """Stop (``hard``: kill), stay down ``down_s`` seconds, start again on the same port and data."""
        if hard:
            self.kill()
        else:
            self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()

    def _signal(self, signum: int, timeout_s: float) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signum)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def _log_tail(self, lines: int = 10) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def client(self, db: int = 0) -> redis.Redis:
        """A plain client of this server (the caller closes it)."""
        return redis.Redis.from_url(self.url(db))


@contextmanager
def running_redis(directory: Path, *, appendonly: bool = True) -> Iterator[RedisServer]:
    """A started private server, killed on the way out whatever happened."""
    server = RedisServer(directory, appendonly=appendonly)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server (append-only, fsync always) in the test's tmp dir; skipped when none is installed.

    Registered for every test by ``pytest_plugins`` in ``conftest.py``.
    """
    if redis_server_binary() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("redis-server is required under CI=true")
        pytest.skip("redis-server is not installed")
    with running_redis(tmp_path / "redis") as server:
        yield server
