"""Real SMTP servers on loopback (aiosmtpd in a thread) that record what arrives and fail on request."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPD
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from worker.config.settings import Settings

__all__ = ["HOST", "PASSWORD", "USERNAME", "ReceivedMessage", "SmtpServer", "Stage"]

HOST = "127.0.0.1"
USERNAME = "renewals"
PASSWORD = "correct horse"

Stage = Literal["MAIL", "RCPT", "DATA"]


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    peer: tuple[str, int]  # the client's address and port: one per connection
    encrypted: bool
    mail_at: float = 0.0  # time.time() when its MAIL command arrived: when the transaction started


@dataclass(frozen=True)
class _Fault:
    stage: Stage
    reply: str | None  # None: close the connection instead of replying


class _Envelope(Envelope):
    """Carries the fault, if any, that a test asked for on this message."""

    def __init__(self) -> None:
        super().__init__()
        self.fault: _Fault | None = None
        self.mail_at = 0.0


class _Recorder:
    """aiosmtpd hooks. They run in the server's thread, and record before replying, so a test that
    has its reply can read what was recorded.

    No attribute may start with ``auth_``: aiosmtpd would take it for an AUTH mechanism.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[ReceivedMessage] = []
        self.peers: list[tuple[str, int]] = []
        self.login_attempts: list[bool] = []
        self.quits = 0
        self.faults: list[_Fault] = []
        self.refused: dict[str, str] = {}
        self.live: set[_RecordingSMTPD] = set()
        self.data_delay_s = 0.0

    async def handle_EHLO(
        self, server: SMTPD, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a handler that has the hook
        peer = cast(tuple[str, int], session.peer)  # aiosmtpd annotates it as str
        with self.lock:
            if peer not in self.peers:
                self.peers.append(peer)
        return responses

    async def handle_MAIL(
        self, server: SMTPD, session: Session, envelope: _Envelope, address: str, mail_options: list[str]
    ) -> str:
        with self.lock:
            envelope.fault = self.faults.pop(0) if self.faults else None
        if (reply := _misbehave(server, envelope, "MAIL")) is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_at = time.time()
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTPD, session: Session, envelope: _Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if (reply := _misbehave(server, envelope, "RCPT")) is not None:
            return reply
        with self.lock:
            if address in self.refused:
                return self.refused[address]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTPD, session: Session, envelope: _Envelope) -> str:
        if (reply := _misbehave(server, envelope, "DATA")) is not None:
            return reply
        assert envelope.mail_from is not None and envelope.original_content is not None
        if self.data_delay_s:
            await asyncio.sleep(self.data_delay_s)
        message = ReceivedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            content=envelope.original_content,
            peer=cast(tuple[str, int], session.peer),
            encrypted=session.ssl is not None,
            mail_at=envelope.mail_at,
        )
        with self.lock:
            self.messages.append(message)
            return f"250 2.0.0 Ok: queued as {len(self.messages)}"

    async def handle_QUIT(self, server: SMTPD, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.quits += 1
        return "221 Bye"


def _misbehave(server: SMTPD, envelope: _Envelope, stage: Stage) -> str | None:
    fault = envelope.fault
    if fault is None or fault.stage != stage:
        return None
    if fault.reply is not None:
        return fault.reply
    assert isinstance(server.transport, asyncio.WriteTransport)
    server.transport.abort()
    # Written to an aborted transport, so it never reaches the client: it sees the connection drop.
    return "421 4.4.2 dropped"


class _RecordingSMTPD(SMTPD):
    event_handler: _Recorder

    def _create_envelope(self) -> _Envelope:
        return _Envelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        with self.event_handler.lock:
            self.event_handler.live.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        with self.event_handler.lock:
            self.event_handler.live.discard(self)
        super().connection_lost(error)

    async def smtp_AUTH(self, arg: str) -> None:
        # Recorded here because aiosmtpd refuses AUTH over plaintext before any handler hook runs.
        with self.event_handler.lock:
            self.event_handler.login_attempts.append(self._tls_protocol is not None)
        await super().smtp_AUTH(arg)


class _Controller(Controller):
    def factory(self) -> _RecordingSMTPD:
        return _RecordingSMTPD(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # Bound to port 0: learn the real port before aiosmtpd connects to it to finish starting up.
        server = cast(asyncio.Server, self.server)
        self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class SmtpServer:
    """A running server: what it received, ways to make it fail, and settings that point at it."""

    def __init__(
        self,
        controller: _Controller,
        recorder: _Recorder,
        *,
        security: Literal["none", "starttls"],
        ca_file: Path | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self._controller = controller
        self._recorder = recorder
        self.host: str = HOST
        self.port: int = controller.port
        self.security = security
        self.ca_file = ca_file
        self.username = username
        self.password = password

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._recorder.lock:
            return list(self._recorder.messages)

    @property
    def connections(self) -> int:
        """Connections that got as far as EHLO (aiosmtpd's own start-up probe does not)."""
        with self._recorder.lock:
            return len(self._recorder.peers)

    @property
    def login_attempts(self) -> list[bool]:
        """One entry per AUTH command received: whether the connection was encrypted at the time."""
        with self._recorder.lock:
            return list(self._recorder.login_attempts)

    @property
    def quits(self) -> int:
        with self._recorder.lock:
            return self._recorder.quits

    def reply_next(self, reply: str, *, at: Stage, messages: int = 1) -> None:
        """Answer ``reply`` (say "451 4.3.0 Try later") at ``at`` in each of the next ``messages`` transactions.

        At RCPT every recipient of the message gets the reply. Each MAIL command starts a transaction,
        so a client's retry counts as the next message.
        """
        with self._recorder.lock:
            self._recorder.faults.extend([_Fault(at, reply)] * messages)

    def drop_next(self, *, at: Stage, messages: int = 1) -> None:
        """Close the connection, without a reply, at ``at`` in each of the next ``messages`` transactions."""
        with self._recorder.lock:
            self._recorder.faults.extend([_Fault(at, None)] * messages)

    def slow_down(self, data_delay_s: float) -> None:
        """Take ``data_delay_s`` over each message's DATA before accepting it, as a loaded server would."""
        with self._recorder.lock:
            self._recorder.data_delay_s = data_delay_s

    def refuse(self, address: str, reply: str = "550 5.1.1 No such user") -> None:
        """Answer ``reply`` to every RCPT for ``address``, for the rest of the test."""
        with self._recorder.lock:
            self._recorder.refused[address] = reply

    def close_connections(self, *, abort: bool = False) -> None:
        """Close every client connection from the server's side, as an idle timeout would.

        ``abort`` skips TLS's goodbye, which waits for a client that may be gone.
        """

        async def close_all() -> None:
            with self._recorder.lock:
                live = list(self._recorder.live)
            for smtpd in live:
                if not isinstance(smtpd.transport, asyncio.WriteTransport):
                    continue
                if abort:
                    smtpd.transport.abort()
                else:
                    smtpd.transport.close()

        asyncio.run_coroutine_threadsafe(close_all(), self._controller.loop).result(timeout=5)

    def make_settings(self, **overrides: Any) -> Settings:
        """Settings pointing at this server; every SMTP field is given so the environment cannot leak in."""
        values: dict[str, Any] = {
            "smtp_host": self.host,
            "smtp_port": self.port,
            "smtp_security": self.security,
            "smtp_ca_file": self.ca_file,
            "smtp_username": self.username,
            "smtp_password": self.password,
            "smtp_timeout_s": 5.0,
            "smtp_pool_size": 2,
        }
        values.update(overrides)
        return Settings(**values)


@contextmanager
def _running(
    *,
    security: Literal["none", "starttls"],
    ca_file: Path | None = None,
    username: str | None = None,
    password: str | None = None,
    **smtpd_options: Any,
) -> Iterator[SmtpServer]:
    recorder = _Recorder()
    controller = _Controller(recorder, hostname=HOST, port=0, server_hostname="localhost", **smtpd_options)
    controller.start()
    server = SmtpServer(controller, recorder, security=security, ca_file=ca_file, username=username, password=password)
    try:
        yield server
    finally:
        # Close what clients left open first: stopping the loop under live transports leaks them.
        server.close_connections(abort=True)
        controller.stop()


@pytest.fixture(scope="session")
def smtp_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def smtp_ca_file(smtp_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test CA as a PEM file, for SMTP_CA_FILE."""
    path = tmp_path_factory.mktemp("smtp-ca") / "ca.pem"
    smtp_ca.cert_pem.write_to_path(path)
    return path


@pytest.fixture(scope="session")
def smtp_server_tls_context(smtp_ca: trustme.CA) -> ssl.SSLContext:
    """The server's side of STARTTLS: a certificate for 127.0.0.1 and localhost, issued by the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    smtp_ca.issue_cert(HOST, "localhost").configure_cert(context)
    return context


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """Plaintext, offering neither STARTTLS nor AUTH."""
    with _running(security="none") as server:
        yield server


@pytest.fixture
def smtp_server_starttls(smtp_server_tls_context: ssl.SSLContext, smtp_ca_file: Path) -> Iterator[SmtpServer]:
    """Offers STARTTLS with a certificate from the test CA; ``make_settings`` trusts that CA."""
    with _running(security="starttls", ca_file=smtp_ca_file, tls_context=smtp_server_tls_context) as server:
        yield server


@pytest.fixture
def smtp_server_auth(smtp_server_tls_context: ssl.SSLContext, smtp_ca_file: Path) -> Iterator[SmtpServer]:
    """STARTTLS, then AUTH (required before MAIL, and refused over plaintext) with USERNAME/PASSWORD."""

    def authenticate(server: SMTPD, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            USERNAME.encode(),
            PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False)

    with _running(
        security="starttls",
        ca_file=smtp_ca_file,
        username=USERNAME,
        password=PASSWORD,
        tls_context=smtp_server_tls_context,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=True,
    ) as server:
        yield server
