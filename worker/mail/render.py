"""Renders a reminder's subject, plain text and HTML from the email templates, sandboxed and localized."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

import css_inline
import jinja2
from jinja2 import FileSystemLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from ..domain.decision import Send
from ..domain.errors import TemplateError
from ..domain.events import ClientData, Contacts, PartnerData, Person, RenewalData
from .locales import (
    SUPPORTED_LOCALES,
    Catalog,
    catalog_problems,
    choose_locale,
    format_long_date,
    format_money,
    format_money_change,
    load_catalogs,
)

__all__ = [
    "AUDIENCES", "SUPPORTED_LOCALES", "Audience", "RenderedEmail", "Renderer", "SampleCase", "choose_locale",
    "hostile_samples",
]  # fmt: skip

Audience = Literal["client", "partner"]
AUDIENCES: tuple[Audience, ...] = ("client", "partner")

# A reminder template is a directory <name>/ holding these files for each audience; files
# starting with "_" (layouts) and "locales/" are shared and are not reminder templates.
_PARTS = ("subject.txt", "txt", "html")
_NOT_REMINDERS = frozenset({"locales", "digest"})  # the partner digest has its own renderer (digest_render)
_TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_SPACES = re.compile(r" {2,}")


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str
    locale: str  # the locale actually used, after fallback


def _template_files(name: str) -> list[str]:
    return [f"{name}/{audience}.{part}" for audience in AUDIENCES for part in _PARTS]


def _scan(templates_dir: Path) -> tuple[frozenset[str], list[str]]:
    complete: set[str] = set()
    problems: list[str] = []
    for entry in sorted(templates_dir.iterdir()):
        if not entry.is_dir() or entry.name.startswith("_") or entry.name in _NOT_REMINDERS:
            continue
        if not _TEMPLATE_NAME.match(entry.name):
            problems.append(f"{entry.name}/: a template name is lower-case letters, digits and '-'")
            continue
        missing = [f for f in _template_files(entry.name) if not (templates_dir / f).is_file()]
        if missing:
            problems.append(f"{entry.name}/: incomplete, missing {', '.join(missing)}")
        else:
            complete.add(entry.name)
    return frozenset(complete), problems


def _person(person: Person | None) -> dict[str, str] | None:
    return None if person is None else {"name": person.name, "email": person.email}


class Renderer:
    """Loads the templates and wording once; edits take effect when the worker restarts."""

    def __init__(self, templates_dir: Path) -> None:
        if not templates_dir.is_dir():
            raise TemplateError(f"templates directory {templates_dir} does not exist")
        self.templates_dir = templates_dir
        self._names, self._scan_problems = _scan(templates_dir)
        self._catalogs = load_catalogs(templates_dir / "locales")
        self._env = SandboxedEnvironment(
            loader=FileSystemLoader(templates_dir),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
            undefined=StrictUndefined,
            auto_reload=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        # Remote stylesheets are never fetched: rendering must not reach the network.
        self._inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)

    def template_names(self) -> frozenset[str]:
        return self._names

    def render_send(self, send: Send, *, locale: str | None = None) -> RenderedEmail:
        """Render the reminder a send-time decision chose, in its locale unless ``locale`` is given."""
        return self.render(
            send.template,
            audience=send.audience,
            locale=send.locale if locale is None else locale,
            renewal=send.renewal,
            client=send.client,
            partner=send.partner,
            partner_user=send.partner_user,
            deadline=send.deadline,
            today=send.local_today,
        )

    def render(
        self,
        template: str,
        *,
        audience: Audience,
        locale: str | None,
        renewal: RenewalData,
        client: ClientData | None,
        partner: PartnerData | None,
        partner_user: Person | None,
        deadline: date,
        today: date,
    ) -> RenderedEmail:
        """Render one reminder; any problem with the template, wording or data is a TemplateError."""
        if template not in self._names:
            raise TemplateError(f"unknown template {template!r}; available: {', '.join(sorted(self._names))}")
        if audience not in AUDIENCES:
            raise TemplateError(f"unknown audience {audience!r}; expected one of {', '.join(AUDIENCES)}")
        if client is None:
            # The client's domain names the renewal in the subject and the body; without it
            # there is nothing truthful to say.
            raise TemplateError(f"renewal {renewal.renewal_id}: no client data, so the client's domain is unknown")
        chosen = choose_locale(locale)
        context = _context(self._catalogs[chosen], renewal, client, partner, partner_user, deadline, today)
        base = f"{template}/{audience}"
        subject = _one_line(self._render(f"{base}.subject.txt", context))
        if not subject:
            raise TemplateError(f"{base}.subject.txt: the subject is empty")
        text = _tidy_text(self._render(f"{base}.txt", context))
        html = self._render(f"{base}.html", {**context, "subject": subject})
        try:
            html = self._inliner.inline(html)
        except css_inline.InlineError as exc:
            raise TemplateError(f"{base}.html: cannot inline its CSS: {exc}") from None
        return RenderedEmail(subject=subject, text=text, html=html, locale=chosen)

    def catalog(self, locale: str) -> Catalog:
        """The wording of a supported locale (see ``choose_locale``)."""
        return self._catalogs[locale]

    def render_file(self, name: str, context: dict[str, Any]) -> str:
        """Render one template file in the sandbox; any problem is a TemplateError."""
        return self._render(name, context)

    def _render(self, name: str, context: dict[str, Any]) -> str:
        try:
            return self._env.get_template(name).render(context)
        except TemplateError as exc:
            raise TemplateError(f"{name}: {exc}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{exc.filename or name}, line {exc.lineno}: {exc.message}") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{name}: {type(exc).__name__}: {exc}") from None
        except Exception as exc:
            # Whatever else a template raises (a bad comparison, a division by zero) is still
            # a fault of the template, and the caller must not retry it.
            raise TemplateError(f"{name}: {type(exc).__name__}: {exc}") from exc

    def check(self) -> list[str]:
        """Render every template x audience x locale with sample (also hostile) data; [] means all is well."""
        problems = [*self._scan_problems, *catalog_problems(self._catalogs)]
        for name in sorted(self._names):
            for audience in AUDIENCES:
                for locale in SUPPORTED_LOCALES:
                    problems += self._sample_problems(name, audience, locale)
        return problems

    def _sample_problems(self, template: str, audience: Audience, locale: str) -> list[str]:
        problems: list[str] = []
        for case, (renewal, partner, partner_user, today) in enumerate(_SAMPLES, start=1):
            where = f"{template}/{audience} [{locale}, sample {case}]"
            try:
                email = self.render(
                    template,
                    audience=audience,
                    locale=locale,
                    renewal=renewal,
                    client=_SAMPLE_CLIENT,
                    partner=partner,
                    partner_user=partner_user,
                    deadline=_SAMPLE_DEADLINE,
                    today=today,
                )
            except TemplateError as exc:
                problems.append(f"{where}: {exc}")
                break  # the other samples would most likely repeat the same error
            problems += [f"{where}: {p}" for p in _inspect(email)]
        return problems


def _inspect(email: RenderedEmail) -> list[str]:
    problems = []
    if _SAMPLE_CLIENT.domain not in email.subject:
        problems.append("the subject does not name the client's domain")
    if _HOSTILE_NAME not in email.text:
        problems.append("the text does not show a product name exactly as given")
    if "<script" in email.html or "&lt;script&gt;" not in email.html:
        problems.append("the HTML does not escape a product name")
    if "{{ 7*7 }}" not in email.html:
        problems.append("the HTML does not show a product name literally")
    if "<style" in email.html:
        problems.append("the HTML still has a <style> block after inlining")
    return problems


def _context(
    catalog: Catalog,
    renewal: RenewalData,
    client: ClientData,
    partner: PartnerData | None,
    partner_user: Person | None,
    deadline: date,
    today: date,
) -> dict[str, Any]:
    # Only plain values go into the sandbox: formatted strings, dicts of strings and the
    # wording lookup. Nothing from an event is ever compiled as a template.
    locale, currency = catalog.locale, renewal.currency
    days_left = (deadline - today).days
    if days_left > 0:
        deadline_note = catalog.text("common.days_left", count=days_left)
    elif days_left == 0:
        deadline_note = catalog.text("common.deadline_today")
    else:
        deadline_note = catalog.text("common.deadline_passed")
    return {
        "t": catalog.text,
        "locale": locale,
        "domain": client.domain,
        "client_name": client.name,
        "partner_name": partner.name if partner is not None else None,
        "partner_user": _person(partner_user),
        "renewal_manager": _person(renewal.renewal_manager),
        "products": [
            {
                "name": product.name,
                "current_mrr": format_money(product.current_mrr, currency, locale),
                "renewal_mrr": format_money(product.renewal_mrr, currency, locale),
            }
            for product in renewal.products
        ],
        "current_mrr": format_money(renewal.current_mrr, currency, locale),
        "renewal_mrr": format_money(renewal.renewal_mrr, currency, locale),
        "mrr_change": format_money_change(renewal.renewal_mrr - renewal.current_mrr, currency, locale),
        "start_date": format_long_date(renewal.start_date, locale),
        "deadline": format_long_date(deadline, locale),
        "days_left": days_left,
        "deadline_note": deadline_note,
    }


def _one_line(subject: str) -> str:
    return _SPACES.sub(" ", _CONTROL_CHARS.sub(" ", subject)).strip()


def _tidy_text(text: str) -> str:
    # Templates may leave runs of blank lines around optional blocks; one blank line separates
    # paragraphs in the sent text.
    return _BLANK_LINES.sub("\n\n", text.replace("\r\n", "\n")).strip("\n") + "\n"


# Sample data for check(): non-ASCII names and domain, and values that would do harm if they
# were compiled as templates or written into HTML unescaped.
_HOSTILE_NAME = 'Growth "Pro" <script>alert(1)</script> {{ 7*7 }} & Łódź'
_SAMPLE_DEADLINE = date(2026, 4, 17)
_SAMPLE_CLIENT = ClientData(
    client_id="c-1",
    domain="bücher.de",
    name="Bücher & Söhne <b>GmbH</b>",
    locale="de",
    contacts=Contacts(primary=Person(name="Zofia Łukasiewicz", email="zofia@bücher.de")),
)


def _sample_renewal(manager: Person | None, current: str, renewal: str) -> RenewalData:
    product = {"name": _HOSTILE_NAME, "current_mrr": current, "renewal_mrr": renewal}
    return RenewalData.model_validate(
        {
            "renewal_id": "r-1",
            "client_id": "c-1",
            "start_date": "2026-06-01",
            "products": [product, {"name": "Sales Hub", "current_mrr": "0.00", "renewal_mrr": "0.00"}],
            "currency": "EUR",
            "current_mrr": current,
            "renewal_mrr": renewal,
            "renewal_manager": manager,
        },
        strict=False,
    )


_SAMPLE_PERSON = Person(name='Åsa O\'Brien, "RM" <script>x</script> {{ 7*7 }}', email="asa.obrien@example.com")
_SAMPLE_PARTNER = PartnerData(name="Agentur {{ 7*7 }} <i>Nord</i>", notify_user=_SAMPLE_PERSON)
_SAMPLES: tuple[tuple[RenewalData, PartnerData | None, Person | None, date], ...] = (
    (_sample_renewal(_SAMPLE_PERSON, "1250.00", "1400.50"), _SAMPLE_PARTNER, _SAMPLE_PERSON, date(2026, 3, 18)),
    (_sample_renewal(None, "1250.00", "990.00"), _SAMPLE_PARTNER, _SAMPLE_PERSON, date(2026, 4, 16)),
    (_sample_renewal(None, "1250.00", "1250.00"), _SAMPLE_PARTNER, None, date(2026, 4, 14)),
    (_sample_renewal(None, "1.00", "2.00"), None, None, _SAMPLE_DEADLINE),
    (_sample_renewal(None, "1.00", "2.00"), None, None, date(2026, 4, 20)),
)


# (client, renewal, partner, partner user, deadline, today) of one sample rendering.
SampleCase = tuple[ClientData, RenewalData, PartnerData | None, Person | None, date, date]


def hostile_samples() -> list[SampleCase]:
    """The data ``check()`` renders every template with, for previews that show what it checks."""
    return [
        (_SAMPLE_CLIENT, renewal, partner, user, _SAMPLE_DEADLINE, today) for renewal, partner, user, today in _SAMPLES
    ]
