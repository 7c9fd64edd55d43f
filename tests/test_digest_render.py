"""The digest email: localized subject with CLDR plurals, text and HTML parts, the cut and the export pointer."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from worker.domain.digest import DigestRecipient, DigestRow, build_digest
from worker.domain.events import PartnerData, Person
from worker.mail.digest_render import DigestRenderer, export_command
from worker.mail.render import Renderer

ROOT = Path(__file__).resolve().parent.parent
TODAY = date(2026, 12, 7)
ANNA = Person(name="Anna Reed", email="anna@northwind.agency")
PARTNER = PartnerData(name="Northwind Digital", notify_user=ANNA)


@pytest.fixture(scope="module")
def renderer() -> DigestRenderer:
    return DigestRenderer(Renderer(ROOT / "templates" / "email"))


def row(n: int, *, days_left: int = 39, currency: str = "EUR", name: str | None = None) -> DigestRow:
    return DigestRow(
        client_id=f"c{n}",
        client_domain=f"client{n}.example",
        client_name=name,
        renewal_id=f"r{n}",
        owner="hubspot",
        products=("Marketing Hub",),
        deadline=TODAY + timedelta(days=days_left),
        days_left=days_left,
        currency=currency,
        current_mrr=Decimal("800.00"),
        renewal_mrr=Decimal("900.00"),
        reminders_sent=(("first-notice", date(2026, 12, 1), "client"),),
    )


def render(renderer: DigestRenderer, rows, *, locale: str = "en", recipient: DigestRecipient | None = None):
    digest = build_digest(recipient or DigestRecipient(ANNA, None), rows)
    return renderer.render(digest, partner_id="northwind", partner=PARTNER, locale=locale, today=TODAY, horizon_days=60)


@pytest.mark.parametrize(
    ("locale", "count", "subject"),
    [
        ("en", 1, "1 renewal decision, by January 15"),
        ("en", 3, "3 renewal decisions, the first by January 15"),
        ("de", 1, "1 Entscheidung zur Verlängerung, bis 15. Januar"),
        ("de", 3, "3 Entscheidungen zur Verlängerung, die erste bis 15. Januar"),
        ("sv", 3, "3 beslut om förnyelse, det första senast 15 januari"),
        ("pl", 1, "1 decyzja w sprawie odnowienia, do 15 stycznia"),
        ("pl", 3, "3 decyzje w sprawie odnowień, pierwsza do 15 stycznia"),
        ("pl", 5, "5 decyzji w sprawie odnowień, pierwsza do 15 stycznia"),
        ("pl", 22, "22 decyzje w sprawie odnowień, pierwsza do 15 stycznia"),
    ],
)
def test_the_subject_carries_the_count_and_the_nearest_deadline_in_the_partners_language(
    renderer, locale, count, subject
):
    rows = [row(n, days_left=39 + n) for n in range(count)]
    email = render(renderer, rows, locale=locale)
    assert email.subject == subject
    assert email.locale == locale


def test_an_empty_digest_says_so_in_the_subject_and_body(renderer):
    email = render(renderer, [])
    assert email.subject == "No renewal decisions in the next 60 days"
    assert "No renewal of your clients needs a decision in the next 60 days." in email.text


def test_each_row_shows_client_deadline_owner_products_money_and_reminders_sent(renderer):
    email = render(renderer, [row(1, name="Acme Inc.")])
    assert "1. client1.example (Acme Inc.)" in email.text
    assert "Renewal deadline: January 15, 2027 (39 days left)" in email.text
    assert "Renewal owner: the platform emails the client" in email.text
    assert "Products: Marketing Hub" in email.text
    assert "Current MRR: €800.00 | Renewal MRR: €900.00 | Change: +€100.00" in email.text
    assert "Reminders sent: first-notice to the client on December 1, 2026" in email.text
    assert "EUR, 1 renewal: Current MRR €800.00 | Renewal MRR €900.00 | Change +€100.00" in email.text
    assert "client1.example (Acme Inc.)" in email.html
    assert "+€100.00" in email.html


def test_a_long_digest_is_cut_with_and_n_more_and_the_export_command(renderer):
    email = render(renderer, [row(n) for n in range(62)])
    assert "\n50. client49.example" in email.text
    assert "\n51. " not in email.text
    assert "and 12 more renewals, not shown here." in email.text
    assert "renewals requiring-action northwind --format csv" in email.text
    assert "and 12 more renewals, not shown here." in email.html
    assert "renewals requiring-action northwind --format csv</code>" in email.html
    assert "EUR, 62 renewals" in email.text  # totals cover the rows not shown too
    # Readable and under mail clients' clipping limits (Gmail clips HTML beyond about 102 kB).
    assert len(email.html.encode()) < 100_000


def test_a_user_named_in_overrides_is_told_the_digest_covers_their_clients_and_exports_their_rows(renderer):
    jonas = DigestRecipient(Person(name="Jonas Berg", email="jonas@northwind.agency"), frozenset({"c1"}))
    email = render(renderer, [row(1)], recipient=jonas)
    assert "This digest covers the clients for which you are the named partner user." in email.text
    assert export_command("northwind", jonas) == (
        "renewals requiring-action northwind --user jonas@northwind.agency --format csv"
    )


def test_names_from_events_are_escaped_in_html_and_never_run_as_template_code(renderer):
    email = render(renderer, [row(1, name="<script>alert(1)</script> {{ 7*7 }}")])
    assert "<script>" not in email.html
    assert "&lt;script&gt;" in email.html
    assert "{{ 7*7 }}" in email.text
    assert "<style" not in email.html


def test_the_digest_templates_pass_the_check_in_every_locale(renderer):
    assert renderer.check() == []
