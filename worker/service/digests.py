"""Sends the partner digest "Renewals requiring action": finds the partners due one, and sends each user's once.

A scheduler tick marks each partner's current period as enqueued (atomically, so of many schedulers
one enqueues it) and enqueues one message per partner. The actor reads the state then, works out
each user's rows, and sends each through the send-once ledger: the same lease, Message-ID and
retry rules as the reminders.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta
from email.utils import parseaddr
from zoneinfo import ZoneInfo

import idna
from dramatiq.middleware import CurrentMessage

from ..domain.digest import (
    DigestRecipient,
    DigestRow,
    build_digest,
    digest_recipients,
    may_require_action,
    requiring_action,
    rows_for,
)
from ..domain.digest_periods import current_period, due_period, next_due_at
from ..domain.digest_schedule import DigestRule
from ..domain.errors import PermanentSendError, TransientError
from ..domain.events import PartnerData
from ..domain.rules import RuleSet
from ..mail.digest_render import DigestRenderer
from ..mail.message import build_message, envelope_recipients, message_id_for
from ..state.digests import DigestState, PartnerDigestState, digest_ledger_id
from ..state.ledger import Outcome
from .context import Context

__all__ = [
    "DIGEST_CHECK_S",
    "DigestLeaseBusy",
    "DigestScheduler",
    "deliver_digest",
    "deliver_digest_message",
    "next_digest_due",
    "partner_timezone",
    "read_partner",
]

_log = logging.getLogger("worker.digest")

# How often a scheduler looks for partners due a digest; a digest goes out at most this late.
DIGEST_CHECK_S = 60


class DigestLeaseBusy(TransientError):
    """Another worker is sending this user's digest: try again after it finishes or its lease runs out."""


@functools.cache
def _mail_from_address(mail_from: str) -> tuple[str, str]:
    """The envelope sender (domain in IDNA) and the domain of Message-IDs, from MAIL_FROM."""
    local, _, domain = parseaddr(mail_from)[1].rpartition("@")
    if not domain:
        return local, "renewals.invalid"
    return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}", domain


def partner_timezone(partner: PartnerData | None) -> ZoneInfo:
    return ZoneInfo(partner.timezone) if partner is not None else ZoneInfo("UTC")


class DigestScheduler:
    """Enqueues each partner's digest once per period, when its time has come."""

    def __init__(self, state: DigestState, rules: Callable[[], RuleSet], enqueue: Callable[[str, str], None]) -> None:
        self.state = state
        self.rules = rules
        self.enqueue = enqueue
        self._checked_at: datetime | None = None

    def maybe_run(self, now: datetime) -> int:
        """``run_once`` when DIGEST_CHECK_S have passed since the last look (by the clock given)."""
        if self._checked_at is not None and now - self._checked_at < timedelta(seconds=DIGEST_CHECK_S):
            return 0
        return self.run_once(now)

    def run_once(self, now: datetime) -> int:
        """Enqueue the digest of every partner whose current period is due and not yet enqueued."""
        self._checked_at = now
        rule = self.rules().digest
        if rule.every == "off":
            return 0
        due = []
        for partner_id, timezone in self.state.partner_timezones():
            period = due_period(rule, ZoneInfo(timezone), now)
            if period is not None:
                due.append((partner_id, period.id))
        enqueued = 0
        for (partner_id, period_id), claimed in zip(due, self.state.claim_periods(due), strict=True):
            if claimed:
                # Marked first, then enqueued: a crash in between loses this period's digest for
                # the partner rather than risk enqueuing it twice (the ledger would still stop a
                # second send, but not the retries of a busy lease).
                self.enqueue(partner_id, period_id)
                enqueued += 1
        if enqueued:
            _log.info("enqueued %d digest(s)", enqueued)
        return enqueued


def next_digest_due(state: DigestState, rules: RuleSet, now: datetime) -> datetime | None:
    """The next instant after ``now`` at which some partner's digest falls due (for a virtual clock)."""
    if rules.digest.every == "off":
        return None
    moments = [next_due_at(rules.digest, ZoneInfo(tz), now) for _, tz in state.partner_timezones()]
    return min((m for m in moments if m is not None), default=None)


async def deliver_digest(rt: Context, partner_id: str, period_id: str, *, last_try: bool) -> dict[str, str]:
    """Send one period's digest to each of a partner's users at most once; returns what happened per user.

    Raises what a retry may fix (a deferred send, a busy lease) after every user was tried: the
    retry finds the others final in the ledger.
    """
    now = rt.clock.now()
    rules = rt.rules()
    partner = rt.store.partner(partner_id)
    period = current_period(rules.digest, partner_timezone(partner), now)
    if period is None or period.id != period_id:
        # Digests were switched off, or the period ended before this message ran: its content
        # would be stale, and the next period has its own digest.
        _log.info("digest %s of %s: no longer current, not sent", period_id, partner_id)
        return {}
    state = read_partner(DigestState(rt.store), partner_id, rules, period.local_day)
    rows = requiring_action(
        state.facts,
        partner=state.partner,
        deadline_days_before_start=rules.deadline_days_before_start,
        today=period.local_day,
        horizon_days=rules.digest.horizon_days,
    )
    recipients = digest_recipients(state.partner, state.overrides)
    refs = [(partner_id, digest_ledger_id(r.person.email), period_id) for r in recipients]
    results: dict[str, str] = {}
    errors: list[Exception] = []
    renderer = DigestRenderer(rt.renderer)
    for recipient, ref in zip(recipients, refs, strict=True):
        email = recipient.person.email
        # Claimed one at a time, just before its send: each lease (SEND_LEASE_MS) then covers one
        # render and one SMTP transaction, however many users the partner has.
        claim, token, suppressed = rt.ledger.claim(*ref, check_suppressed=[email])
        if claim == "final":
            results[email] = "already_final"
        elif claim == "busy":
            errors.append(DigestLeaseBusy(f"digest {period_id} of {email} is being sent by another worker"))
            results[email] = "busy"
        else:
            result = await _send_one(
                rt, renderer, state, recipient, ref, token, rows_for(recipient, rows), now=now, last_try=last_try,
                suppressed=any(suppressed), rule=rules.digest, today=period.local_day,
            )  # fmt: skip
            if isinstance(result, Exception):
                errors.append(result)
                results[email] = f"retry: {result}"
            else:
                results[email] = result
    for email, result in results.items():
        _log.info("digest %s of %s to %s: %s", period_id, partner_id, email, result)
    if errors:
        raise errors[0]
    return results


def read_partner(state: DigestState, partner_id: str, rules: RuleSet, today: date) -> PartnerDigestState:
    """What the partner's digests are made from on ``today`` (its local date): the renewals that may
    require action, with their clients and ledgers, and who gets a digest."""

    def candidate(status: str, start_date: date, removed: bool) -> bool:
        return may_require_action(
            status,
            start_date,
            removed=removed,
            today=today,
            horizon_days=rules.digest.horizon_days,
            deadline_days_before_start=rules.deadline_days_before_start,
        )

    return state.partner_state(partner_id, candidate)


async def deliver_digest_message(rt: Context, partner_id: str, period_id: str) -> None:
    """The actor body: a message names a partner and a period; everything else is read now."""
    message = CurrentMessage.get_current_message()
    retries = message.options.get("retries", 0) if message is not None else 0
    await deliver_digest(rt, partner_id, period_id, last_try=retries >= rt.settings.delivery_max_retries)


async def _send_one(
    rt: Context,
    renderer: DigestRenderer,
    state: PartnerDigestState,
    recipient: DigestRecipient,
    ref: tuple[str, str, str],
    token: str,
    rows: list[DigestRow],
    *,
    now: datetime,
    last_try: bool,
    suppressed: bool,
    rule: DigestRule,
    today: date,
) -> str | Exception:
    """Render, send and record one user's digest (its lease is held); an exception a retry may fix is returned."""
    partner_id, ledger_id, period_id = ref
    digest = build_digest(recipient, rows)
    if digest.total_count == 0 and not rule.send_when_empty:
        rt.ledger.finish(*ref, Outcome("skipped", now, reason="nothing_requires_action"), token, plan_next=False)
        return "skipped:nothing_requires_action"
    if suppressed:
        outcome = Outcome("suppressed", now, reason="the recipient is suppressed", extra={"kind": "digest"})
        rt.ledger.finish(*ref, outcome, token, plan_next=False)
        return "suppressed"
    message_id = message_id_for(partner_id, ledger_id, period_id, domain=_mail_from_address(rt.settings.mail_from)[1])
    partner = state.partner
    try:
        rendered = renderer.render(
            digest,
            partner_id=partner_id,
            partner=partner,
            locale=partner.locale if partner is not None else None,
            today=today,
            horizon_days=rule.horizon_days,
        )
        data = build_message(
            rendered,
            mail_from=rt.settings.mail_from,
            to=[recipient.person],
            cc=[],
            reply_to=None,
            message_id=message_id,
            # One digest per user and period: the tag names the user, so it names one message.
            reminder_tag=f"{partner_id}/{period_id}/{recipient.person.email}",
            sent_at=now,
        )
        result = await rt.mailer.send(
            sender=_mail_from_address(rt.settings.mail_from)[0],
            recipients=envelope_recipients([recipient.person], []),
            message=data,
        )
    except ValueError as exc:
        outcome = Outcome("failed", now, reason="invalid_message", message_id=message_id, reply=str(exc))
        rt.ledger.finish(*ref, outcome, token, plan_next=False)
        return "failed"
    except PermanentSendError as exc:
        rt.ledger.suppress(list(exc.recipients))
        outcome = Outcome("failed", now, reason="refused", message_id=message_id, reply=str(exc))
        rt.ledger.finish(*ref, outcome, token, plan_next=False)
        return "failed"
    except Exception as exc:
        # As for reminders: deferred, connection lost, a template ops can fix: retried with
        # backoff, recorded as failed on the last try.
        rt.ledger.release(*ref, token)
        if not last_try:
            return exc
        outcome = Outcome("failed", now, reason="retries exhausted", message_id=message_id, reply=str(exc))
        rt.ledger.finish(*ref, outcome, "", plan_next=False)
        return "failed"
    except BaseException:
        rt.ledger.release(*ref, token)
        raise
    extra: dict[str, object] = {"kind": "digest", "locale": rendered.locale, "rows": digest.total_count}
    outcome = Outcome(
        "sent", rt.clock.now(), message_id=message_id, to=(recipient.person.email,), reply=result.reply, extra=extra
    )
    # Recorded at once, before the next user's transaction: a crash resends only what was not recorded.
    rt.ledger.finish(*ref, outcome, token, plan_next=False)
    return "sent"
