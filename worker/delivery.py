"""Sends one due reminder: re-check the state now, claim it in the ledger, render, send, record the outcome."""

from __future__ import annotations

import logging
from datetime import timedelta
from email.utils import parseaddr
from typing import TYPE_CHECKING

import idna

from .decision import Send, Skip, Wait, decide
from .errors import PermanentSendError, TransientError
from .events import Person
from .ledger import Outcome, due_member
from .message import build_message, envelope_recipients, message_id_for

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["LeaseBusy", "deliver"]

_log = logging.getLogger("worker.delivery")


class LeaseBusy(TransientError):
    """Another worker holds this reminder's lease: try again after it finishes or its lease runs out."""


def _reply_to(send: Send) -> Person | None:
    """Replies go to whom the mail names as the contact: the renewal manager, else the partner user."""
    if send.renewal.renewal_manager is not None:
        return send.renewal.renewal_manager
    if send.audience == "client" and send.partner is not None:
        return send.partner_user
    return None


def _keep_claim(rt: Runtime, partner_id: str, renewal_id: str, reminder_id: str) -> None:
    """A retry is coming: hold the scheduler's claim past the longest backoff so it is not enqueued again."""
    hold_ms = rt.settings.delivery_max_backoff_ms + rt.settings.send_lease_ms
    until = rt.clock.now() + timedelta(milliseconds=hold_ms)
    rt.due_index.extend(due_member(partner_id, renewal_id, reminder_id), until=until)


def _from_domain(mail_from: str) -> str:
    return parseaddr(mail_from)[1].rpartition("@")[2] or "renewals.invalid"


def _envelope_sender(mail_from: str) -> str:
    local, _, domain = parseaddr(mail_from)[1].rpartition("@")
    return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}" if domain else local


async def deliver(rt: Runtime, partner_id: str, renewal_id: str, reminder_id: str, *, last_try: bool) -> str:
    """Deliver one reminder at most once; returns what happened (sent, skipped:<why>, waiting, ...)."""
    now = rt.clock.now()
    rules = rt.rules()
    member = due_member(partner_id, renewal_id, reminder_id)
    view = rt.planning.view(partner_id, renewal_id)
    if reminder_id in view.outcomes:
        rt.due_index.release(member)
        return "already_final"
    client = view.client
    decision = decide(
        reminder_id,
        view.plan(rules, now),
        renewal=view.renewal.renewal,
        client=client.client if client else None,
        partner=view.partner,
        override=client.override if client else None,
        rules=rules,
        now=now,
        contact_roles=rt.settings.hubspot_contact_roles,
    )
    if isinstance(decision, Wait):
        # The renewal changed after this reminder was claimed: hand it back to planning.
        rt.due_index.release(member)
        rt.planning.replan(partner_id, renewal_id, rules, now)
        return "waiting"
    if isinstance(decision, Skip):
        rt.ledger.finish(partner_id, renewal_id, reminder_id, Outcome("skipped", now, reason=decision.reason))
        return f"skipped:{decision.reason}"
    return await _send(rt, decision, partner_id, renewal_id, reminder_id, last_try=last_try)


async def _send(rt: Runtime, send: Send, partner_id: str, renewal_id: str, reminder_id: str, *, last_try: bool) -> str:
    now = rt.clock.now()
    people_to = [r.person for r in send.routing.to]
    people_cc = [r.person for r in send.routing.cc]
    # One round trip: which recipients are suppressed, and the lease on the reminder.
    claim, token, flags = rt.ledger.claim(
        partner_id, renewal_id, reminder_id, check_suppressed=[p.email for p in people_to + people_cc]
    )
    if claim == "final":
        rt.due_index.release(due_member(partner_id, renewal_id, reminder_id))
        return "already_final"
    if claim == "busy":
        _keep_claim(rt, partner_id, renewal_id, reminder_id)
        raise LeaseBusy(f"{renewal_id}/{reminder_id} is being sent by another worker")
    to = [p for p, flag in zip(people_to, flags[: len(people_to)], strict=True) if not flag]
    cc = [p for p, flag in zip(people_cc, flags[len(people_to) :], strict=True) if not flag]
    suppressed = [p.email for p, flag in zip(people_to + people_cc, flags, strict=True) if flag]
    if not to:
        outcome = Outcome("suppressed", now, reason="every recipient is suppressed", extra={"addresses": suppressed})
        rt.ledger.finish(partner_id, renewal_id, reminder_id, outcome, token)
        return "suppressed"

    message_id = message_id_for(partner_id, renewal_id, reminder_id, domain=_from_domain(rt.settings.mail_from))
    try:
        rendered = rt.renderer.render(
            send.template,
            audience=send.audience,
            locale=send.locale,
            renewal=send.renewal,
            client=send.client,
            partner=send.partner,
            partner_user=send.partner_user,
            deadline=send.deadline,
            today=send.local_today,
        )
        data = build_message(
            rendered,
            mail_from=rt.settings.mail_from,
            to=to,
            cc=cc,
            reply_to=_reply_to(send),
            message_id=message_id,
            reminder_tag=f"{renewal_id}/{reminder_id}",
            sent_at=now,
        )
        result = await rt.mailer.send(
            sender=_envelope_sender(rt.settings.mail_from), recipients=envelope_recipients(to, cc), message=data
        )
    except ValueError as exc:
        # The data cannot make a valid message (build_message refuses it): no retry can help.
        outcome = Outcome("failed", now, reason="invalid_message", message_id=message_id, reply=str(exc))
        rt.ledger.finish(partner_id, renewal_id, reminder_id, outcome, token)
        _log.error("%s/%s cannot be built: %s", renewal_id, reminder_id, exc)
        return "failed"
    except PermanentSendError as exc:
        rt.ledger.suppress(list(exc.recipients))
        outcome = Outcome("failed", now, reason="refused", message_id=message_id, reply=str(exc))
        rt.ledger.finish(partner_id, renewal_id, reminder_id, outcome, token)
        _log.error("%s/%s refused: %s", renewal_id, reminder_id, exc)
        return "failed"
    except Exception as exc:
        # Deferred sends, lost connections, a template or SMTP login ops can fix before retries
        # run out, or a bug: retried with backoff, and recorded as failed on the last try.
        rt.ledger.release(partner_id, renewal_id, reminder_id, token)
        if not last_try:
            _keep_claim(rt, partner_id, renewal_id, reminder_id)
            raise
        outcome = Outcome("failed", now, reason="retries exhausted", message_id=message_id, reply=str(exc))
        rt.ledger.finish(partner_id, renewal_id, reminder_id, outcome)
        _log.error("%s/%s failed after retries: %s", renewal_id, reminder_id, exc)
        return "failed"
    except BaseException:
        rt.ledger.release(partner_id, renewal_id, reminder_id, token)
        _keep_claim(rt, partner_id, renewal_id, reminder_id)
        raise
    rt.ledger.suppress(list(result.refused))
    extra: dict[str, object] = {"locale": rendered.locale}
    if result.refused:
        extra["refused"] = dict(result.refused)
    if suppressed:
        extra["suppressed"] = suppressed
    # Recorded when the server accepted it (the Date header carries when it was written).
    outcome = Outcome(
        "sent",
        rt.clock.now(),
        message_id=message_id,
        to=tuple(p.email for p in to),
        cc=tuple(p.email for p in cc),
        reply=result.reply,
        extra=extra,
    )
    rt.ledger.finish(partner_id, renewal_id, reminder_id, outcome, token)
    return "sent"
