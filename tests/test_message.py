"""Building reminder messages and parsing them back: parts, headers, encodings, injection attempts."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from email import message_from_bytes
from email.header import decode_header, make_header
from email.headerregistry import Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.domain.errors import ConfigError
from worker.domain.events import Person
from worker.mail.message import (
    build_message,
    envelope_recipients,
    message_id_for,
    needs_smtputf8,
    parse_message,
)
from worker.mail.render import RenderedEmail

SENT_AT = datetime(2026, 3, 18, 9, 30, tzinfo=timezone(timedelta(hours=1)))
MESSAGE_ID = message_id_for("p-1", "r-1", "first-notice", domain="renewals.example.com")
RENDERED = RenderedEmail(
    subject="Ihre Vertragsverlängerung für bücher.de steht bevor",
    text="Guten Tag,\n\nder Vertrag für bücher.de verlängert sich am 1. Juni 2026.\nSumme: 1.250,00\xa0€ = 100 %\n",
    html='<!DOCTYPE html><html lang="de"><body><p style="color: red;">Guten Tag, bücher.de</p></body></html>',
    locale="de",
)
ZOFIA = Person(name="Zofia Łukasiewicz", email="zofia@bücher.de")
BILLING = Person(name="Billing Dept", email="billing@example.com")
ASA = Person(name="Åsa Berg", email="asa@agentur.se")
MANAGER = Person(name="Jan Müller", email="jan@platform.example")


def build(
    *,
    rendered: RenderedEmail = RENDERED,
    to: Sequence[Person] = (ZOFIA, BILLING),
    cc: Sequence[Person] = (ASA,),
    reply_to: Person | None = MANAGER,
    mail_from: str = "Renewals <renewals@example.com>",
    reminder_tag: str = "r-1/first-notice",
) -> bytes:
    return build_message(
        rendered,
        mail_from=mail_from,
        to=to,
        cc=cc,
        reply_to=reply_to,
        message_id=MESSAGE_ID,
        reminder_tag=reminder_tag,
        sent_at=SENT_AT,
    )


def unsafe_person(name: str, email: str = "x@example.com") -> Person:
    # Skips the event validation on purpose: the builder must defend itself.
    return Person.model_construct(name=name, email=email)


def test_a_message_has_the_text_part_then_the_html_part_in_utf8() -> None:
    message = parse_message(build())
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    assert text.get_content_charset() == html.get_content_charset() == "utf-8"
    assert text.get_content().replace("\r\n", "\n") == RENDERED.text
    assert html.get_content() == RENDERED.html
    assert message.defects == [] and text.defects == [] and html.defects == []


def test_headers_decode_to_the_original_strings() -> None:
    message = parse_message(build())
    assert str(message["Subject"]) == RENDERED.subject
    assert message["From"].addresses == (Address("Renewals", "renewals", "example.com"),)
    assert [(a.display_name, a.addr_spec) for a in message["To"].addresses] == [
        ("Zofia Łukasiewicz", "zofia@xn--bcher-kva.de"),
        ("Billing Dept", "billing@example.com"),
    ]
    assert [(a.display_name, a.addr_spec) for a in message["Cc"].addresses] == [("Åsa Berg", "asa@agentur.se")]
    assert [(a.display_name, a.addr_spec) for a in message["Reply-To"].addresses] == [
        ("Jan Müller", "jan@platform.example")
    ]
    assert message["Date"].datetime == SENT_AT
    assert message["Message-ID"] == MESSAGE_ID
    assert message["X-Renewal-Reminder"] == "r-1/first-notice"
    assert message["Content-Language"] == "de"
    assert message["MIME-Version"] == "1.0"


def test_the_raw_message_is_ascii_with_crlf_lines_of_at_most_78_characters() -> None:
    data = build()
    assert data.isascii()
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 78


def test_the_message_id_is_deterministic_and_differs_per_reminder() -> None:
    again = message_id_for("p-1", "r-1", "first-notice", domain="renewals.example.com")
    assert again == MESSAGE_ID
    assert re.fullmatch(r"<renewal\.[0-9a-f]{32}@renewals\.example\.com>", MESSAGE_ID)
    assert message_id_for("p-1", "r-1", "second-notice", domain="renewals.example.com") != MESSAGE_ID
    # Ids are combined unambiguously: moving a "/" from one id to the next gives another id.
    assert message_id_for("p", "r/x", "y", domain="d.example") != message_id_for("p", "r", "x/y", domain="d.example")
    assert message_id_for("p", "r", "x", domain="bücher.de").endswith("@xn--bcher-kva.de>")


def test_building_twice_gives_the_same_bytes() -> None:
    assert build() == build()


def test_cc_and_reply_to_are_omitted_when_there_are_none() -> None:
    message = parse_message(build(cc=(), reply_to=None))
    assert "Cc" not in message
    assert "Reply-To" not in message


@pytest.mark.parametrize(
    "name",
    [
        "Zofia Łukasiewicz",
        'Doe, John "JD"',
        "O'Brien <boss@evil.example>",
        "Dr. Who; x@y",
        "back\\slash",
        "=?utf-8?q?not_an_encoded_word?=",
        "Łódź Żółć Gdańsk",
        "李小龍",
        "Jan Müller, Head of Renewals (EMEA)",
    ],
)
def test_display_names_with_specials_or_non_ascii_round_trip_as_one_address(name: str) -> None:
    message = parse_message(build(to=[unsafe_person(name, "a@example.com")], cc=(), reply_to=None))
    (address,) = message["To"].addresses
    assert address.display_name == name
    assert address.addr_spec == "a@example.com"


def test_a_long_non_ascii_name_is_split_into_encoded_words_that_rfc_2047_readers_join() -> None:
    name = "Łódź Łódź Łódź Łódź Łódź Łódź Łódź Łódź"
    raw = message_from_bytes(build(to=[unsafe_person(name, "a@example.com")], cc=(), reply_to=None))["To"]
    phrase = raw.rpartition("<")[0].rstrip()
    assert phrase.count("=?utf-8?b?") > 1
    # Python's address parser keeps the space between two encoded-words; the RFC drops it.
    assert str(make_header(decode_header(phrase))) == name


@pytest.mark.parametrize(
    "subject",
    ["Plain ASCII subject", "  spaced  out  ", "Przypomnienie: odnowienie umowy dla żółć.pl " * 4, "=?utf-8?b?Zm9v?="],
)
def test_subjects_round_trip_exactly(subject: str) -> None:
    rendered = RenderedEmail(subject=subject, text="t", html="<p>h</p>", locale="pl")
    assert str(parse_message(build(rendered=rendered))["Subject"]) == subject


@given(
    subject=st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=200),
    name=st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=80),
)
@settings(max_examples=200, deadline=None)
def test_no_subject_or_name_can_add_a_header_or_an_address(subject: str, name: str) -> None:
    rendered = RenderedEmail(subject=subject, text="t", html="<p>h</p>", locale="en")
    message = parse_message(build(rendered=rendered, to=[unsafe_person(name, "a@example.com")], cc=(), reply_to=None))
    assert message.keys() == [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "X-Renewal-Reminder",
        "Content-Language",
        "MIME-Version",
        "Content-Type",
    ]
    assert str(message["Subject"]) == subject
    (address,) = message["To"].addresses
    assert address.addr_spec == "a@example.com"
    # Python's address parser keeps the space it sees between two encoded-words (RFC 2047 says
    # to drop it), so only the non-space characters are compared for long non-ASCII names.
    assert address.display_name.split() == name.split() or "".join(address.display_name.split()) == "".join(
        name.split()
    )


@pytest.mark.parametrize("bad", ["Eve\r\nBcc: victim@example.com", "Eve\nX-Spam: no", "Eve\x00", "Eve\rX: y"])
def test_control_characters_in_a_name_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="control characters"):
        build(to=[unsafe_person(bad)])
    with pytest.raises(ValueError, match="control characters"):
        build(reply_to=unsafe_person(bad))


@pytest.mark.parametrize(
    "bad",
    [
        "a@example.com\r\nBcc: victim@example.com",
        "a@example.com>, <victim@example.com",
        "a b@example.com",
        'a"@example.com',
        "no-at-sign",
        "a@exa mple.com",
        "a@example.com,victim@example.com",
    ],
)
def test_addresses_that_could_break_the_header_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        build(to=[unsafe_person("Eve", bad)])


@pytest.mark.parametrize(
    "field",
    [
        {"rendered": RenderedEmail(subject="Hi\r\nBcc: victim@example.com", text="t", html="h", locale="en")},
        {"reminder_tag": "r-1\r\nBcc: victim@example.com"},
        {"rendered": RenderedEmail(subject="Hi", text="t", html="h", locale="en\r\nBcc: v@example.com")},
    ],
)
def test_line_breaks_in_any_other_header_field_are_refused(field: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build(**field)  # type: ignore[arg-type]


def test_line_breaks_in_mail_from_are_a_configuration_error() -> None:
    # MAIL_FROM is ours, not the reminder's data: the delivery retries it until it is fixed.
    with pytest.raises(ConfigError, match="MAIL_FROM"):
        build(mail_from="Renewals <r@example.com>\r\nBcc: victim@example.com")


def test_an_unsafe_message_id_or_a_naive_date_is_refused() -> None:
    with pytest.raises(ValueError, match="Message-ID"):
        build_message(
            RENDERED, mail_from="r@example.com", to=[BILLING], cc=(), reply_to=None,
            message_id="<x@y>\r\nBcc: v@example.com", reminder_tag="t", sent_at=SENT_AT,
        )  # fmt: skip
    with pytest.raises(ValueError, match="timezone-aware"):
        build_message(
            RENDERED, mail_from="r@example.com", to=[BILLING], cc=(), reply_to=None,
            message_id=MESSAGE_ID, reminder_tag="t", sent_at=datetime(2026, 3, 18, 9, 30),
        )  # fmt: skip


def test_a_message_needs_a_recipient() -> None:
    with pytest.raises(ValueError, match="at least one To"):
        build(to=())


def test_a_non_ascii_reminder_tag_is_encoded() -> None:
    message = parse_message(build(reminder_tag="r-ünïcødé/first-notice"))
    assert message["X-Renewal-Reminder"] == "r-ünïcødé/first-notice"


def test_envelope_recipients_are_idna_encoded_and_each_listed_once() -> None:
    twice = Person(name="Billing again", email="BILLING@example.com")
    assert envelope_recipients([ZOFIA, BILLING], [ASA, twice]) == [
        "zofia@xn--bcher-kva.de",
        "billing@example.com",
        "asa@agentur.se",
    ]


def test_a_non_ascii_local_part_is_kept_in_utf8_and_needs_smtputf8() -> None:
    person = Person(name="Jürgen", email="jürgen@bücher.de")
    recipients = envelope_recipients([person], [])
    assert recipients == ["jürgen@xn--bcher-kva.de"]
    assert needs_smtputf8(recipients)
    assert not needs_smtputf8(envelope_recipients([ZOFIA], [ASA]))
    message = parse_message(build(to=[person], cc=(), reply_to=None))
    assert message["To"].addresses[0].addr_spec == "jürgen@xn--bcher-kva.de"
    assert message["To"].addresses[0].display_name == "Jürgen"
