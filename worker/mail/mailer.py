"""Delivery of rendered messages: a pool of persistent SMTP connections, or .eml files in a folder."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path

from aiosmtplib import (
    SMTP,
    SMTPException,
    SMTPHeloError,
    SMTPRecipientRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPStatus,
    SMTPTimeoutError,
)
from aiosmtplib.email import parse_address

from ..config.settings import Settings
from ..domain.errors import ConfigError, PermanentSendError, RenewalsError, TransientSendError
from .outbox import OutboxMailer
from .transport import BARE_ADDRESS, Accepted, Envelope, Mailer, Prepare, SendResult, check_envelope

__all__ = ["Mailer", "SendResult", "SmtpPool", "build_mailer", "check_envelope"]


def build_mailer(settings: Settings) -> Mailer:
    """The SMTP pool when SMTP_HOST is set, else the outbox folder (the embedded default)."""
    if settings.smtp_host:
        return SmtpPool(settings)
    return OutboxMailer(settings.outbox_dir)


class _BeforeTransaction(Exception):
    """What ``prepare`` (or the envelope it returned) raised: nothing was said on the connection."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _Slot:
    """One place in the pool; its connection is made on first use and replaced when it breaks."""

    __slots__ = ("_transport", "smtp")

    def __init__(self) -> None:
        self.smtp: SMTP | None = None
        self._transport: asyncio.BaseTransport | None = None

    def hold(self, smtp: SMTP) -> None:
        self.smtp, self._transport = smtp, smtp.transport

    def discard(self) -> None:
        """Close at once: a TLS goodbye (close_notify) waits on the server and can outlive the loop."""
        if self.smtp is not None:
            self.smtp.close()
        if isinstance(self._transport, asyncio.WriteTransport):
            self._transport.abort()
        self.smtp = self._transport = None


class SmtpPool:
    """Up to ``smtp_pool_size`` persistent connections, shared by concurrent sends on one event loop.

    Nothing asyncio is created before the first send, so the pool can be built in one thread and used
    from the loop dramatiq's AsyncIO middleware runs in another.

    Error translation: 4xx replies, refused or lost connections and timeouts raise TransientSendError;
    5xx replies raise PermanentSendError, with ``recipients`` naming the addresses refused at RCPT
    (empty when the server refused the message itself, at MAIL or DATA). A session the server
    refuses for good (a failed login, 535 for bad credentials, or a 5xx greeting) and settings it
    cannot honour (no STARTTLS, no AUTH, an untrusted certificate) raise ConfigError: nothing is
    wrong with the message, so its delivery is retried with backoff while ops fix the settings.
    """

    def __init__(self, settings: Settings) -> None:
        if not settings.smtp_host:
            raise ConfigError("SmtpPool needs SMTP_HOST")
        self._settings = settings
        self._where = f"{settings.smtp_host}:{settings.smtp_port_effective}"
        self._tls_context = None if settings.smtp_security == "none" else _client_tls_context(settings.smtp_ca_file)
        # A LIFO queue hands out the connection used last: sequential sends keep reusing one warm
        # connection instead of cycling through (and opening) all of them.
        self._slots: asyncio.LifoQueue[_Slot] | None = None
        self._closed = False

    async def send(self, *, sender: str, recipients: Sequence[str], message: bytes) -> SendResult:
        check_envelope(sender, recipients)
        envelope = Envelope(sender, recipients, message)

        async def prepare() -> Envelope:
            return envelope

        result = await self.send_checked(prepare)
        assert result is not None  # prepare always returns the envelope
        return result

    async def send_checked(self, prepare: Prepare, *, accepted: Accepted | None = None) -> SendResult | None:
        if self._closed:
            raise RuntimeError("SmtpPool is closed")
        slots = self._get_slots()
        slot = await slots.get()
        try:
            try:
                result = await self._send_on(slot, prepare)
            except ConnectionError:
                # Most often the server closed a connection that sat idle in the pool; only a fresh
                # connection tells whether the server itself is in trouble. The send starts over,
                # and so does its check.
                slot.discard()
                try:
                    result = await self._send_on(slot, prepare)
                except ConnectionError as exc:
                    slot.discard()
                    raise TransientSendError(f"SMTP {self._where}: connection lost twice while sending: {exc}") from exc
            if result is not None and accepted is not None:
                accepted(result)
            return result
        except _BeforeTransaction as exc:
            # The check or the message failed before MAIL FROM: the connection is as good as it was.
            raise exc.error from None
        except RenewalsError:
            raise
        except BaseException:
            # Cancelled or failed mid-transaction: the connection's state is unknown.
            slot.discard()
            raise
        finally:
            if slot.smtp is not None and not slot.smtp.is_connected:
                slot.discard()  # aiosmtplib closed it (421, timeout); finish that now
            slots.put_nowait(slot)

    async def close(self) -> None:
        """QUIT every connection, after sends in flight have handed theirs back."""
        self._closed = True
        slots, self._slots = self._slots, None
        if slots is None:
            return
        for _ in range(self._settings.smtp_pool_size):
            slot = await slots.get()
            if slot.smtp is not None and slot.smtp.is_connected:
                with contextlib.suppress(SMTPException, OSError):
                    await slot.smtp.quit()
            slot.discard()

    def _get_slots(self) -> asyncio.LifoQueue[_Slot]:
        if self._slots is None:
            self._slots = asyncio.LifoQueue()
            for _ in range(self._settings.smtp_pool_size):
                self._slots.put_nowait(_Slot())
        return self._slots

    async def _send_on(self, slot: _Slot, prepare: Prepare) -> SendResult | None:
        smtp = slot.smtp
        if smtp is None or not smtp.is_connected:
            slot.discard()
            smtp = await self._connect(slot)
        try:
            envelope = await prepare()
            if envelope is not None:
                check_envelope(envelope.sender, envelope.recipients)
        except Exception as exc:
            raise _BeforeTransaction(exc) from exc
        if envelope is None:
            return None
        return await _transaction(smtp, self._where, envelope.sender, envelope.recipients, envelope.message)

    async def _connect(self, slot: _Slot) -> SMTP:
        settings = self._settings
        smtp = SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port_effective,
            timeout=settings.smtp_timeout_s,
            use_tls=settings.smtp_security == "tls",
            # Explicit False for "none": aiosmtplib's default (None) upgrades only when offered, and
            # silently stays in plaintext when a man in the middle strips the offer.
            start_tls=settings.smtp_security == "starttls",
            tls_context=self._tls_context,
        )
        try:
            await smtp.connect()  # closes the connection itself when it fails
            slot.hold(smtp)
            await _greet(smtp)
            if settings.smtp_username is not None:
                # Settings already refuse SMTP_SECURITY=none with a username; this holds even for
                # settings built without validation.
                if smtp.get_transport_info("sslcontext") is None:
                    raise ConfigError(
                        f"SMTP {self._where}: refusing to send credentials over an unencrypted connection"
                    )
                await smtp.login(settings.smtp_username, settings.smtp_password or "")
        except BaseException as exc:
            slot.discard()
            if isinstance(exc, Exception) and not isinstance(exc, RenewalsError):
                raise _connect_error(self._where, exc) from exc
            raise
        return smtp


async def _transaction(smtp: SMTP, where: str, sender: str, recipients: Sequence[str], message: bytes) -> SendResult:
    """MAIL, RCPT for each recipient, DATA; connection losses propagate for the pool to retry."""
    options, encoding = _mail_options(smtp, where, sender, recipients, message)
    stage = "MAIL"
    try:
        try:
            await _mail(smtp, sender, options, encoding)
            stage = "RCPT"
            refusals: dict[str, SMTPRecipientRefused] = {}
            for recipient in recipients:
                try:
                    await _rcpt(smtp, recipient, encoding)
                except SMTPRecipientRefused as exc:
                    refusals[recipient] = exc
            deferred = {address: exc for address, exc in refusals.items() if not _is_permanent(exc.code)}
            if deferred:
                # The whole message waits, and DATA is never sent: a partial delivery now would leave
                # the retry to choose between resending to everyone (duplicates) or tracking who got
                # it. Deferring for all keeps the retry a plain resend to the same list.
                raise _translate(next(iter(deferred.values())), where, "RCPT", _describe(deferred))
            if len(refusals) == len(recipients):
                first = next(iter(refusals.values()))
                raise PermanentSendError(
                    f"SMTP {where} refused every recipient at RCPT: {_describe(refusals)}",
                    code=first.code,
                    recipients=tuple(refusals),
                )
            stage = "DATA"
            response = await smtp.data(message)
        except SMTPResponseException as exc:
            if not (_is_permanent(exc.code) or _is_transient(exc.code)):
                smtp.close()  # a reply that is not SMTP: the connection is out of step
            raise _translate(exc, where, stage, f"{exc.code} {exc.message}") from exc
    except (TransientSendError, PermanentSendError):
        await _reset(smtp)
        raise
    except SMTPTimeoutError as exc:
        # Not retried here: after DATA the server may have queued the message already.
        raise TransientSendError(f"SMTP {where}: timed out at {stage}: {exc}") from exc
    refused = {address: f"{exc.code} {exc.message}" for address, exc in refusals.items()}
    return SendResult(reply=f"{response.code} {response.message}", refused=refused)


async def _greet(smtp: SMTP) -> None:
    """EHLO (HELO if refused) once per connection, so the first message already sees the extensions."""
    if not smtp.is_ehlo_or_helo_needed:
        return
    try:
        await smtp.ehlo()
    except SMTPHeloError:
        if not smtp.is_connected:
            raise
        await smtp.helo()


# aiosmtplib's mail() and rcpt() run email.utils.parseaddr on every address, a fifth of the CPU a
# reminder costs; these send the same command lines with the mailbox checked once by _mailbox.
async def _mail(smtp: SMTP, sender: str, options: Sequence[str], encoding: str) -> None:
    await _greet(smtp)
    line = b"FROM:<" + _mailbox(sender).encode(encoding) + b">"
    response = await smtp.execute_command(b"MAIL", line, *(option.encode("ascii") for option in options))
    if response.code != SMTPStatus.completed:
        raise SMTPSenderRefused(response.code, response.message, sender)


async def _rcpt(smtp: SMTP, recipient: str, encoding: str) -> None:
    response = await smtp.execute_command(b"RCPT", b"TO:<" + _mailbox(recipient).encode(encoding) + b">")
    if response.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
        raise SMTPRecipientRefused(response.code, response.message, recipient)


# A bare addr-spec of the kind email-validator accepts (no quoted local part, display name,
# brackets, spaces or commas): safe on an SMTP command line as it is. Anything else goes through
# the lenient parsers and their checks.
def _mailbox(address: str) -> str:
    """The address as it goes between < and > on MAIL and RCPT."""
    if BARE_ADDRESS.fullmatch(address):
        return address
    return parse_address(address)


def _mail_options(
    smtp: SMTP, where: str, sender: str, recipients: Sequence[str], message: bytes
) -> tuple[list[str], str]:
    options = []
    if smtp.supports_extension("size"):
        options.append(f"SIZE={len(message)}")
    if not message.isascii() and smtp.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
    if all(_mailbox(address).isascii() for address in (sender, *recipients)):
        return options, "ascii"
    if not smtp.supports_extension("smtputf8"):
        raise PermanentSendError(
            f"SMTP {where} does not support SMTPUTF8, needed for non-ASCII addresses",
            recipients=tuple(r for r in recipients if not _mailbox(r).isascii()),
        )
    return [*options, "SMTPUTF8"], "utf-8"


async def _reset(smtp: SMTP) -> None:
    """Clear a failed transaction so the connection can carry the next message, or close it."""
    if not smtp.is_connected:
        return
    try:
        await smtp.rset()
    except (SMTPException, OSError):
        smtp.close()


def _is_transient(code: int) -> bool:
    return 400 <= code < 500


def _is_permanent(code: int) -> bool:
    return 500 <= code < 600


def _describe(refusals: Mapping[str, SMTPRecipientRefused]) -> str:
    return "; ".join(f"{address}: {exc.code} {exc.message}" for address, exc in refusals.items())


def _translate(exc: SMTPResponseException, where: str, stage: str, detail: str) -> RenewalsError:
    if _is_permanent(exc.code):
        return PermanentSendError(f"SMTP {where} refused the message at {stage}: {detail}", code=exc.code)
    return TransientSendError(f"SMTP {where} deferred the message at {stage}: {detail}", code=exc.code)


def _connect_error(where: str, exc: Exception) -> RenewalsError:
    if isinstance(exc, SMTPResponseException):
        if _is_permanent(exc.code):
            hint = " (check SMTP_USERNAME and SMTP_PASSWORD)" if exc.code in (530, 534, 535) else ""
            return ConfigError(f"SMTP {where} refused the session: {exc.code} {exc.message}{hint}")
        return TransientSendError(f"SMTP {where} deferred the session: {exc.code} {exc.message}", code=exc.code)
    if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
        return ConfigError(f"SMTP {where}: TLS failed (is the CA in SMTP_CA_FILE, is the port right?): {exc}")
    if isinstance(exc, OSError | SMTPTimeoutError):  # refused, unreachable, lost, timed out
        return TransientSendError(f"SMTP {where}: cannot connect: {exc}")
    # What remains are capabilities the settings ask for and the server lacks: STARTTLS, AUTH.
    return ConfigError(f"SMTP {where}: {exc}")


def _client_tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system's CAs, plus SMTP_CA_FILE when set (private CAs, tests)."""
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except OSError as exc:
            raise ConfigError(f"invalid setting SMTP_CA_FILE: cannot load {ca_file}: {exc}") from exc
    return context
