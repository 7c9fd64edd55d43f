"""Who owns a client's renewal communication and who receives its reminders (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .events import ClientData, Owner, OwnerData, PartnerData, Person

__all__ = [
    "ALL_CONTACT_ROLES",
    "ContactRole",
    "NoRecipientReason",
    "Recipient",
    "Routing",
    "effective_owner",
    "partner_user",
    "route",
]

ContactRole = Literal["primary", "billing", "decision_maker"]

ALL_CONTACT_ROLES: tuple[ContactRole, ...] = ("primary", "billing", "decision_maker")
NoRecipientReason = Literal["no_recipients", "no_point_of_contact"]
DEFAULT_OWNER: Owner = "hubspot"


@dataclass(frozen=True)
class Recipient:
    """One address on a reminder and why it is there (``primary``, ``partner_user``...)."""

    person: Person
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Routing:
    owner: Owner
    owner_source: Literal["client_override", "partner_default", "built_in_default"]
    to: tuple[Recipient, ...] = ()
    cc: tuple[Recipient, ...] = ()
    no_recipient_reason: NoRecipientReason | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def sendable(self) -> bool:
        return bool(self.to)


def effective_owner(partner: PartnerData | None, override: OwnerData | None) -> Owner:
    """The per-client override beats the partner's default, which beats the built-in ``hubspot``."""
    return _owner_with_source(partner, override)[0]


def _owner_with_source(
    partner: PartnerData | None, override: OwnerData | None
) -> tuple[Owner, Literal["client_override", "partner_default", "built_in_default"]]:
    if override is not None and override.owner is not None:
        return override.owner, "client_override"
    if partner is not None:
        return partner.default_owner, "partner_default"
    return DEFAULT_OWNER, "built_in_default"


def partner_user(partner: PartnerData | None, override: OwnerData | None) -> Person | None:
    """The override's user when it names one, else the partner's: CC for hubspot, point of contact for partner."""
    if override is not None and override.notify_user is not None:
        return override.notify_user
    return partner.notify_user if partner is not None else None


def _partner_user_source(partner: PartnerData | None, override: OwnerData | None) -> str:
    if override is not None and override.notify_user is not None:
        return "partner_user (client override)"
    return "partner_user (partner default)"


def route(
    client: ClientData | None,
    partner: PartnerData | None,
    override: OwnerData | None,
    *,
    contact_roles: Sequence[ContactRole] = ALL_CONTACT_ROLES,
) -> Routing:
    """The owner, To and Cc of a reminder about this client, each address with the reason it is there."""
    owner, source = _owner_with_source(partner, override)
    user = partner_user(partner, override)
    if owner == "partner":
        if user is None:
            return Routing(owner, source, no_recipient_reason="no_point_of_contact")
        reason = _partner_user_source(partner, override).replace("partner_user", "point_of_contact")
        return Routing(owner, source, to=(Recipient(user, (reason,)),))

    to: dict[str, Recipient] = {}
    if client is not None:
        for role in contact_roles:
            person = getattr(client.contacts, role)
            if person is None:
                continue
            key = person.email.casefold()
            if key in to:
                to[key] = Recipient(to[key].person, (*to[key].reasons, role))
            else:
                to[key] = Recipient(person, (role,))
    if not to:
        return Routing(owner, source, no_recipient_reason="no_recipients")
    cc: tuple[Recipient, ...] = ()
    notes: tuple[str, ...] = ()
    if user is not None:
        if user.email.casefold() in to:
            notes = (f"partner user {user.email} is already in To, so not copied",)
        else:
            cc = (Recipient(user, (_partner_user_source(partner, override),)),)
    return Routing(owner, source, to=tuple(to.values()), cc=cc, notes=notes)
