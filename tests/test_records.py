"""The stored record layout: round trips, and anything else refused rather than misread."""

from __future__ import annotations

import hashlib

import pytest
from factories import client_updated, owner_changed, partner_updated, renewal_updated

from worker.domain.events import ClientData, OwnerData, PartnerData, RenewalData, parse_event
from worker.state.keys import SEP
from worker.state.ledger import due_member
from worker.state.planning import due_member_prefix
from worker.state.records import _DICTIONARIES_1, decode_payload, encode_payload, read_record, ts_text

# sha256 of each format-1 dictionary. A record inflates only with the dictionary it was deflated
# with: changing one makes every record written with it unreadable. Add a new format instead.
PINNED = {
    PartnerData: "a31aa28c379e5606a11435bac6237dc0284798b186fece84dd274940910f3aae",
    ClientData: "6169fc97302ac18e560ff186736bd81d9b5cbd556c670bf313aa786c32ad88da",
    OwnerData: "d1ece241772e48bf698faa731fc3930c35660f5d16d05ef2b8ea3e5e445f63c8",
    RenewalData: "79817e49181ae18085d010b56748f76e7142d7cdfb13516972cea9dfaa596c79",
}


def stored(ts: int, event_id: str, removed: bool, payload: bytes) -> bytes:
    """A record as the apply script writes it."""
    return f"{ts_text(ts)}{SEP}{event_id}{SEP}{int(removed)}".encode() + payload


@pytest.mark.parametrize(
    ("raw", "cls"),
    [
        (partner_updated(), PartnerData),
        (partner_updated(notify_user=None, timezone="UTC"), PartnerData),
        (client_updated(), ClientData),
        (owner_changed(owner=None), OwnerData),
        (renewal_updated(), RenewalData),
        (renewal_updated(status="cancellation_requested", renewal_manager=None), RenewalData),
    ],
)
def test_every_record_reads_back_as_the_model_it_was_written_from(raw, cls):
    data = parse_event(raw).data
    record = read_record(stored(1_796_303_452_148_248, "evt-1", False, encode_payload(data)))
    assert record is not None
    assert (record.ts, record.event_id, record.removed) == (1_796_303_452_148_248, "evt-1", False)
    assert decode_payload(cls, record.payload) == data


def test_a_record_is_a_fraction_of_its_json():
    data = parse_event(renewal_updated()).data
    assert len(encode_payload(data)) < len(data.model_dump_json()) / 2


@pytest.mark.parametrize("ts", [0, 1, 35, 36, 1_796_303_452_148_248, 2**53 - 1, -1, -62_135_596_800_000_000])
def test_stamps_are_base_36_and_read_back_exactly(ts):
    assert int(ts_text(ts), 36) == ts
    record = read_record(stored(ts, "e", True, b""))
    assert record is not None and record.ts == ts and record.removed
    assert record.stamp == f"{ts_text(ts)}{SEP}e"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"renewal_id": "r1"}',  # a bare JSON record
        b"1796303452148248\x1fe1\x1f0\x1fx",  # an earlier header: the removed flag in its own field
        b"hoqimlixwn\x1fe1\x1f2",  # an unknown flag
        b"HOQ-\x1fe1\x1f0",  # not a base-36 stamp
        b"hoqimlixwn\x1fe1",  # no flag at all
    ],
)
def test_a_value_in_another_layout_is_refused_not_misread(raw):
    with pytest.raises(ValueError, match="layout"):
        read_record(raw)


def test_a_corrupt_or_truncated_payload_is_refused():
    payload = encode_payload(parse_event(client_updated()).data)
    with pytest.raises(ValueError, match="corrupt"):
        decode_payload(ClientData, payload[:-3])
    with pytest.raises(ValueError, match="corrupt"):
        decode_payload(ClientData, payload + b"\x00")
    with pytest.raises(ValueError):
        decode_payload(ClientData, b"\xff\xfe" + payload)


def test_a_removed_record_with_nothing_before_has_no_model():
    record = read_record(stored(5, "e", True, b""))
    assert record is not None and decode_payload(RenewalData, record.payload) is None


@pytest.mark.parametrize("cls", list(PINNED))
def test_the_format_1_dictionaries_never_change(cls):
    assert hashlib.sha256(_DICTIONARIES_1[cls]).hexdigest() == PINNED[cls]


def test_every_due_member_of_a_renewal_is_its_prefix_and_the_reminder_id():
    # The plan write removes a renewal's previous plan by building these members itself.
    assert due_member("p:1", "r%2", "final-notice") == due_member_prefix("p:1", "r%2") + "final-notice"
