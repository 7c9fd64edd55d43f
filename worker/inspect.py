"""Plain-text views of stored state for ops: what is stored, and why a reminder would go where."""

from __future__ import annotations

from collections.abc import Sequence

from .events import Person
from .routing import route
from .settings import ContactRole
from .store import Store

__all__ = ["describe_client", "format_person"]


def format_person(person: Person | None) -> str:
    return "-" if person is None else f"{person.name} <{person.email}>"


def describe_client(store: Store, partner_id: str, client_id: str, roles: Sequence[ContactRole]) -> str:
    partner = store.partner(partner_id)
    state = store.client_state(partner_id, client_id)
    lines = [f"partner {partner_id}: " + ("(unknown)" if partner is None else partner.name)]
    if partner is not None:
        lines.append(f"  default owner: {partner.default_owner}; notify user: {format_person(partner.notify_user)}")
        lines.append(f"  locale {partner.locale}, time zone {partner.timezone}")
    lines.append(f"client {client_id}: " + ("(no details received)" if state.client is None else state.client.domain))
    if state.client is not None:
        c = state.client
        lines.append(
            f"  name: {c.name or '-'}; locale {c.locale}; time zone {c.timezone or '(partner' + chr(39) + 's)'}"
        )
        lines.append(f"  primary:        {format_person(c.contacts.primary)}")
        lines.append(f"  billing:        {format_person(c.contacts.billing)}")
        lines.append(f"  decision maker: {format_person(c.contacts.decision_maker)}")
    if state.override is not None:
        o = state.override
        lines.append(f"  owner override: {o.owner or '(none: partner default)'}; user {format_person(o.notify_user)}")
    if state.services_ended:
        lines.append(f"  SERVICES ENDED at {state.ended_at.isoformat() if state.ended_at else '?'}: no email, ever")
    routing = route(state.client, partner, state.override, contact_roles=roles)
    lines.append(f"effective owner: {routing.owner} ({routing.owner_source.replace('_', ' ')})")
    if state.services_ended:
        lines.append("reminders: none (services ended)")
        return "\n".join(lines)
    if not routing.sendable:
        lines.append(f"reminders: none ({routing.no_recipient_reason})")
    for label, group in (("To", routing.to), ("Cc", routing.cc)):
        for rcpt in group:
            lines.append(f"  {label}: {format_person(rcpt.person)}  [{', '.join(rcpt.reasons)}]")
    lines.extend(f"  note: {note}" for note in routing.notes)
    return "\n".join(lines)
