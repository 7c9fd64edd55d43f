"""Sampling profiles of running processes with py-spy, summarised as the hottest functions.

py-spy samples from outside the process (``--nonblocking``: the target is never paused), so the
code profiled is exactly the code benchmarked. Only threads doing something are sampled (idle
threads are left out), so a percentage is a share of the time that process spent working.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PySpy", "Recording", "find_py_spy", "summarize"]

_PROCESS = re.compile(r'^process (\d+):"(.*)"$')
_LINE = re.compile(r":\d+\)$")


def find_py_spy() -> str | None:
    """py-spy next to this interpreter (``pip install py-spy`` into the venv), else on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


@dataclass
class Recording:
    name: str
    output: Path
    popen: subprocess.Popen[bytes]

    def stop(self, *, timeout_s: float = 30.0) -> Path | None:
        """End the recording now (py-spy writes what it has on SIGINT) and return the raw profile."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        return self.output if self.output.exists() and self.output.stat().st_size else None


class PySpy:
    def __init__(self, outdir: Path) -> None:
        binary = find_py_spy()
        if binary is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.binary = binary
        self.outdir = outdir
        outdir.mkdir(parents=True, exist_ok=True)

    def record(
        self, name: str, pid: int, *, duration_s: float, subprocesses: bool = True, rate: int = 100, gil: bool = False
    ) -> Recording:
        """Sample ``pid`` (and its children) until ``stop()`` or ``duration_s``.

        ``gil``: only the thread holding the GIL is sampled, so the profile shows where Python spends
        CPU; without it every active thread is, waits on Redis or SMTP replies included.
        """
        output = self.outdir / f"{name}.txt"
        output.unlink(missing_ok=True)
        command = [self.binary, "record", "--pid", str(pid), "--duration", str(max(1, round(duration_s)))]
        command += ["--rate", str(rate), "--format", "raw", "--nonblocking", "-o", str(output)]
        if subprocesses:
            command.append("--subprocesses")
        if gil:
            command.append("--gil")
        log = open(self.outdir / f"{name}.py-spy.log", "wb")  # noqa: SIM115 - the child owns it
        popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        return Recording(name, output, popen)

    def record_both(self, name: str, pid: int, *, duration_s: float, subprocesses: bool = True) -> list[Recording]:
        """Two recordings at once: ``<name>-cpu`` (GIL holder only) and ``<name>-wall`` (every active thread)."""
        return [
            self.record(f"{name}-cpu", pid, duration_s=duration_s, subprocesses=subprocesses, gil=True),
            self.record(f"{name}-wall", pid, duration_s=duration_s, subprocesses=subprocesses),
        ]


def _function(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (path/file.py)``: one entry per function, not per line."""
    return _LINE.sub(")", frame)


def summarize(raw: Path, *, top: int = 15, only_process: str | None = None) -> dict[str, object]:
    """The functions with the most samples: ``self`` (the sample was in that function) and ``total``
    (the function was anywhere on the stack), each as a percentage of all samples.

    ``only_process`` keeps the samples of processes whose command line contains it.
    """
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    processes: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        process = ""
        python_frames = []
        for frame in frames:
            match = _PROCESS.match(frame)
            if match:
                process = f"{match.group(1)} {match.group(2)}"
            else:
                python_frames.append(_function(frame))
        if only_process is not None and only_process not in process:
            continue
        if not python_frames:
            continue
        samples += count
        processes[process] += count
        self_counts[python_frames[-1]] += count
        for function in set(python_frames):
            total_counts[function] += count

    def table(counts: Counter[str], *, below: float = 101.0) -> list[list[object]]:
        rows = [[name, round(100 * n / samples, 1)] for name, n in counts.most_common() if 100 * n / samples < below]
        return rows[:top]

    return {
        "samples": samples,
        "processes": {name: round(100 * n / samples, 1) for name, n in processes.most_common()} if samples else {},
        "self": table(self_counts),
        # Entry points (a thread's run loop, the module) are on nearly every stack: left out.
        "total": table(total_counts, below=95.0),
    }
