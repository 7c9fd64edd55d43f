"""Sends due reminders: re-check the state now, claim each in the ledger, render, send, record the outcomes."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from email.utils import parseaddr

import idna

from ..domain.decision import Send, Skip, Wait, decide, reply_to
from ..domain.errors import PermanentSendError, TransientError
from ..mail.message import build_message, envelope_recipients, message_id_for
from ..state.ledger import Outcome, ReminderRef, due_member
from .context import Context

__all__ = ["LeaseBusy", "deliver", "deliver_many"]

_log = logging.getLogger("worker.delivery")


class LeaseBusy(TransientError):
    """Another worker holds this reminder's lease: try again after it finishes or its lease runs out."""


def _keep_claim(rt: Context, partner_id: str, renewal_id: str, reminder_id: str) -> None:
    """A retry is coming: hold the scheduler's claim past the longest backoff so it is not enqueued again."""
    hold_ms = rt.settings.delivery_max_backoff_ms + rt.settings.send_lease_ms
    until = rt.clock.now() + timedelta(milliseconds=hold_ms)
    rt.due_index.extend(due_member(partner_id, renewal_id, reminder_id), until=until)


@functools.cache  # one MAIL_FROM per process; parseaddr is slow enough to show in a profile
def _from_domain(mail_from: str) -> str:
    return parseaddr(mail_from)[1].rpartition("@")[2] or "renewals.invalid"


@functools.cache
def _envelope_sender(mail_from: str) -> str:
    local, _, domain = parseaddr(mail_from)[1].rpartition("@")
    return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}" if domain else local


async def deliver(rt: Context, partner_id: str, renewal_id: str, reminder_id: str, *, last_try: bool) -> str:
    """Deliver one reminder at most once; returns what happened (sent, skipped:<why>, waiting, ...).

    Raises what a retry may fix (a deferred send, a lost connection, a busy lease).
    """
    (result,) = await deliver_many(rt, [(partner_id, renewal_id, reminder_id)], last_try=last_try)
    if isinstance(result, Exception):
        raise result
    return result


async def deliver_many(rt: Context, refs: Sequence[ReminderRef], *, last_try: bool) -> list[str | Exception]:
    """Deliver reminders at most once each, with Redis read and written a few times per batch.

    The state is read for all, each is decided on its own, claimed in one round trip, then the
    emails go out concurrently over the mailer's connections and every outcome is written in one
    round trip. Per reminder: what happened, or the exception that a retry may fix (its lease is
    given back and its scheduler claim held until the retry).
    """
    now = rt.clock.now()
    rules = rt.rules()
    views = rt.planning.views([(pid, rid) for pid, rid, _ in refs])
    results: list[str | Exception] = [""] * len(refs)
    batch = _Batch()
    sends: list[tuple[int, Send, bool]] = []
    replan: list[tuple[str, str]] = []
    for i, (ref, view) in enumerate(zip(refs, views, strict=True)):
        partner_id, renewal_id, reminder_id = ref
        if reminder_id in view.outcomes:
            batch.release.append(due_member(*ref))
            results[i] = "already_final"
            continue
        client = view.client
        plan = view.plan(rules, now)
        # Once this reminder is final, the renewal is planned again when another reminder follows:
        # the due index holds only each renewal's next one.
        plan_next = any(p.reminder_id != reminder_id for p in plan.planned)
        decision = decide(
            reminder_id,
            plan,
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
            batch.release.append(due_member(*ref))
            replan.append((partner_id, renewal_id))
            results[i] = "waiting"
        elif isinstance(decision, Skip):
            batch.finish.append((ref, Outcome("skipped", now, reason=decision.reason), "", plan_next))
            results[i] = f"skipped:{decision.reason}"
        else:
            sends.append((i, decision, plan_next))
    if replan:
        rt.due_index.release(*batch.release)  # out of the claimed set before re-planning
        batch.release = []
        for partner_id, renewal_id in replan:
            rt.planning.replan(partner_id, renewal_id, rules, now)

    # One round trip: the lease on each reminder to send, and which of its recipients are suppressed.
    claims = rt.ledger.claim_many(
        [(refs[i], [r.person.email for r in send.routing.to + send.routing.cc]) for i, send, _ in sends]
    )
    attempts = []
    for (i, send, plan_next), (claim, token, flags) in zip(sends, claims, strict=True):
        ref = refs[i]
        if claim == "final":
            batch.release.append(due_member(*ref))
            results[i] = "already_final"
        elif claim == "busy":
            _keep_claim(rt, *ref)
            results[i] = LeaseBusy(f"{ref[1]}/{ref[2]} is being sent by another worker")
        else:
            attempt = _attempt(
                rt, ref, send, token, flags, now=now, last_try=last_try, plan_next=plan_next, batch=batch
            )
            attempts.append((i, attempt))
    try:
        done = await asyncio.gather(*(a for _, a in attempts), return_exceptions=True) if attempts else []
    finally:
        # Even when cancelled half-way (a worker stopping): what the server accepted is recorded.
        rt.ledger.finish_many(batch.finish, suppress=batch.suppress, release=batch.release)
    for (i, _), result in zip(attempts, done, strict=True):
        if not isinstance(result, (str, Exception)):
            raise result  # cancelled: its lease is back and its claim held for the retry
        results[i] = result
    return results


class _Batch:
    """What one batch writes at its end, in one round trip."""

    def __init__(self) -> None:
        self.finish: list[tuple[ReminderRef, Outcome, str, bool]] = []
        self.suppress: list[str] = []
        self.release: list[str | bytes] = []


async def _attempt(
    rt: Context,
    ref: ReminderRef,
    send: Send,
    token: str,
    flags: list[bool],
    *,
    now: datetime,
    last_try: bool,
    plan_next: bool,
    batch: _Batch,
) -> str | Exception:
    """Render, build and send one claimed reminder; its outcome goes into ``batch``."""
    partner_id, renewal_id, reminder_id = ref
    people_to = [r.person for r in send.routing.to]
    people_cc = [r.person for r in send.routing.cc]
    to = [p for p, flag in zip(people_to, flags[: len(people_to)], strict=True) if not flag]
    cc = [p for p, flag in zip(people_cc, flags[len(people_to) :], strict=True) if not flag]
    suppressed = [p.email for p, flag in zip(people_to + people_cc, flags, strict=True) if flag]
    if not to:
        outcome = Outcome("suppressed", now, reason="every recipient is suppressed", extra={"addresses": suppressed})
        batch.finish.append((ref, outcome, token, plan_next))
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
            reply_to=reply_to(send),
            message_id=message_id,
            # Renewal ids are unique per partner only: the partner id makes the tag name one reminder.
            reminder_tag=f"{partner_id}/{renewal_id}/{reminder_id}",
            sent_at=now,
        )
        result = await rt.mailer.send(
            sender=_envelope_sender(rt.settings.mail_from), recipients=envelope_recipients(to, cc), message=data
        )
    except ValueError as exc:
        # The data cannot make a valid message (build_message refuses it): no retry can help.
        outcome = Outcome("failed", now, reason="invalid_message", message_id=message_id, reply=str(exc))
        batch.finish.append((ref, outcome, token, plan_next))
        _log.error("%s/%s cannot be built: %s", renewal_id, reminder_id, exc)
        return "failed"
    except PermanentSendError as exc:
        batch.suppress.extend(exc.recipients)
        outcome = Outcome("failed", now, reason="refused", message_id=message_id, reply=str(exc))
        batch.finish.append((ref, outcome, token, plan_next))
        _log.error("%s/%s refused: %s", renewal_id, reminder_id, exc)
        return "failed"
    except Exception as exc:
        # Deferred sends, lost connections, a template or SMTP login ops can fix before retries
        # run out, or a bug: retried with backoff, and recorded as failed on the last try.
        rt.ledger.release(partner_id, renewal_id, reminder_id, token)
        if not last_try:
            _keep_claim(rt, partner_id, renewal_id, reminder_id)
            return exc
        outcome = Outcome("failed", now, reason="retries exhausted", message_id=message_id, reply=str(exc))
        batch.finish.append((ref, outcome, "", plan_next))
        _log.error("%s/%s failed after retries: %s", renewal_id, reminder_id, exc)
        return "failed"
    except BaseException:
        rt.ledger.release(partner_id, renewal_id, reminder_id, token)
        _keep_claim(rt, partner_id, renewal_id, reminder_id)
        raise
    batch.suppress.extend(result.refused)
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
    batch.finish.append((ref, outcome, token, plan_next))
    return "sent"
