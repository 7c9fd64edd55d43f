"""The embedded default's mailer: each message written as an .eml file in a folder."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

from ..domain.errors import TransientSendError
from .transport import Accepted, Envelope, Prepare, SendResult, check_envelope

__all__ = ["OutboxMailer"]


class OutboxMailer:
    """Writes each message as an ``.eml`` file in ``outbox_dir``: the embedded default, readable by people.

    A reminder's file is named so a person finds it without opening it: the minute it was sent for
    (its Date, in UTC), partner, renewal and reminder, ``20261230T1400Z_northwind_r-1001_first-notice.eml``.
    A retried send is dated later, so it removes the earlier file of the same reminder rather than
    adding a second one. A message without the reminder tag is named after its Message-ID. The
    envelope is not written: Bcc-only recipients are not visible in the file.
    """

    def __init__(self, outbox_dir: Path) -> None:
        self._outbox_dir = outbox_dir

    async def send(self, *, sender: str, recipients: Sequence[str], message: bytes) -> SendResult:
        check_envelope(sender, recipients)
        name, same_reminder = _eml_name(message)
        path = self._outbox_dir / name
        try:
            await asyncio.to_thread(_write_atomically, path, message, same_reminder)
        except OSError as exc:
            raise TransientSendError(f"cannot write {path}: {exc}") from exc
        return SendResult(reply=f"250 written to {path}")

    async def send_checked(self, prepare: Prepare, *, accepted: Accepted | None = None) -> SendResult | None:
        envelope: Envelope | None = await prepare()
        if envelope is None:
            return None
        result = await self.send(sender=envelope.sender, recipients=envelope.recipients, message=envelope.message)
        if accepted is not None:
            accepted(result)
        return result

    async def close(self) -> None:
        """Nothing to release: each send opens and closes its own file."""


_UNSAFE_IN_FILENAME = re.compile(r"[^A-Za-z0-9._@+=-]")
_STAMP = re.compile(r"^[0-9]{8}T[0-9]{4}Z_")
_STAMP_LENGTH = len("20261230T1400Z_")


def _safe(text: str, limit: int) -> str:
    safe = _UNSAFE_IN_FILENAME.sub("_", text).lstrip(".")[:limit]
    if safe != text:
        # Two names that differ only in unsafe characters must not share a file.
        safe = f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    return safe


def _reminder_name(tag: str, date_header: object) -> tuple[str, str] | None:
    """``<stamp>_<partner>_<renewal>_<reminder>.eml`` and the part after the stamp, or None without a tag.

    A digest's tag has a fourth part, its user (``northwind/digest/2026-W52/anna@…``): one file each.
    """
    parts = tag.split("/")
    moment = getattr(date_header, "datetime", None)
    if len(parts) not in (3, 4) or not all(parts) or not isinstance(moment, datetime) or moment.tzinfo is None:
        return None
    # An underscore inside an id is escaped, so "a_b"/"c" and "a"/"b_c" cannot share a name.
    suffix = "_".join(_safe(part.replace("_", "=5F"), 60) for part in parts) + ".eml"
    return f"{moment.astimezone(UTC):%Y%m%dT%H%MZ}_{suffix}", suffix


def _eml_name(message: bytes) -> tuple[str, str | None]:
    """The file name, and the name after the stamp that every file of the same reminder shares."""
    headers = BytesHeaderParser(policy=policy.default).parsebytes(message)
    tag = str(headers.get("X-Renewal-Reminder", "")).strip()
    if tag:
        with contextlib.suppress(ValueError, TypeError):
            named = _reminder_name(tag, headers.get("Date"))
            if named is not None:
                return named
    message_id = str(headers.get("Message-ID", "")).strip().strip("<>")
    if not message_id:
        # Without an id, the bytes are the only name a resend of the same message reproduces.
        return f"{hashlib.sha256(message).hexdigest()}.eml", None
    return f"{_safe(message_id, 150)}.eml", None


def _write_atomically(path: Path, data: bytes, same_reminder: str | None = None) -> None:
    """Readers of the folder see the old file or the new one, never half a message.

    With ``same_reminder``, an earlier file of the same reminder (sent for another minute) goes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        if same_reminder is not None:
            for other in path.parent.iterdir():
                name = other.name
                if name != path.name and name[_STAMP_LENGTH:] == same_reminder and _STAMP.match(name):
                    with contextlib.suppress(FileNotFoundError):
                        other.unlink()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
