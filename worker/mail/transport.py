"""What every way of sending shares: the Mailer interface, its result, and the envelope check.

The SMTP pool (``mailer``) and the .eml folder (``outbox``) both implement it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import getaddresses
from typing import Protocol

from aiosmtplib.email import parse_address

from ..domain.errors import InvalidMessage

__all__ = ["BARE_ADDRESS", "Accepted", "Envelope", "Mailer", "Prepare", "SendResult", "check_envelope"]


@dataclass(frozen=True)
class SendResult:
    """The server's final reply; ``refused`` maps recipients refused for good (5xx) to the server's reply."""

    reply: str
    refused: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Envelope:
    """One message as it goes on the wire: the envelope sender, the recipients, the bytes."""

    sender: str
    recipients: Sequence[str]
    message: bytes


Prepare = Callable[[], Awaitable["Envelope | None"]]
"""Called with a connection in hand, just before MAIL FROM: the message to send now, or None for none."""

Accepted = Callable[[SendResult], None]
"""Called when the server accepted a message, before its connection can carry another one."""


class Mailer(Protocol):
    """Hands messages to their envelope recipients.

    Raises TransientSendError (retry later), PermanentSendError (do not retry) or ConfigError (fix the
    settings); ValueError for an envelope that is not a sender and a non-empty list of addresses.
    """

    async def send(self, *, sender: str, recipients: Sequence[str], message: bytes) -> SendResult: ...

    async def send_checked(self, prepare: Prepare, *, accepted: Accepted | None = None) -> SendResult | None:
        """Send what ``prepare`` returns once a connection is ready, or nothing when it returns None.

        ``prepare`` runs immediately before the transaction (again if a lost connection makes the
        send start over), so what it checks holds when the message goes, not when it was queued.
        ``accepted`` runs before the connection is handed to another send, so its outcome can be
        recorded before the next transaction on that connection starts.
        """
        ...

    async def close(self) -> None: ...


BARE_ADDRESS = re.compile(r"[^\s<>()\[\]\\,;:\"@\x00-\x1f\x7f]+@[^\s<>()\[\]\\,;:\"@\x00-\x1f\x7f]+")


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def check_envelope(sender: str, recipients: Sequence[str]) -> None:
    """Reject a bad envelope (InvalidMessage, a ValueError) before any connection is touched.

    aiosmtplib parses leniently: "a@x, b@x" would go out as "a@x" alone, and a line break would
    fail only after MAIL, in the middle of a transaction.
    """
    if isinstance(recipients, str) or not recipients:
        raise InvalidMessage(f"recipients must be a non-empty sequence of addresses, not {recipients!r}")
    for address in (sender, *recipients):
        if BARE_ADDRESS.fullmatch(address):
            continue
        parsed = getaddresses([address])
        if _CONTROL_CHARACTERS.search(address) or len(parsed) != 1 or not parsed[0][1]:
            raise InvalidMessage(f"not one email address: {address!r}")
        try:
            parse_address(address)  # raises ValueError for what cannot go on an SMTP command line
        except ValueError as exc:
            raise InvalidMessage(str(exc)) from exc
