"""Postfix's smtp-sink on a free loopback port, capturing each message so the benchmark can count them.

smtp-sink writes one file per mail transaction (``-d``); between phases the capture folder is moved
aside and read: how many messages arrived and their Message-IDs. smtp-source, its companion, is the
machine's physical SMTP limit. Postfix is installed from Debian's packages when missing (as root),
without starting the Postfix mail system itself.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .procs import Service, start_service, wait_until

__all__ = [
    "Sample",
    "SinkBatch",
    "SmtpSink",
    "SmtpTarget",
    "find_postfix_tool",
    "free_port",
    "parse_capture_file",
    "postfix_tool",
    "read_capture",
]

_CANDIDATE_DIRS = ("/usr/sbin", "/usr/lib/postfix/sbin", "/usr/libexec/postfix", "/usr/local/sbin")
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Sample:
    """One received message as its client sent it: envelope and content (CRLF line ends)."""

    sender: str
    recipients: tuple[str, ...]
    content: bytes


@dataclass(frozen=True)
class SinkBatch:
    """What a server received during one phase, with one of the messages as a sample."""

    messages: int
    message_ids: Counter[str]
    sample: Sample | None = None

    @property
    def duplicates(self) -> int:
        return sum(count - 1 for count in self.message_ids.values() if count > 1)

    @property
    def without_id(self) -> int:
        return self.messages - sum(self.message_ids.values())


class SmtpTarget(Protocol):
    """An SMTP server on loopback whose received messages can be taken phase by phase."""

    host: str
    port: int

    def take(self) -> SinkBatch: ...


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def find_postfix_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in _CANDIDATE_DIRS:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def _install_postfix() -> None:
    """apt-get install postfix, non-interactively, without a mail configuration (nothing is started)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError("smtp-sink not found: install Postfix (Debian: apt-get install postfix) or run as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["debconf-set-selections"],
        input=b"postfix postfix/main_mailer_type select No configuration\n",
        env=env,
        check=True,
        timeout=60,
    )
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postfix"]
    if subprocess.run(install, env=env, timeout=600, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, timeout=600, capture_output=True)
        subprocess.run(install, env=env, check=True, timeout=600, capture_output=True)


def postfix_tool(name: str) -> str:
    """The path of smtp-sink or smtp-source, installing Postfix first when it is missing."""
    path = find_postfix_tool(name)
    if path is None:
        _install_postfix()
        path = find_postfix_tool(name)
    if path is None:
        raise RuntimeError(f"{name} is still missing after installing Postfix")
    return path


def _angle(text: bytes) -> str:
    return text.strip().decode("utf-8", "replace").removeprefix("<").split(">", 1)[0]


def parse_capture_file(data: bytes) -> Sample:
    """Split smtp-sink's capture file into the envelope (its X- records) and the message after its Received header."""
    lines = data.split(b"\n")
    sender = ""
    recipients: list[str] = []
    i = 0
    while i < len(lines) and not lines[i].startswith(b"Received:"):
        if lines[i].startswith(b"X-Mail-Args:"):
            sender = _angle(lines[i][len(b"X-Mail-Args:") :])
        elif lines[i].startswith(b"X-Rcpt-Args:"):
            recipients.append(_angle(lines[i][len(b"X-Rcpt-Args:") :]))
        i += 1
    i += 1
    while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
        i += 1  # the Received header's continuation lines
    body = lines[i:]
    while body and body[-1] == b"":
        body.pop()  # the capture ends with an empty line of smtp-sink's
    return Sample(sender, tuple(recipients), b"".join(line.rstrip(b"\r") + b"\r\n" for line in body))


def _capture_parent() -> str | None:
    """A memory file system when there is one: on a disk, creating a file per message makes the
    sink, not the client, the bottleneck (measured here: 1,650 vs 4,000 messages/s of 6.5 kB)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        stats = os.statvfs(shm)
        if stats.f_bavail * stats.f_frsize > 2 << 30:
            return str(shm)
    return None


def read_capture(folder: Path) -> SinkBatch:
    """Count smtp-sink's capture files under ``folder`` and collect each message's Message-ID."""
    ids: Counter[str] = Counter()
    messages = 0
    sample = None
    if not folder.exists():
        return SinkBatch(0, ids)
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        messages += 1
        if sample is None:
            sample = parse_capture_file(path.read_bytes())
        with open(path, "rb") as handle:
            head = handle.read(16_384)
        for line in head.split(b"\n"):
            if not line.strip():
                break  # smtp-sink's own headers and the message's headers end at the first empty line
            if line[:11].lower() == b"message-id:":
                ids[line[11:].strip().decode("ascii", "replace")] += 1
                break
    return SinkBatch(messages, ids, sample)


class SmtpSink:
    """A running smtp-sink. ``take()`` returns what arrived since the previous call."""

    def __init__(self, workdir: Path, *, capture: bool = True, backlog: int = 1024, max_sessions: int = 512) -> None:
        self.binary = postfix_tool("smtp-sink")
        self.host = HOST
        self.port = 0
        self.capture = capture
        self._logs = workdir / "logs"
        self._root = Path(tempfile.mkdtemp(prefix="bench-sink-", dir=_capture_parent()))
        self._live = self._root / "live"
        self._taken = 0
        self._backlog = backlog
        self._max_sessions = max_sessions
        self._service: Service | None = None

    @property
    def capture_dir(self) -> Path:
        return self._root

    @property
    def pid(self) -> int | None:
        return self._service.pid if self._service is not None else None

    def start(self) -> SmtpSink:
        command = [self.binary]
        if os.geteuid() == 0:
            # smtp-sink refuses to run as root; its captures then need a folder "nobody" may write.
            command += ["-u", "nobody"]
            nobody = pwd.getpwnam("nobody")
            os.chmod(self._root, 0o755)
            os.chown(self._root, nobody.pw_uid, nobody.pw_gid)
        if self.capture:
            # A template without strftime fields: every file lands in one folder, named by a random suffix.
            command += ["-d", f"{self._live}/m."]
        command += ["-m", str(self._max_sessions)]
        for _ in range(5):
            self.port = free_port()
            service = start_service(
                "smtp-sink",
                [*command, f"inet:{self.host}:{self.port}", str(self._backlog)],
                env=dict(os.environ),
                log_path=self._logs / f"smtp-sink-{self.port}.log",
            )
            try:
                wait_until(functools.partial(self._answers, service), timeout_s=5, what="smtp-sink to listen")
            except (TimeoutError, RuntimeError):
                service.stop(timeout_s=2)
                continue
            self._service = service
            return self
        raise RuntimeError("smtp-sink did not start")

    def _answers(self, service: Service) -> bool:
        service.check_alive()
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=1) as sock:
            return sock.recv(64).startswith(b"220")
        return False

    def take(self) -> SinkBatch:
        """Move the capture folder aside (smtp-sink makes a new one) and read it."""
        if not self.capture:
            return SinkBatch(0, Counter())
        time.sleep(0.2)  # the last files are closed just after their 250 reply
        self._taken += 1
        if not self._live.exists():
            return SinkBatch(0, Counter())
        taken = self._root / f"taken-{self._taken}"
        self._live.rename(taken)
        try:
            return read_capture(taken)
        finally:
            shutil.rmtree(taken, ignore_errors=True)

    def stop(self) -> None:
        if self._service is not None:
            self._service.stop(timeout_s=5)
            self._service = None
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
