"""Child processes the benchmark starts (dramatiq workers, the scheduler, smtp-sink): start, wait, measure, stop.

Each runs in its own session, so stopping it reaches the processes it forked and nothing else.
Every process started here is registered, and ``stop_all`` (also run at exit) ends what is left.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ROOT",
    "CpuMeter",
    "Service",
    "children_of",
    "cpu_seconds",
    "machine_busy_seconds",
    "rss_kib",
    "start_scheduler",
    "start_service",
    "start_workers",
    "stop_all",
    "wait_until",
]

ROOT = Path(__file__).resolve().parent.parent
_READY = "Worker process is ready for action"
_started: list[Service] = []


def wait_until(check: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.05, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what or 'a condition'}")
        time.sleep(interval_s)


@dataclass
class Service:
    """One started process (the leader of its own session) and the log it writes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stopped: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise when the process ended by itself (one stopped on purpose is not checked)."""
        if not self.stopped and self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        """The leader and every process below it."""
        return [self.pid, *children_of(self.pid)]

    def stop(self, *, timeout_s: float = 30.0) -> int | None:
        """SIGTERM the leader (a graceful stop), then SIGKILL its session if it is still there after ``timeout_s``.

        Only the leader is asked: dramatiq's main process passes the signal on to its workers, and a
        worker that gets a second SIGTERM kills itself at once.
        """
        if self.stopped:
            return self.popen.returncode
        self.stopped = True
        members = self.pids()
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.popen.wait(timeout=10)
        # Forked workers may outlive a leader that was killed; they are in its session.
        for pid in members[1:]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if _session_of(pid) == self.pid:
                    os.kill(pid, signal.SIGKILL)
        return self.popen.returncode

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[3])  # state, ppid, pgrp, session


def children_of(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc), depth first."""
    by_parent: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        by_parent.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    stack = list(by_parent.get(pid, []))
    while stack:
        child = stack.pop()
        out.append(child)
        stack.extend(by_parent.get(child, []))
    return sorted(out)


def rss_kib(pid: int) -> int | None:
    """VmRSS of one process in KiB, or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _die_with_parent() -> None:
    """In the child before exec: a SIGTERM when the benchmark dies, even by SIGKILL (Linux only).

    A program that changes its user id (smtp-sink -u) loses this; ``stop_all`` still covers it.
    """
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_service(
    name: str, command: Sequence[str], *, env: Mapping[str, str], log_path: Path, cwd: Path = ROOT
) -> Service:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            list(command),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    service = Service(name, popen, log_path)
    _started.append(service)
    return service


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (the venv's dramatiq, renewals)."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: install the project into this environment")
    return str(path)


def start_workers(
    env: Mapping[str, str],
    *,
    processes: int,
    threads: int,
    queues: Sequence[str],
    log_path: Path,
    module: str = "worker.entrypoint",
    ready_timeout_s: float = 90.0,
) -> Service:
    """``dramatiq MODULE --queues ... --processes P --threads T``, returned once every process is ready."""
    command = [_bin("dramatiq"), module, "--queues", *queues, "--processes", str(processes)]
    command += ["--threads", str(threads)]
    service = start_service(f"dramatiq {module} -p{processes} -t{threads}", command, env=env, log_path=log_path)

    def ready() -> bool:
        service.check_alive()
        return service.log_text().count(_READY) >= processes

    try:
        wait_until(ready, timeout_s=ready_timeout_s, interval_s=0.1, what=f"{processes} dramatiq worker process(es)")
    except BaseException:
        service.stop(timeout_s=5)
        raise
    return service


def start_scheduler(env: Mapping[str, str], *, log_path: Path) -> Service:
    """``renewals scheduler``, the production scheduler loop."""
    return start_service("renewals scheduler", [_bin("renewals"), "scheduler"], env=env, log_path=log_path)


def stop_all() -> None:
    """Stop every process this benchmark started that is still running."""
    while _started:
        service = _started.pop()
        service.stop(timeout_s=10)


atexit.register(stop_all)


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of one process so far, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over every core."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) * _TICK_S, total * _TICK_S


class CpuMeter:
    """CPU seconds used by named groups of processes between ``start()`` and ``stop()``, and the machine's load.

    A group is given as a callable returning its pids, so forked workers are found when asked.
    """

    def __init__(self, groups: Mapping[str, Callable[[], Sequence[int]]]) -> None:
        self._groups = groups
        self._before: dict[str, dict[int, float]] = {}
        self._machine: tuple[float, float] = (0.0, 0.0)
        self._wall = 0.0

    def start(self) -> None:
        self._before = {name: self._sample(pids()) for name, pids in self._groups.items()}
        self._machine = machine_busy_seconds()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        """CPU seconds per group, plus ``machine_busy_fraction`` (0..1 of all cores) and ``wall_s``."""
        out: dict[str, float] = {}
        for name, pids in self._groups.items():
            before = self._before.get(name, {})
            after = self._sample(pids())
            out[name] = round(sum(t - before.get(pid, 0.0) for pid, t in after.items()), 3)
        busy, total = machine_busy_seconds()
        spent = total - self._machine[1]
        out["machine_busy_fraction"] = round((busy - self._machine[0]) / spent, 3) if spent > 0 else 0.0
        out["wall_s"] = round(time.monotonic() - self._wall, 3)
        return out

    @staticmethod
    def _sample(pids: Sequence[int]) -> dict[int, float]:
        out = {}
        for pid in pids:
            seconds = cpu_seconds(pid)
            if seconds is not None:
                out[pid] = seconds
        return out
