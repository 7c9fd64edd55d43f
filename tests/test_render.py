"""Rendering the reminder templates: every combination, hostile values, locales, formatting, errors."""

from __future__ import annotations

import shutil
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from worker.config.settings import PROJECT_ROOT
from worker.domain.errors import TemplateError
from worker.domain.events import ClientData, Contacts, PartnerData, Person, RenewalData
from worker.mail.render import AUDIENCES, SUPPORTED_LOCALES, Audience, RenderedEmail, Renderer, choose_locale

TEMPLATES_DIR = PROJECT_ROOT / "templates" / "email"
SCRIPT = "<script>alert(1)</script>"
TEMPLATE_CODE = "{{ 7*7 }}"
DEADLINE = date(2026, 4, 17)

MANAGER = Person(name="Jan Müller", email="jan.mueller@platform.example")
PARTNER_USER = Person(name='Zofia "Zosia" Łukasiewicz', email="zofia@agencja.pl")
PARTNER = PartnerData(name="Agencja Nord", notify_user=PARTNER_USER)
CLIENT = ClientData(
    client_id="c-1",
    domain="bücher.de",
    name="Bücher GmbH",
    locale="de",
    contacts=Contacts(primary=Person(name="Ida Berg", email="ida@bücher.de")),
)


def make_renewal(*, manager: Person | None = MANAGER, product_name: str = "Marketing Hub Professional") -> RenewalData:
    return RenewalData.model_validate(
        {
            "renewal_id": "r-1",
            "client_id": "c-1",
            "start_date": "2026-06-01",
            "products": [
                {"name": product_name, "current_mrr": "800.00", "renewal_mrr": "880.00"},
                {"name": "Sales Hub Starter", "current_mrr": "450.00", "renewal_mrr": "520.50"},
            ],
            "currency": "EUR",
            "current_mrr": "1250.00",
            "renewal_mrr": "1400.50",
            "renewal_manager": manager,
        },
        strict=False,
    )


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(TEMPLATES_DIR)


def render(renderer: Renderer, template: str = "first-notice", **overrides: Any) -> RenderedEmail:
    arguments: dict[str, Any] = {
        "audience": "client",
        "locale": "en",
        "renewal": make_renewal(),
        "client": CLIENT,
        "partner": PARTNER,
        "partner_user": PARTNER_USER,
        "deadline": DEADLINE,
        "today": date(2026, 4, 5),
    }
    arguments.update(overrides)
    return renderer.render(template, **arguments)


def test_the_three_shipped_reminder_templates_are_available(renderer: Renderer) -> None:
    assert renderer.template_names() == frozenset({"first-notice", "second-notice", "final-notice"})


@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
@pytest.mark.parametrize("audience", AUDIENCES)
@pytest.mark.parametrize("template", ["first-notice", "second-notice", "final-notice"])
def test_every_template_renders_for_every_audience_and_locale(
    renderer: Renderer, template: str, audience: Audience, locale: str
) -> None:
    email = render(renderer, template, audience=audience, locale=locale)
    assert email.locale == locale
    assert "bücher.de" in email.subject
    assert "\n" not in email.subject and "\r" not in email.subject
    for part in (email.text, email.html):
        assert "Marketing Hub Professional" in part
        assert "bücher.de" in part
        assert MANAGER.email in part
    assert f'lang="{locale}"' in email.html


def test_the_urgency_wording_differs_between_the_notices(renderer: Renderer) -> None:
    subjects = {name: render(renderer, name).subject for name in renderer.template_names()}
    assert len(set(subjects.values())) == 3
    assert subjects["final-notice"].startswith("Final reminder")
    assert "Action needed by April 17, 2026" in render(renderer, "final-notice").text


@pytest.mark.parametrize("audience", AUDIENCES)
def test_hostile_names_are_escaped_in_html_and_literal_in_text(renderer: Renderer, audience: Audience) -> None:
    hostile = f'Growth "Pro" {SCRIPT} {TEMPLATE_CODE} & Łódź'
    person = Person(name=f"O'Brien {SCRIPT} {TEMPLATE_CODE}", email="ob@example.com")
    email = render(
        renderer,
        audience=audience,
        renewal=make_renewal(manager=person, product_name=hostile),
        partner=PartnerData(name=f"Nord {SCRIPT}"),
        partner_user=person,
    )
    assert hostile in email.text
    assert person.name in email.text
    assert "<script" not in email.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
    assert TEMPLATE_CODE in email.html and TEMPLATE_CODE in email.text
    assert "49" not in email.text.replace("2026", "")


def test_non_ascii_names_and_domains_come_through_unchanged(renderer: Renderer) -> None:
    email = render(renderer, audience="partner")
    # css_inline serialises the escaped quotes back to plain ones: inside text they are harmless.
    assert 'Hello Zofia "Zosia" Łukasiewicz,' in email.html
    assert 'Hello Zofia "Zosia" Łukasiewicz,' in email.text
    assert "Jan Müller" in email.text


def test_partner_facing_mail_names_the_renewal_manager_to_write_to(renderer: Renderer) -> None:
    email = render(renderer, "second-notice", audience="partner")
    assert "write to the renewal manager, Jan Müller, at jan.mueller@platform.example" in email.text
    assert "bücher.de does not receive these reminders" in email.text


def test_without_a_renewal_manager_the_client_is_pointed_to_the_partner_user(renderer: Renderer) -> None:
    email = render(renderer, renewal=make_renewal(manager=None))
    assert 'Contact Zofia "Zosia" Łukasiewicz (Agencja Nord) at zofia@agencja.pl.' in email.text
    partner_mail = render(renderer, audience="partner", renewal=make_renewal(manager=None))
    assert "partner dashboard" in partner_mail.text


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("de", "de"),
        ("de-AT", "de"),
        ("de_AT", "de"),
        ("SV", "sv"),
        ("pl-PL", "pl"),
        ("fr", "en"),
        ("", "en"),
        (None, "en"),
    ],
)
def test_the_requested_locale_is_used_or_falls_back_to_english(requested: str | None, expected: str) -> None:
    assert choose_locale(requested) == expected


def test_an_unsupported_locale_renders_in_english(renderer: Renderer) -> None:
    email = render(renderer, locale="fr-CA")
    assert email.locale == "en"
    assert email.subject == "Your contract renewal for bücher.de is coming up"


@pytest.mark.parametrize(
    ("locale", "money", "change", "deadline"),
    [
        ("en", "€1,250.00", "+€150.50", "April 17, 2026"),
        ("de", "1.250,00\xa0€", "+150,50\xa0€", "17. April 2026"),
        ("pl", "1\xa0250,00\xa0€", "+150,50\xa0€", "17 kwietnia 2026"),
        ("sv", "1\xa0250,00\xa0€", "+150,50\xa0€", "17 april 2026"),
    ],
)
def test_money_and_dates_are_formatted_for_the_locale(
    renderer: Renderer, locale: str, money: str, change: str, deadline: str
) -> None:
    email = render(renderer, locale=locale)
    assert money in email.text
    assert change in email.text
    assert deadline in email.text
    assert deadline in email.html


def test_a_lower_renewal_mrr_shows_a_negative_change(renderer: Renderer) -> None:
    renewal = make_renewal().model_copy(update={"renewal_mrr": Decimal("1000.00")})
    assert "Change: -€250.00" in render(renderer, renewal=renewal).text


@pytest.mark.parametrize(
    ("locale", "today", "note"),
    [
        ("en", date(2026, 4, 5), "(12 days left)"),
        ("en", date(2026, 4, 16), "(1 day left)"),
        ("en", DEADLINE, "(the deadline is today)"),
        ("en", date(2026, 4, 20), "(the deadline has passed)"),
        ("de", date(2026, 4, 16), "(noch 1 Tag)"),
        ("pl", date(2026, 4, 16), "(został 1 dzień)"),
        ("pl", date(2026, 4, 14), "(zostały 3 dni)"),
        ("pl", date(2026, 4, 5), "(zostało 12 dni)"),
        ("sv", date(2026, 4, 5), "(12 dagar kvar)"),
    ],
)
def test_the_days_left_until_the_deadline_are_shown_in_the_right_plural(
    renderer: Renderer, locale: str, today: date, note: str
) -> None:
    assert note in render(renderer, locale=locale, today=today).text


def test_css_is_inlined_into_style_attributes(renderer: Renderer) -> None:
    html = render(renderer, "final-notice").html
    assert "<style" not in html
    assert 'style="' in html
    assert "background-color: #fdecea" in html


def test_an_unknown_template_is_a_template_error(renderer: Renderer) -> None:
    with pytest.raises(TemplateError, match="unknown template 'fourth-notice'"):
        render(renderer, "fourth-notice")


def test_a_reminder_without_client_data_is_a_template_error(renderer: Renderer) -> None:
    with pytest.raises(TemplateError, match="no client data"):
        render(renderer, client=None)


def copy_templates(tmp_path: Path) -> Path:
    target = tmp_path / "email"
    shutil.copytree(TEMPLATES_DIR, target)
    return target


def test_a_variable_missing_from_the_data_is_a_template_error(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    (templates / "first-notice" / "client.txt").write_text(
        '{% extends "_layouts/client.txt" %}{% block intro %}{{ client_phone }}{% endblock %}\n', encoding="utf-8"
    )
    with pytest.raises(TemplateError, match=r"first-notice/client\.txt.*'client_phone' is undefined"):
        render(Renderer(templates))
    assert any("client_phone" in problem for problem in Renderer(templates).check())


def test_wording_missing_from_a_locale_is_reported_by_check_and_fails_rendering(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    catalog = templates / "locales" / "sv.yaml"
    catalog.write_text(catalog.read_text(encoding="utf-8").replace("  banner:", "  bannner:"), encoding="utf-8")
    problems = Renderer(templates).check()
    assert "sv.yaml: 'final-notice.banner' is missing" in problems
    with pytest.raises(TemplateError, match=r"no wording for 'final-notice\.banner'"):
        render(Renderer(templates), "final-notice", locale="sv")


def test_a_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    (templates / "second-notice" / "partner.subject.txt").write_text("{{ domain ", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"second-notice/partner\.subject\.txt, line 1"):
        render(Renderer(templates), "second-notice", audience="partner")


@pytest.mark.parametrize("source", ["{{ t.__globals__ }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}"])
def test_a_template_cannot_reach_python_internals(tmp_path: Path, source: str) -> None:
    templates = copy_templates(tmp_path)
    (templates / "first-notice" / "client.subject.txt").write_text(source, encoding="utf-8")
    with pytest.raises(TemplateError, match="SecurityError"):
        render(Renderer(templates))


def test_an_incomplete_template_directory_is_not_offered_and_is_reported(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    (templates / "courtesy-notice").mkdir()
    (templates / "courtesy-notice" / "client.txt").write_text("hello", encoding="utf-8")
    renderer = Renderer(templates)
    assert "courtesy-notice" not in renderer.template_names()
    assert any(problem.startswith("courtesy-notice/: incomplete") for problem in renderer.check())


def test_a_dropped_in_template_becomes_available(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    shutil.copytree(templates / "first-notice", templates / "courtesy-notice")
    assert "courtesy-notice" in Renderer(templates).template_names()


def test_a_missing_templates_directory_is_a_template_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="does not exist"):
        Renderer(tmp_path / "nowhere")


def test_check_finds_no_problem_in_the_shipped_templates(renderer: Renderer) -> None:
    assert renderer.check() == []
