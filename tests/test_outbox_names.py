"""The outbox names a reminder's .eml file after when, for whom and which reminder, and a resend replaces it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from worker.domain.events import Person
from worker.mail.message import build_message
from worker.mail.outbox import OutboxMailer
from worker.mail.render import RenderedEmail

_EMAIL = RenderedEmail(subject="Renewal for acme.com", text="Hello\n", html="<p>Hello</p>", locale="en")
_TO = Person(name="Jane Doe", email="jane@acme.com")


def _message(tag: str, sent_at: datetime, body: str = "Hello\n") -> bytes:
    email = RenderedEmail(subject=_EMAIL.subject, text=body, html=_EMAIL.html, locale="en")
    return build_message(
        email,
        mail_from="Renewals <renewals@example.com>",
        to=[_TO],
        cc=[],
        reply_to=None,
        message_id="<renewal.abc@example.com>",
        reminder_tag=tag,
        sent_at=sent_at,
    )


def _send(outbox: Path, *messages: bytes) -> None:
    mailer = OutboxMailer(outbox)

    async def send_all() -> None:
        for message in messages:
            await mailer.send(sender="renewals@example.com", recipients=[_TO.email], message=message)

    asyncio.run(send_all())


def test_a_reminder_file_is_named_by_due_minute_partner_renewal_and_reminder(tmp_path: Path) -> None:
    _send(tmp_path, _message("northwind/r-1001/first-notice", datetime(2026, 12, 30, 14, 0, 7, tzinfo=UTC)))

    assert [p.name for p in tmp_path.iterdir()] == ["20261230T1400Z_northwind_r-1001_first-notice.eml"]


def test_a_retried_send_at_a_later_minute_replaces_its_own_file_and_leaves_other_reminders(tmp_path: Path) -> None:
    first = _message("northwind/r-1001/first-notice", datetime(2026, 12, 30, 14, 0, tzinfo=UTC), "first try\n")
    other = _message("northwind/r-1002/first-notice", datetime(2026, 12, 30, 14, 0, tzinfo=UTC))
    retry = _message("northwind/r-1001/first-notice", datetime(2026, 12, 30, 14, 3, tzinfo=UTC), "second try\n")

    _send(tmp_path, first, other, retry)

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "20261230T1400Z_northwind_r-1002_first-notice.eml",
        "20261230T1403Z_northwind_r-1001_first-notice.eml",
    ]
    assert b"second try" in (tmp_path / names[1]).read_bytes()


def test_ids_with_underscores_or_unsafe_characters_never_share_a_file_or_leave_the_folder(tmp_path: Path) -> None:
    at = datetime(2026, 12, 30, 14, 0, tzinfo=UTC)
    outbox = tmp_path / "outbox"

    _send(outbox, _message("a_b/c/first", at), _message("a/b_c/first", at), _message("../x/first", at))

    names = sorted(p.name for p in outbox.iterdir())
    assert len(names) == 3
    assert all(name.startswith("20261230T1400Z_") and name.endswith(".eml") and "/" not in name for name in names)
    assert list(tmp_path.iterdir()) == [outbox]


def test_two_users_digests_of_one_partner_and_week_get_a_file_each(tmp_path: Path) -> None:
    sent_at = datetime(2026, 12, 21, 8, 0, tzinfo=UTC)
    _send(
        tmp_path,
        _message("northwind/digest/2026-W52/anna@northwind.agency", sent_at, body="Anna's digest\n"),
        _message("northwind/digest/2026-W52/jonas@northwind.agency", sent_at, body="Jonas's digest\n"),
    )

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "20261221T0800Z_northwind_digest_2026-W52_anna@northwind.agency.eml",
        "20261221T0800Z_northwind_digest_2026-W52_jonas@northwind.agency.eml",
    ]
