"""The sample data of the preview gallery and the kinds of email it shows for each sample.

``GALLERY_EMAILS`` is the list of kinds: adding a kind of email to the gallery is one entry there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Protocol

from ..domain.decision import Send
from ..domain.digest import DigestRecipient, DigestRow, build_digest
from ..domain.events import ClientData, Contacts, Owner, OwnerData, PartnerData, Person, RenewalData
from ..domain.routing import ALL_CONTACT_ROLES, ContactRole, partner_user, route
from ..mail.digest_render import DIGEST_TEMPLATE, DigestRenderer
from ..mail.render import AUDIENCES, RenderedEmail, Renderer, hostile_samples
from .preview import Preview, preview_of_send

__all__ = [
    "GALLERY_EMAILS", "DigestEmails", "GalleryEmail", "ReminderEmails", "Scenario", "sample_previews",
    "sample_scenarios",
]  # fmt: skip


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


class ReminderEmails:
    """Every reminder template found in the templates folder, for each audience."""

    def previews(self, renderer: Renderer, scenario: Scenario, roles: Sequence[ContactRole]) -> Iterable[Preview]:
        for template in sorted(renderer.template_names()):
            for audience in AUDIENCES:
                send = _send_of(scenario, template, audience, roles)
                yield preview_of_send(
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
