"""Whether a due reminder goes out now, and to whom: decided from the state at send time (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from .events import ClientData, OwnerData, PartnerData, Person, RenewalData
from .planner import NO_CLIENT_DETAILS, NO_PARTNER_SETTINGS, Plan
from .routing import ALL_CONTACT_ROLES, ContactRole, Routing, partner_user, route
from .rules import RuleSet

__all__ = ["NOT_DUE_TOLERANCE", "Send", "Skip", "Wait", "decide", "reply_to"]

# A reminder claimed a moment before its due instant (clock skew between machines) still goes.
NOT_DUE_TOLERANCE = timedelta(seconds=5)


@dataclass(frozen=True)
class Send:
    template: str
    audience: Literal["client", "partner"]
    locale: str | None
    renewal: RenewalData
    client: ClientData
    partner: PartnerData | None
    partner_user: Person | None
    routing: Routing
    deadline: date
    local_today: date


def reply_to(send: Send) -> Person | None:
    """Replies go to whom the mail names as the contact: the renewal manager, else the partner user."""
    if send.renewal.renewal_manager is not None:
        return send.renewal.renewal_manager
    if send.audience == "client" and send.partner is not None:
        return send.partner_user
    return None


@dataclass(frozen=True)
class Skip:
    """Never send this reminder: the reason is recorded as its final outcome."""

    reason: str


@dataclass(frozen=True)
class Wait:
    """Not due (any more) at this time: a re-plan has put it back in the due index; record nothing."""

    reason: str


def decide(
    reminder_id: str,
    plan: Plan,
    *,
    renewal: RenewalData | None,
    client: ClientData | None,
    partner: PartnerData | None,
    override: OwnerData | None,
    rules: RuleSet,
    now: datetime,
    contact_roles: Sequence[ContactRole] = ALL_CONTACT_ROLES,
) -> Send | Skip | Wait:
    """Re-check a due reminder against the current plan, then route it with the current owner and contacts."""
    if reminder_id not in rules.by_id:
        return Skip("rule_removed")
    if plan.inactive_reason == NO_CLIENT_DETAILS or (client is None and plan.inactive_reason is None):
        # The renewal arrived before its client: nothing is recorded, and the client's arrival
        # plans the reminder again (caught up at once if its time has passed).
        return Wait(NO_CLIENT_DETAILS)
    if plan.inactive_reason == NO_PARTNER_SETTINGS or (partner is None and plan.inactive_reason is None):
        # Likewise before the partner's settings arrive: its partner.updated plans it again.
        return Wait(NO_PARTNER_SETTINGS)
    if plan.inactive_reason is not None:
        return Skip(plan.inactive_reason)
    for skipped in plan.skipped:
        if skipped.reminder_id == reminder_id:
            return Skip(skipped.reason)
    planned = plan.planned_reminder(reminder_id)
    if planned is None or renewal is None or plan.deadline is None:
        return Skip("not_applicable")
    if planned.due_at > now + NOT_DUE_TOLERANCE:
        return Wait(f"due at {planned.due_at.isoformat()}")
    if client is None:  # pragma: no cover - answered above; kept for the type checker
        return Wait(NO_CLIENT_DETAILS)
    routing = route(client, partner, override, contact_roles=contact_roles)
    if not routing.sendable:
        return Skip(routing.no_recipient_reason or "no_recipients")
    audience: Literal["client", "partner"] = "client" if routing.owner == "hubspot" else "partner"
    locale = client.locale if audience == "client" else (partner.locale if partner else None)
    return Send(
        template=planned.template,
        audience=audience,
        locale=locale,
        renewal=renewal,
        client=client,
        partner=partner,
        partner_user=partner_user(partner, override),
        routing=routing,
        deadline=plan.deadline,
        local_today=now.astimezone(ZoneInfo(plan.timezone)).date(),
    )
