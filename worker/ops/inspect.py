"""Plain-text views of stored state for ops: what is stored, and why a reminder would go where."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..domain.events import Person
from ..domain.routing import Recipient, route
from ..domain.rules import RuleSet
from ..state.history import History, ReminderAttempts
from ..state.ledger import Outcome
from ..state.suppressions import Suppression

if TYPE_CHECKING:
    from ..service.runtime import Runtime

__all__ = ["describe_client", "describe_plan", "format_person", "format_time"]


def format_person(person: Person | None) -> str:
    return "-" if person is None else f"{person.name} <{person.email}>"


def format_time(moment: datetime) -> str:
    """The one time format of these views: UTC to the minute."""
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _suppressed_note(s: Suppression) -> str:
    since = f" since {format_time(s.at)}" if s.at else ""
    why = s.reason + (f": {s.reply}" if s.reply else "") + (f", by {s.by}" if s.by else "")
    return f"SUPPRESSED{since} ({why}): gets nothing"


def _recipient_lines(label: str, group: Sequence[Recipient], suppressed: Mapping[str, Suppression]) -> list[str]:
    lines = []
    for rcpt in group:
        line = f"  {label}: {format_person(rcpt.person)}  [{', '.join(rcpt.reasons)}]"
        found = suppressed.get(rcpt.person.email.casefold())
        lines.append(line + (f"  {_suppressed_note(found)}" if found else ""))
    return lines


def describe_client(rt: Runtime, partner_id: str, client_id: str, *, rules: RuleSet) -> str:
    """The client, its effective owner, To and Cc with the reason for each (suppressed ones marked), its renewals."""
    store = rt.store
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
    routing = route(state.client, partner, state.override, contact_roles=rt.settings.hubspot_contact_roles)
    lines.append(f"effective owner: {routing.owner} ({routing.owner_source.replace('_', ' ')})")
    if state.services_ended:
        lines.append("reminders: none (services ended)")
    else:
        if not routing.sendable:
            lines.append(f"reminders: none ({routing.no_recipient_reason})")
        suppressed = rt.ledger.suppressions.get_many([r.person.email for r in routing.to + routing.cc])
        lines.extend(_recipient_lines("To", routing.to, suppressed))
        lines.extend(_recipient_lines("Cc", routing.cc, suppressed))
        if routing.to and all(r.person.email.casefold() in suppressed for r in routing.to):
            lines.append("  note: every To address is suppressed: reminders are recorded suppressed, not sent")
        lines.extend(f"  note: {note}" for note in routing.notes)
    lines.extend(_client_renewals(rt, partner_id, client_id, rules))
    return "\n".join(lines)


def _client_renewals(rt: Runtime, partner_id: str, client_id: str, rules: RuleSet) -> list[str]:
    now = rt.clock.now()
    ids = rt.store.renewal_ids(partner_id, client_id)
    views = [v for v in rt.planning.views([(partner_id, rid) for rid in ids]) if v.renewal.renewal is not None]
    views = [v for v in views if v.renewal.renewal is not None and v.renewal.renewal.client_id == client_id]
    if not views:
        return ["renewals: none received"]
    lines = [f"renewals ({len(views)}; `renewals plan {partner_id} RENEWAL` for each reminder):"]
    for view in views:
        renewal = view.renewal.renewal
        assert renewal is not None
        plan = view.plan(rules, now)
        head = f"  {renewal.renewal_id}: start {renewal.start_date}, status {renewal.status}"
        head += ", REMOVED" if view.renewal.removed else ""
        done = sorted(view.outcomes.items(), key=lambda item: item[1].at)
        parts = [f"{rid} {o.kind}" + (f" ({o.reason})" if o.reason else "") for rid, o in done]
        if plan.planned:
            nxt = plan.planned[0]
            parts.append(f"next: {nxt.reminder_id} at {format_time(nxt.due_at)}")
        elif plan.inactive_reason:
            parts.append(f"nothing planned ({plan.inactive_reason})")
        lines.append(head + ("; " + "; ".join(parts) if parts else ""))
    return lines


def _outcome_text(outcome: Outcome, suppressed: Mapping[str, Suppression]) -> str:
    text = outcome.kind + (f" ({outcome.reason})" if outcome.reason else "") + f" at {format_time(outcome.at)}"
    refused: dict[str, str] = dict(outcome.extra.get("refused", {}))

    def address(a: str) -> str:
        if a not in refused:
            return a
        found = suppressed.get(a.casefold())
        since = f"; suppressed since {format_time(found.at)}" if found and found.at else "; suppressed"
        return f"{a} (REFUSED: {refused[a]}{since})"

    if outcome.message_id:
        text += f", {outcome.message_id}"
    if outcome.to:
        text += f", to {', '.join(address(a) for a in outcome.to)}"
    if outcome.cc:
        text += f"; cc {', '.join(address(a) for a in outcome.cc)}"
    skipped = outcome.extra.get("suppressed") or outcome.extra.get("addresses") or []
    if skipped:
        notes = []
        for a in skipped:
            found = suppressed.get(a.casefold())
            notes.append(a + (f" ({found.reason}{': ' + found.reply if found.reply else ''})" if found else ""))
        text += f"; not sent to (suppressed): {', '.join(notes)}"
    if outcome.reply:
        text += f"; reply: {outcome.reply}"
    if outcome.extra.get("by"):
        text += f"; by {outcome.extra['by']}"
    return text


def _attempts_text(attempts: ReminderAttempts | None, *, final: bool) -> str:
    if attempts is None:
        return ""
    if final:
        return f"; after {attempts.attempts} deferred attempt(s)"
    return (
        f"; being retried: {attempts.attempts} deferred attempt(s), last at {format_time(attempts.at)}: "
        f"{attempts.last_error}"
    )


def describe_plan(rt: Runtime, partner_id: str, renewal_id: str, *, rules: RuleSet) -> str:
    """Each reminder of a renewal in due order: due time (UTC and local), its state, and who it would reach now.

    Every recorded outcome is shown, also of a reminder whose rule was since removed from the rules.
    """
    from zoneinfo import ZoneInfo

    from ..domain.planner import reminder_due_at

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
    attempts = History(rt.redis, rt.keys).attempts(partner_id, renewal_id)
    addresses = [a for o in view.outcomes.values() for a in (*o.to, *o.cc, *o.extra.get("suppressed", ()))]
    client = view.client
    routing = route(
        client.client if client else None,
        view.partner,
        client.override if client else None,
        contact_roles=rt.settings.hubspot_contact_roles,
    )
    addresses += [r.person.email for r in routing.to + routing.cc]
    suppressed = rt.ledger.suppressions.get_many(addresses)

    rows: list[tuple[datetime, str]] = []
    for rule in rules.reminders:
        due = reminder_due_at(rule, renewal.start_date, rules, tz)
        outcome = view.outcomes.get(rule.id)
        if outcome is not None:
            state_text = _outcome_text(outcome, suppressed) + _attempts_text(attempts.get(rule.id), final=True)
        elif rule.id in planned:
            p = planned[rule.id]
            state_text = "planned" + (f" (caught up: sends at {format_time(p.due_at)})" if p.caught_up else "")
            state_text += _attempts_text(attempts.get(rule.id), final=False)
        elif rule.id in skipped:
            state_text = f"will be skipped ({skipped[rule.id].reason})"
        else:
            state_text = f"not planned ({plan.inactive_reason or 'status ' + renewal.status})"
        local = due.astimezone(tz)
        when = f"{due:%Y-%m-%d %H:%M} UTC / {local:%Y-%m-%d %H:%M} {local.tzname()} ({plan.timezone})"
        rows.append((due, f"  {rule.id}: due {when}: {state_text}"))
    for reminder_id, outcome in view.outcomes.items():
        if reminder_id not in rules.by_id:  # its rule was removed since: the record stays visible
            text = _outcome_text(outcome, suppressed) + _attempts_text(attempts.get(reminder_id), final=True)
            rows.append((outcome.at, f"  {reminder_id} (no longer in the rules): {text}"))
    rows.sort(key=lambda row: row[0])
    lines.extend(text for _, text in rows)

    if client is not None and client.services_ended:
        lines.append("  recipients now: none (services ended)")
    elif not routing.sendable:
        lines.append(f"  recipients now: none ({routing.no_recipient_reason})")
    else:

        def now_text(group: Sequence[Recipient]) -> str:
            out = []
            for r in group:
                found = suppressed.get(r.person.email.casefold())
                out.append(format_person(r.person) + (f" [{_suppressed_note(found)}]" if found else ""))
            return ", ".join(out) or "-"

        lines.append(f"  owner now: {routing.owner}")
        lines.append("  To now: " + now_text(routing.to))
        lines.append("  Cc now: " + now_text(routing.cc))
    return "\n".join(lines)
