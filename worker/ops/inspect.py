"""Plain-text views of stored state for ops: what is stored, and why a reminder would go where."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..domain.events import Person
from ..domain.routing import ContactRole, route
from ..state.store import Store

if TYPE_CHECKING:
    from ..service.runtime import Runtime

__all__ = ["describe_client", "describe_plan", "format_person"]


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


def describe_plan(rt: Runtime, partner_id: str, renewal_id: str) -> str:
    """Each reminder of a renewal: due time in UTC and local time, its state, and who it would reach now."""
    from zoneinfo import ZoneInfo

    from ..domain.planner import reminder_due_at
    from ..domain.routing import route

    rules = rt.rules()
    now = rt.clock.now()
    view = rt.planning.view(partner_id, renewal_id)
    plan = view.plan(rules, now)
    state = view.renewal
    if state.renewal is None:
        return f"renewal {renewal_id} of partner {partner_id}: unknown" + (" (removed)" if state.removed else "")
    renewal = state.renewal
    tz = ZoneInfo(plan.timezone)
    lines = [
        f"renewal {renewal_id} of partner {partner_id}: client {renewal.client_id}, status {renewal.status}"
        + (", REMOVED" if state.removed else ""),
        f"  start {renewal.start_date}, deadline {plan.deadline}, recipients' time zone {plan.timezone}",
    ]
    if plan.inactive_reason:
        lines.append(f"  nothing planned: {plan.inactive_reason}")
    planned = {p.reminder_id: p for p in plan.planned}
    skipped = {s.reminder_id: s for s in plan.skipped}
    for rule in rules.reminders:
        due = reminder_due_at(rule, renewal.start_date, rules, tz)
        outcome = view.outcomes.get(rule.id)
        if outcome is not None:
            state_text = outcome.kind + (f" ({outcome.reason})" if outcome.reason else "")
            state_text += f" at {outcome.at.isoformat()}"
            if outcome.message_id:
                state_text += f", {outcome.message_id}, to {', '.join(outcome.to)}"
                state_text += f"; cc {', '.join(outcome.cc)}" if outcome.cc else ""
            if outcome.reply:
                state_text += f"; reply: {outcome.reply}"
        elif rule.id in planned:
            p = planned[rule.id]
            state_text = "planned" + (f" (caught up: sends at {p.due_at.isoformat()})" if p.caught_up else "")
        elif rule.id in skipped:
            state_text = f"will be skipped ({skipped[rule.id].reason})"
        else:
            state_text = f"not planned ({plan.inactive_reason or 'status ' + renewal.status})"
        local = due.astimezone(tz)
        when = f"{due:%Y-%m-%d %H:%M} UTC / {local:%Y-%m-%d %H:%M} {local.tzname()} ({plan.timezone})"
        lines.append(f"  {rule.id}: due {when}: {state_text}")
    client = view.client
    routing = route(
        client.client if client else None,
        view.partner,
        client.override if client else None,
        contact_roles=rt.settings.hubspot_contact_roles,
    )
    if client is not None and client.services_ended:
        lines.append("  recipients now: none (services ended)")
    elif not routing.sendable:
        lines.append(f"  recipients now: none ({routing.no_recipient_reason})")
    else:
        lines.append(f"  owner now: {routing.owner}")
        lines.append("  To now: " + ", ".join(format_person(r.person) for r in routing.to))
        lines.append("  Cc now: " + (", ".join(format_person(r.person) for r in routing.cc) or "-"))
    return "\n".join(lines)
