"""Renders the partner digest (templates/email/digest/): subject, plain text and HTML, sandboxed and localized."""

from __future__ import annotations

import shlex
from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import Any

import css_inline
from babel.dates import format_skeleton

from ..domain.digest import Digest, DigestRecipient, DigestRow, build_digest
from ..domain.errors import TemplateError
from ..domain.events import PartnerData, Person
from .locales import SUPPORTED_LOCALES, Catalog, choose_locale, format_long_date, format_money, format_money_change
from .render import RenderedEmail, Renderer

__all__ = ["DIGEST_TEMPLATE", "DigestRenderer", "export_command"]

DIGEST_TEMPLATE = "digest"


@lru_cache(maxsize=4096)
def _day_month(value: date, locale: str) -> str:
    """ "15 January" in the locale's own order and words (CLDR skeleton MMMMd)."""
    return format_skeleton("MMMMd", value, locale=locale)


def export_command(partner_id: str, recipient: DigestRecipient | None) -> str:
    """The CLI command that exports the same rows as CSV (quoted for a POSIX shell)."""
    words = ["renewals", "requiring-action", partner_id]
    if recipient is not None and recipient.client_ids is not None:
        words += ["--user", recipient.person.email]
    return shlex.join([*words, "--format", "csv"])


class DigestRenderer:
    """The digest's templates, rendered with the reminders' sandbox and wording (a ``Renderer``)."""

    def __init__(self, renderer: Renderer) -> None:
        self._renderer = renderer
        self._inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)

    def render(
        self,
        digest: Digest,
        *,
        partner_id: str,
        partner: PartnerData | None,
        locale: str | None,
        today: date,
        horizon_days: int,
    ) -> RenderedEmail:
        """Render one user's digest in ``locale`` (the partner's); any problem is a TemplateError."""
        catalog = self._renderer.catalog(choose_locale(locale))
        context = _context(catalog, digest, partner_id, partner, today, horizon_days)
        base = f"{DIGEST_TEMPLATE}/"
        subject = " ".join(self._renderer.render_file(f"{base}subject.txt", context).split())
        if not subject:
            raise TemplateError(f"{base}subject.txt: the subject is empty")
        text = self._renderer.render_file(f"{base}body.txt", context)
        text = "\n".join(line.rstrip() if line != "-- " else line for line in text.splitlines())
        while "\n\n\n" in text:
            text = text.replace("\n\n\n", "\n\n")
        html = self._renderer.render_file(f"{base}body.html", {**context, "subject": subject})
        try:
            html = self._inliner.inline(html)
        except css_inline.InlineError as exc:
            raise TemplateError(f"{base}body.html: cannot inline its CSS: {exc}") from None
        return RenderedEmail(subject=subject, text=text.strip("\n") + "\n", html=html, locale=catalog.locale)

    def check(self) -> list[str]:
        """Render the digest in every locale with sample (also hostile) data; [] means all is well."""
        problems = []
        for locale in SUPPORTED_LOCALES:
            for case, digest in enumerate(_sample_digests(), start=1):
                where = f"{DIGEST_TEMPLATE} [{locale}, sample {case}]"
                try:
                    email = self.render(
                        digest, partner_id="p-1", partner=_SAMPLE_PARTNER, locale=locale, today=_TODAY, horizon_days=60
                    )
                except TemplateError as exc:
                    problems.append(f"{where}: {exc}")
                    break
                if "<script" in email.html:
                    problems.append(f"{where}: the HTML does not escape a client name")
                if digest.rows and _HOSTILE not in email.text:
                    problems.append(f"{where}: the text does not show a client name exactly as given")
        return problems


def _money(amount: Decimal, currency: str, locale: str) -> str:
    return format_money(amount, currency, locale)


def _row(catalog: Catalog, row: DigestRow) -> dict[str, Any]:
    locale = catalog.locale
    client = row.client_domain or row.client_id
    if row.client_name:
        client = f"{client} ({row.client_name})"
    if row.days_left > 0:
        note = catalog.text("common.days_left", count=row.days_left)
    else:
        note = catalog.text("common.deadline_today")
    sent = [
        catalog.text(f"digest.sent_{audience}", reminder=reminder_id, date=format_long_date(day, locale))
        for reminder_id, day, audience in row.reminders_sent
    ]
    return {
        "client": client,
        "owner": catalog.text(f"digest.owner_{row.owner}"),
        "products": ", ".join(row.products),
        "deadline": format_long_date(row.deadline, locale),
        "deadline_note": note,
        "current_mrr": _money(row.current_mrr, row.currency, locale),
        "renewal_mrr": _money(row.renewal_mrr, row.currency, locale),
        "mrr_change": format_money_change(row.mrr_change, row.currency, locale),
        "sent": "; ".join(sent) if sent else catalog.text("digest.sent_none"),
    }


def _context(
    catalog: Catalog,
    digest: Digest,
    partner_id: str,
    partner: PartnerData | None,
    today: date,
    horizon_days: int,
) -> dict[str, Any]:
    # Only plain values go into the sandbox, as for the reminders.
    locale = catalog.locale
    totals = [
        {
            "label": catalog.text("digest.totals_line", currency=total.currency, count=total.renewals),
            "current_mrr": _money(total.current_mrr, total.currency, locale),
            "renewal_mrr": _money(total.renewal_mrr, total.currency, locale),
            "mrr_change": format_money_change(total.mrr_change, total.currency, locale),
        }
        for total in digest.totals
    ]
    first = digest.first_deadline
    return {
        "t": catalog.text,
        "locale": locale,
        "recipient_name": digest.recipient.person.name,
        "partner_name": partner.name if partner is not None else partner_id,
        "scoped": digest.recipient.client_ids is not None,
        "count": digest.total_count,
        "first_deadline": _day_month(first, locale) if first is not None else "",
        "horizon_days": horizon_days,
        "today": format_long_date(today, locale),
        "rows": [_row(catalog, row) for row in digest.rows],
        "hidden_count": digest.hidden_count,
        "export_command": export_command(partner_id, digest.recipient),
        "totals": totals,
    }


_HOSTILE = 'Growth "Pro" <script>alert(1)</script> {{ 7*7 }} & Łódź'
_TODAY = date(2026, 12, 7)
_SAMPLE_PERSON = Person(name="Åsa O'Brien {{ 7*7 }}", email="asa@agency.example")
_SAMPLE_PARTNER = PartnerData(name="Agentur <i>Nord</i>", notify_user=_SAMPLE_PERSON)


def _sample_digests() -> list[Digest]:
    def row(n: int, currency: str, days_left: int) -> DigestRow:
        return DigestRow(
            client_id=f"c-{n}",
            client_domain=f"client{n}.example",
            client_name=_HOSTILE,
            renewal_id=f"r-{n}",
            owner="partner" if n % 2 else "hubspot",
            products=(_HOSTILE, "Sales Hub"),
            deadline=date.fromordinal(_TODAY.toordinal() + days_left),
            days_left=days_left,
            currency=currency,
            current_mrr=Decimal("1250.00"),
            renewal_mrr=Decimal(n * 100),
            reminders_sent=(("first-notice", _TODAY, "client"),) if n % 3 else (),
        )

    everyone = DigestRecipient(_SAMPLE_PERSON, None)
    scoped = DigestRecipient(_SAMPLE_PERSON, frozenset({"c-1"}))
    rows = [row(n, "EUR" if n % 2 else "USD", n) for n in range(7)]
    return [
        build_digest(everyone, rows, max_rows=5),
        build_digest(scoped, rows[1:2]),
        build_digest(everyone, []),
    ]
