"""/metrics over HTTP, heartbeats, and the multiprocess folder of a dramatiq CLI's worker processes.

Why prometheus-client's multiprocess mode rather than dramatiq's Prometheus middleware: the latter
binds 0.0.0.0:9191 and shares one folder in /tmp between every dramatiq CLI on a host, so a second
CLI fails to bind and empties the first one's figures; its units are milliseconds. Here each CLI
gets its own folder (named by the CLI's pid, emptied when a new CLI of that pid starts), its own
exposition process (a dramatiq "fork"), and the first free port from METRICS_PORT up.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dramatiq.middleware import Middleware

from ..config.settings import Settings, load_settings
from ..state.connection import REDIS_ERRORS
from ..state.heartbeat import Heartbeats
from .logs import configure_logging
from .state_metrics import StateCollector
from .telemetry import metrics, scheduler_metrics

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ..state.keys import Keys
    from .clock import Clock

__all__ = [
    "MetricsServer",
    "Telemetry",
    "in_dramatiq_cli",
    "multiprocess_dir",
    "prepare_multiprocess_dir",
    "process_id",
    "serve_metrics",
    "serve_worker_metrics",
    "start_process_metrics",
]

_log = logging.getLogger("worker.metrics")
_URL_FILE = "metrics-url"


def process_id(role: str) -> str:
    """How a process names itself in heartbeats: role, host and pid."""
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


def in_dramatiq_cli() -> bool:
    """True in a worker process started by the ``dramatiq`` command (a child of its main process)."""
    import multiprocessing

    return "dramatiq" in Path(sys.argv[0]).parts[-2:] and multiprocessing.parent_process() is not None


def multiprocess_dir(settings: Settings, cli_pid: int) -> Path:
    base = settings.metrics_dir or Path(tempfile.gettempdir()) / "renewals-metrics"
    return base / str(cli_pid)


def _process_start(pid: int) -> str:
    """What tells one process of this pid from an earlier one (its start time where /proc has it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "unknown"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_multiprocess_dir(settings: Settings) -> Path:
    """Point prometheus-client at this dramatiq CLI's folder; the first worker process of a CLI empties it.

    Must run before the first metric is made in the process. Folders of CLIs that are gone are removed.
    """
    cli_pid = os.getppid()
    folder = multiprocess_dir(settings, cli_pid)
    folder.parent.mkdir(parents=True, exist_ok=True)
    owner = f"{cli_pid} {_process_start(cli_pid)}"
    with open(folder.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = folder / ".owner"
        if not marker.is_file() or marker.read_text() != owner:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            marker.write_text(owner)
        for sibling in folder.parent.iterdir():
            if sibling.is_dir() and sibling.name.isdigit() and not _alive(int(sibling.name)):
                shutil.rmtree(sibling, ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder


class _Chain:
    """Several collectors served as one registry."""

    def __init__(self, *collectors: Any) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


@dataclass(frozen=True)
class MetricsServer:
    url: str
    server: Any  # wsgiref's server, serving in a daemon thread

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(settings: Settings, registry: Any) -> MetricsServer | None:
    """Serve ``registry`` on the first free port from METRICS_PORT (METRICS_PORT_TRIES of them)."""
    from prometheus_client import start_wsgi_server

    host = settings.metrics_host
    ports = (
        [0]
        if settings.metrics_port == 0
        else range(settings.metrics_port, settings.metrics_port + settings.metrics_port_tries)
    )
    for port in ports:
        if port > 65_535:
            break
        try:
            server, _ = start_wsgi_server(port, addr=host, registry=registry)
        except OSError:
            continue
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{server.server_port}/metrics"
        _log.info("metrics on %s", url)
        return MetricsServer(url, server)
    _log.error(
        "metrics not served: ports %d-%d on %s are all taken (set METRICS_PORT or METRICS_PORT_TRIES)",
        settings.metrics_port,
        settings.metrics_port + settings.metrics_port_tries - 1,
        host,
    )
    return None


def start_process_metrics(settings: Settings, state: StateCollector | None) -> str | None:
    """/metrics of a single-process command (`renewals scheduler`, `renewals run`), with what Redis holds
    when ``state`` is given; its URL, or None."""
    if not settings.metrics_enabled:
        return None
    from prometheus_client import REGISTRY

    metrics()  # every metric present from the first scrape
    if state is not None:
        scheduler_metrics()
    collectors: list[Any] = [REGISTRY]
    if state is not None:
        collectors.append(state)
    served = serve_metrics(settings, _Chain(*collectors))
    return None if served is None else served.url


def serve_worker_metrics() -> int:
    """A dramatiq fork: serve the CLI's worker processes' metrics, aggregated, until the CLI stops."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    settings = load_settings()
    configure_logging(settings)
    folder = multiprocess_dir(settings, os.getppid())
    folder.mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))  # type: ignore[no-untyped-call]
    served = serve_metrics(settings, registry)
    if served is None:
        return 1
    (folder / _URL_FILE).write_text(served.url)
    threading.Event().wait()
    return 0


class Telemetry(Middleware):
    """Worker heartbeats (a thread per worker) and, under the dramatiq CLI, the metrics exposition fork."""

    def __init__(self, settings: Settings, redis_client: Any, keys: Keys, clock: Clock) -> None:
        self.settings = settings
        self.heartbeats = Heartbeats(redis_client, keys)
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process_id = ""
        self._folder = multiprocess_dir(settings, os.getppid()) if "PROMETHEUS_MULTIPROC_DIR" in os.environ else None

    @property
    def forks(self) -> list[Any]:
        return [serve_worker_metrics] if self.settings.metrics_enabled and in_dramatiq_cli() else []

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        metrics()  # every metric present from the first scrape, before the first message
        self._process_id = process_id("worker")
        started_at = self.clock.now().isoformat()
        queues = sorted(worker.queues) if getattr(worker, "queues", None) else ["events", "deliveries"]
        self._stop.clear()

        def run() -> None:
            while True:
                info = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": started_at, "queues": queues}
                url = self._metrics_url()
                if url:
                    info["metrics_url"] = url
                try:
                    interval = self.settings.heartbeat_interval_s
                    self.heartbeats.beat(
                        self._process_id, "worker", now=self.clock.now(), ttl_s=3 * interval, info=info
                    )
                except REDIS_ERRORS as exc:  # the process's outage log says Redis is away, once
                    _log.debug("heartbeat not written: %s", exc)
                except Exception as exc:
                    _log.warning("heartbeat not written: %s", exc)
                if self._stop.wait(self.settings.heartbeat_interval_s):
                    return

        self._thread = threading.Thread(target=run, name="heartbeat", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.heartbeats.stop(self._process_id)
        except REDIS_ERRORS as exc:  # it expires on its own
            _log.debug("heartbeat not removed: %s", exc)
        if self._folder is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), str(self._folder))  # type: ignore[no-untyped-call]

    def _metrics_url(self) -> str | None:
        if self._folder is None:
            return None
        try:
            return (self._folder / _URL_FILE).read_text().strip() or None
        except OSError:
            return None
