"""What the preview gallery shows: each email as it would be sent, in every locale, from samples or real data.

An email to preview is a ``Preview``: its recipients and headers, and a way to render it in any
locale. The samples gallery is built from ``GALLERY_EMAILS``, a list of email kinds: adding a new
kind of email to the gallery is adding one entry there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from email.header import decode_header, make_header
from email.parser import HeaderParser
from typing import Protocol
from zoneinfo import ZoneInfo

from ..domain.decision import Send, reply_to
from ..domain.digest import DigestRecipient, DigestRow, build_digest
from ..domain.errors import TemplateError
from ..domain.events import ClientData, Contacts, Owner, OwnerData, PartnerData, Person, RenewalData
from ..domain.planner import renewal_deadline
from ..domain.routing import ALL_CONTACT_ROLES, ContactRole, partner_user, route
from ..domain.rules import RuleSet
from ..mail.digest_render import DIGEST_TEMPLATE, DigestRenderer
from ..mail.lint import email_warnings
from ..mail.locales import SUPPORTED_LOCALES
from ..mail.message import build_message, message_id_for
from ..mail.render import AUDIENCES, Audience, RenderedEmail, Renderer, hostile_samples
from ..state.planning import RenewalView

__all__ = [
    "GALLERY_EMAILS",
    "DigestEmails",
    "GalleryEmail",
    "Preview",
    "PreviewPage",
    "ReminderEmails",
    "Scenario",
    "locales_of",
    "render_page",
    "sample_previews",
    "sample_scenarios",
    "view_previews",
]

RenderFn = Callable[[Renderer, str], RenderedEmail]


@dataclass(frozen=True)
class Scenario:
    """One set of sample data: a partner, a client and a renewal, on a given day."""

    name: str
    partner_id: str
    partner: PartnerData | None
    client: ClientData
    renewal: RenewalData
    partner_user: Person | None
    deadline: date
    today: date


@dataclass(frozen=True)
class Preview:
    """One email to preview: who it goes to and how to render it in a locale."""

    slug: str  # a folder name: letters, digits, '-' and '_'
    group: str  # the scenario or renewal it belongs to
    email: str  # the kind of email (a template name, "digest", ...)
    audience: str
    locale: str  # the recipient's locale, from the data
    send: Send | None  # recipients and data; None for an email kind that routes by itself
    to: tuple[Person, ...]
    cc: tuple[Person, ...]
    reply_to: Person | None
    no_recipient_reason: str | None
    tag: str  # partner/renewal/reminder
    sent_at: datetime
    render: RenderFn = field(compare=False)
    note: str = ""


@dataclass(frozen=True)
class PreviewPage:
    """One preview rendered in one locale: the email, its message bytes, headers and warnings, or the error."""

    preview: Preview
    locale: str
    email: RenderedEmail | None
    eml: bytes | None
    headers: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...]
    error: str | None = None

    @property
    def subject(self) -> str:
        return self.email.subject if self.email is not None else f"(not rendered: {self.error})"


class GalleryEmail(Protocol):
    """A kind of email the gallery shows, for each sample scenario."""

    def previews(self, renderer: Renderer, scenario: Scenario, roles: Sequence[ContactRole]) -> Iterable[Preview]: ...


def _send_of(scenario: Scenario, template: str, audience: str, roles: Sequence[ContactRole]) -> Send:
    client = scenario.client
    owner: Owner = "hubspot" if audience == "client" else "partner"
    override = OwnerData(client_id=client.client_id, owner=owner, notify_user=scenario.partner_user)
    routing = route(client, scenario.partner, override, contact_roles=roles)
    return Send(
        template=template,
        audience="client" if audience == "client" else "partner",
        locale=client.locale if audience == "client" else (scenario.partner.locale if scenario.partner else None),
        renewal=scenario.renewal,
        client=client,
        partner=scenario.partner,
        partner_user=partner_user(scenario.partner, override),
        routing=routing,
        deadline=scenario.deadline,
        local_today=scenario.today,
    )


def _reminder_render(send: Send) -> RenderFn:
    def render(renderer: Renderer, locale: str) -> RenderedEmail:
        return renderer.render(
            send.template,
            audience=send.audience,
            locale=locale,
            renewal=send.renewal,
            client=send.client,
            partner=send.partner,
            partner_user=send.partner_user,
            deadline=send.deadline,
            today=send.local_today,
        )

    return render


def _preview_of_send(
    send: Send, *, slug: str, group: str, email: str, tag: str, sent_at: datetime, note: str = ""
) -> Preview:
    return Preview(
        slug=slug,
        group=group,
        email=email,
        audience=send.audience,
        locale=send.locale or "en",
        send=send,
        to=tuple(r.person for r in send.routing.to),
        cc=tuple(r.person for r in send.routing.cc),
        reply_to=reply_to(send),
        no_recipient_reason=send.routing.no_recipient_reason,
        tag=tag,
        sent_at=sent_at,
        render=_reminder_render(send),
        note=note,
    )


class ReminderEmails:
    """Every reminder template found in the templates folder, for each audience."""

    def previews(self, renderer: Renderer, scenario: Scenario, roles: Sequence[ContactRole]) -> Iterable[Preview]:
        for template in sorted(renderer.template_names()):
            for audience in AUDIENCES:
                send = _send_of(scenario, template, audience, roles)
                yield _preview_of_send(
                    send,
                    slug=f"{scenario.name}_{template}_{audience}",
                    group=scenario.name,
                    email=template,
                    tag=f"{scenario.partner_id}/{scenario.renewal.renewal_id}/{template}",
                    sent_at=datetime.combine(scenario.today, time(9), tzinfo=UTC),
                )


class DigestEmails:
    """The partner digest ("Renewals requiring action") of each scenario's partner user, listing its renewal."""

    horizon_days = 60

    def previews(self, renderer: Renderer, scenario: Scenario, roles: Sequence[ContactRole]) -> Iterable[Preview]:
        renewal, client = scenario.renewal, scenario.client
        row = DigestRow(
            client_id=client.client_id,
            client_domain=client.domain,
            client_name=client.name,
            renewal_id=renewal.renewal_id,
            owner=scenario.partner.default_owner if scenario.partner else "hubspot",
            products=tuple(product.name for product in renewal.products),
            deadline=scenario.deadline,
            days_left=(scenario.deadline - scenario.today).days,
            currency=renewal.currency,
            current_mrr=renewal.current_mrr,
            renewal_mrr=renewal.renewal_mrr,
        )
        user = scenario.partner_user
        recipient = DigestRecipient(user or Person(name="(no partner user)", email="nobody@example.com"), None)
        digest = build_digest(recipient, [row])

        def render(r: Renderer, locale: str) -> RenderedEmail:
            return DigestRenderer(r).render(
                digest,
                partner_id=scenario.partner_id,
                partner=scenario.partner,
                locale=locale,
                today=scenario.today,
                horizon_days=self.horizon_days,
            )

        yield Preview(
            slug=f"{scenario.name}_{DIGEST_TEMPLATE}",
            group=scenario.name,
            email=DIGEST_TEMPLATE,
            audience="partner",
            locale=scenario.partner.locale if scenario.partner else "en",
            send=None,
            to=(user,) if user is not None else (),
            cc=(),
            reply_to=None,
            no_recipient_reason=None if user is not None else "no_partner_user",
            tag=f"{scenario.partner_id}/digest-{scenario.today.isoformat()}",
            sent_at=datetime.combine(scenario.today, time(8), tzinfo=UTC),
            render=render,
        )


# The kinds of email the samples gallery shows; one entry per kind.
GALLERY_EMAILS: tuple[GalleryEmail, ...] = (ReminderEmails(), DigestEmails())


def _typical() -> Scenario:
    partner = PartnerData(
        name="Northwind Digital",
        notify_user=Person(name="Anna Reed", email="anna@northwind.agency"),
        timezone="Europe/London",
    )
    client = ClientData(
        client_id="c-100",
        domain="acme.com",
        name="Acme Inc.",
        locale="en",
        timezone="America/New_York",
        contacts=Contacts(
            primary=Person(name="Jane Doe", email="jane@acme.com"),
            billing=Person(name="Jane Doe", email="JANE@acme.com"),
            decision_maker=Person(name="Bob Stone", email="bob@acme.com"),
        ),
    )
    renewal = RenewalData.model_validate(
        {
            "renewal_id": "r-1001",
            "client_id": "c-100",
            "start_date": "2027-03-15",
            "products": [
                {"name": "Marketing Hub Professional", "current_mrr": "800.00", "renewal_mrr": "900.00"},
                {"name": "Sales Hub Starter", "current_mrr": "450.00", "renewal_mrr": "500.00"},
            ],
            "currency": "USD",
            "current_mrr": "1250.00",
            "renewal_mrr": "1400.00",
            "renewal_manager": {"name": "Olivia Grant", "email": "olivia.grant@platform.example"},
        },
        strict=False,
    )
    return Scenario(
        "typical", "northwind", partner, client, renewal, partner.notify_user, date(2027, 1, 29), date(2026, 12, 30)
    )


def sample_scenarios() -> list[Scenario]:
    """A typical renewal, then the hostile samples ``renewals rules check`` renders every template with."""
    scenarios = [_typical()]
    for n, (client, renewal, partner, user, deadline, today) in enumerate(hostile_samples(), start=1):
        scenarios.append(Scenario(f"hostile-{n}", "agentur", partner, client, renewal, user, deadline, today))
    return scenarios


def sample_previews(renderer: Renderer, *, roles: Sequence[ContactRole] = ALL_CONTACT_ROLES) -> list[Preview]:
    """Every kind of email in ``GALLERY_EMAILS`` for every sample scenario."""
    return [
        preview
        for scenario in sample_scenarios()
        for kind in GALLERY_EMAILS
        for preview in kind.previews(renderer, scenario, roles)
    ]


def view_previews(
    views: Iterable[RenewalView], rules: RuleSet, *, now: datetime, roles: Sequence[ContactRole] = ALL_CONTACT_ROLES
) -> list[Preview]:
    """Each planned reminder of stored renewals, as it would be sent when due (routed with the state at ``now``)."""
    previews: list[Preview] = []
    for view in views:
        client_state = view.client
        client = client_state.client if client_state else None
        renewal = view.renewal.renewal
        if renewal is None or client is None:
            continue
        override = client_state.override if client_state else None
        plan = view.plan(rules, now)
        routing = route(client, view.partner, override, contact_roles=roles)
        audience: Audience = "client" if routing.owner == "hubspot" else "partner"
        for planned in plan.planned:
            send = Send(
                template=planned.template,
                audience=audience,
                locale=client.locale if audience == "client" else (view.partner.locale if view.partner else None),
                renewal=renewal,
                client=client,
                partner=view.partner,
                partner_user=partner_user(view.partner, override),
                routing=routing,
                deadline=renewal_deadline(renewal.start_date, rules),
                local_today=planned.due_at.astimezone(ZoneInfo(plan.timezone)).date(),
            )
            safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in f"{view.partner_id}_{view.renewal_id}")
            due = planned.due_at
            previews.append(
                _preview_of_send(
                    send,
                    slug=f"{safe}_{planned.reminder_id}",
                    group=f"{view.partner_id}/{view.renewal_id}",
                    email=planned.reminder_id,
                    tag=f"{view.partner_id}/{view.renewal_id}/{planned.reminder_id}",
                    sent_at=due,
                    note=f"due {due:%Y-%m-%d %H:%M} UTC" + (" (caught up)" if planned.caught_up else ""),
                )
            )
    return previews


_SHOWN_HEADERS = (
    "From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID", "X-Renewal-Reminder", "Content-Language",
)  # fmt: skip


def _header_pairs(eml: bytes) -> tuple[tuple[str, str], ...]:
    """The headers a reader sees, decoded (encoded-words) and unfolded; only the head is parsed."""
    head = eml.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    message = HeaderParser().parsestr(head, headersonly=True)
    pairs = []
    for name in _SHOWN_HEADERS:
        value = message.get(name)
        if value is not None:
            pairs.append((name, str(make_header(decode_header(re.sub(r"\r?\n[ \t]", " ", value))))))
    return tuple(pairs)


def render_page(renderer: Renderer, preview: Preview, locale: str, *, mail_from: str) -> PreviewPage:
    """Render one preview in one locale and build the message exactly as the delivery would."""
    try:
        email = preview.render(renderer, locale)
    except TemplateError as exc:
        return PreviewPage(preview, locale, None, None, (), (f"cannot render: {exc}",), error=str(exc))
    warnings = email_warnings(email, requested_locale=locale)
    if not preview.to:
        reason = preview.no_recipient_reason or "no recipients"
        headers = (("From", mail_from), ("To", f"(nobody: {reason}; not sent)"), ("Subject", email.subject))
        return PreviewPage(preview, locale, email, None, headers, (*warnings, f"not sendable: {reason}"))
    partner_id, renewal_id, reminder_id = [*preview.tag.split("/", 2), "", ""][:3]
    domain = mail_from.rpartition("@")[2].rstrip(">") or "example.com"
    try:
        eml = build_message(
            email,
            mail_from=mail_from,
            to=preview.to,
            cc=preview.cc,
            reply_to=preview.reply_to,
            message_id=message_id_for(partner_id, renewal_id, reminder_id, domain=domain),
            reminder_tag=preview.tag,
            sent_at=preview.sent_at,
        )
    except ValueError as exc:
        return PreviewPage(preview, locale, email, None, (), (*warnings, f"cannot build the message: {exc}"), str(exc))
    return PreviewPage(preview, locale, email, eml, _header_pairs(eml), tuple(warnings))


def locales_of(preview: Preview) -> tuple[str, ...]:
    """Every supported locale; the recipient's own is listed even when it is not supported (it falls back)."""
    return SUPPORTED_LOCALES if preview.locale in SUPPORTED_LOCALES else (preview.locale, *SUPPORTED_LOCALES)
