"""How a record is stored: one Redis string, a header the Lua scripts read, then the model deflated.

``<ts> SEP <event id> SEP <removed: 0|1><payload>``: ``ts`` (microseconds since the epoch, base
36, read by the scripts' ``stamp_ts``) and the event id are the stamp of the event that wrote
the record, which the apply script compares against and a plan write checks is unchanged. The
payload is the model's JSON, raw-deflated against a fixed dictionary of its field names, or
nothing. A string costs far less than a hash here: one value longer than
``hash-max-listpack-value`` (64 bytes) turns a whole hash into a hashtable.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from ..domain.events import TRUSTED, ClientData, OwnerData, PartnerData, RenewalData
from .keys import SEP

__all__ = ["StoredRecord", "decode_payload", "encode_payload", "payload_fields", "read_record", "ts_text"]

M = TypeVar("M", bound=BaseModel)

_SEP = SEP.encode()

# The removed flag (0 or 1) also names this layout and its payload format: the model's JSON, raw
# deflate, against the dictionary below. A dictionary must never change once records were written
# with it (they would no longer inflate): a better one needs flags of its own, next to these.
_DICTIONARIES_1: dict[type[BaseModel], bytes] = {
    PartnerData: (
        b'{"name":"","default_owner":"partner","notify_user":null,"locale":"en","timezone":"UTC",'
        b'"default_owner":"hubspot","notify_user":{"name":"","email":"@.com"},"locale":"en","timezone":"Europe/'
    ),
    ClientData: (
        b'{"client_id":"","domain":".com","name":null,"locale":"en","timezone":null,"contacts":{"primary":null,'
        b'"billing":null,"decision_maker":null}}{"client_id":"","domain":".com","name":"","locale":"en",'
        b'"timezone":"Europe/","contacts":{"primary":{"name":"","email":"@.com"},"billing":{"name":"",'
        b'"email":"@.com"},"decision_maker":{"name":"","email":"@.com"}}}'
    ),
    OwnerData: b'{"client_id":"","owner":null,"notify_user":null}{"client_id":"","owner":"partner","notify_user":'
    b'{"name":"","email":"@.com"}}{"client_id":"","owner":"hubspot","notify_user":{"name":"","email":"@.com"}}',
    RenewalData: (
        b'"status":"renewed""status":"confirmed""status":"cancellation_requested","renewal_manager":null}'
        b'{"renewal_id":"","client_id":"","start_date":"20","products":[{"name":"","current_mrr":".00",'
        b'"renewal_mrr":".00"},{"name":"","current_mrr":".00","renewal_mrr":".00"}],"currency":"EUR",'
        b'"current_mrr":".00","renewal_mrr":".00","status":"pending","renewal_manager":{"name":"","email":"@.com"}}'
    ),
}
_WBITS = -15  # raw deflate: no zlib header or checksum (6 bytes a record); a bad payload still fails to inflate


@dataclass(frozen=True)
class StoredRecord:
    """One stored record, split; ``stamp`` is what a plan write checks has not changed since the read."""

    ts: int
    event_id: str
    removed: bool
    payload: bytes

    @property
    def stamp(self) -> str:
        return f"{ts_text(self.ts)}{SEP}{self.event_id}"

    @property
    def updated_at(self) -> datetime:
        return datetime.fromtimestamp(self.ts // 1_000_000, tz=UTC).replace(microsecond=self.ts % 1_000_000)


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_TS = re.compile(rb"-?[0-9a-z]{1,12}")


def ts_text(ts: int) -> str:
    """A timestamp in base 36, as the header holds it (11 characters where decimal takes 16)."""
    if ts < 0:
        return "-" + ts_text(-ts)
    text = ""
    while True:
        ts, digit = divmod(ts, 36)
        text = _DIGITS[digit] + text
        if not ts:
            return text


def read_record(raw: bytes | None) -> StoredRecord | None:
    """Split a stored record; anything not in this layout raises ``ValueError`` rather than be misread."""
    if raw is None:
        return None
    parts = raw.split(_SEP, 2)
    if len(parts) != 3 or not _TS.fullmatch(parts[0]) or parts[2][:1] not in (b"0", b"1"):
        raise ValueError(f"not a stored record in the current layout: {raw[:40]!r}")
    return StoredRecord(int(parts[0], 36), parts[1].decode(), parts[2][:1] == b"1", parts[2][1:])


def encode_payload(model: BaseModel) -> bytes:
    deflate = zlib.compressobj(6, zlib.DEFLATED, _WBITS, 8, zlib.Z_DEFAULT_STRATEGY, _DICTIONARIES_1[type(model)])
    return deflate.compress(model.model_dump_json().encode()) + deflate.flush()


def decode_payload(cls: type[M], payload: bytes) -> M | None:
    """The model in a payload (None when empty); it was validated on the way in, so costly checks are skipped."""
    if not payload:
        return None
    inflate = zlib.decompressobj(_WBITS, _DICTIONARIES_1[cls])
    try:
        text = inflate.decompress(payload) + inflate.flush()
    except zlib.error as exc:
        raise ValueError(f"corrupt stored {cls.__name__}: {exc}") from None
    if not inflate.eof or inflate.unused_data:
        raise ValueError(f"corrupt stored {cls.__name__}: truncated or trailing bytes")
    return cls.model_validate_json(text, context=TRUSTED)


def payload_fields(cls: type[BaseModel], payload: bytes) -> dict[str, Any]:
    """The JSON fields of a payload without building the model (a fifth of the cost): for a scan of many
    records that builds models only of the few it keeps."""
    if not payload:
        return {}
    inflate = zlib.decompressobj(_WBITS, _DICTIONARIES_1[cls])
    try:
        fields: dict[str, Any] = json.loads(inflate.decompress(payload) + inflate.flush())
    except (zlib.error, ValueError) as exc:
        raise ValueError(f"corrupt stored {cls.__name__}: {exc}") from None
    return fields
