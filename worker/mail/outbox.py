"""The embedded default's mailer: each message written as an .eml file in a folder."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Sequence
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

from ..domain.errors import TransientSendError
from .transport import Accepted, Envelope, Prepare, SendResult, check_envelope

__all__ = ["OutboxMailer"]


class OutboxMailer:
    """Writes each message as ``<outbox_dir>/<Message-ID>.eml``: the embedded default, readable by people.

    Naming the file after the Message-ID makes a retried send replace its earlier file instead of
    adding a second copy. The envelope is not written: Bcc-only recipients are not visible in the file.
    """

    def __init__(self, outbox_dir: Path) -> None:
        self._outbox_dir = outbox_dir

    async def send(self, *, sender: str, recipients: Sequence[str], message: bytes) -> SendResult:
        check_envelope(sender, recipients)
        path = self._outbox_dir / _eml_name(message)
        try:
            await asyncio.to_thread(_write_atomically, path, message)
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


def _eml_name(message: bytes) -> str:
    headers = BytesHeaderParser(policy=policy.default).parsebytes(message)
    message_id = str(headers.get("Message-ID", "")).strip().strip("<>")
    if not message_id:
        # Without an id, the bytes are the only name a resend of the same message reproduces.
        return f"{hashlib.sha256(message).hexdigest()}.eml"
    safe = _UNSAFE_IN_FILENAME.sub("_", message_id).lstrip(".")[:150]
    if safe != message_id:
        # Two ids that differ only in unsafe characters must not share a file.
        safe = f"{safe}-{hashlib.sha256(message_id.encode()).hexdigest()[:12]}"
    return f"{safe}.eml"


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers of the folder see the old file or the new one, never half a message."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
