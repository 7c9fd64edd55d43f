"""Sends due reminders: re-check the state now, claim each in the ledger, render, send, record the outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parseaddr

import idna
import redis

from ..domain.decision import Send, Skip, Wait, decide, reply_to
from ..domain.errors import ConfigError, InvalidMessage, PermanentSendError, TransientError
from ..domain.planner import Plan
from ..domain.rules import RuleSet
from ..mail.message import build_message, envelope_recipients, message_id_for
from ..mail.transport import Envelope, SendResult
from ..state.history import HistoryEntry
from ..state.ledger import Outcome, ReminderRef, due_member
from ..state.planning import RenewalView
from ..state.scripts import run_pipeline
from ..state.send_check import SendCheck
from ..state.suppressions import Suppression
from .context import Context
from .recorder import Recorder, keep_leases_alive, wait_for_redis

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


async def deliver(
    rt: Context, partner_id: str, renewal_id: str, reminder_id: str, *, last_try: bool, attempt: int = 1
) -> str:
    """Deliver one reminder at most once; returns what happened (sent, skipped:<why>, failed:<why>, waiting, ...).

    Raises what a retry may fix (a deferred send, a lost connection, a busy lease).
    """
    (result,) = await deliver_many(rt, [(partner_id, renewal_id, reminder_id)], last_try=last_try, attempt=attempt)
    if isinstance(result, Exception):
        raise result
    return result


async def deliver_many(
    rt: Context,
    refs: Sequence[ReminderRef],
    *,
    last_try: bool,
    attempt: int = 1,
    planned_at: dict[ReminderRef, datetime] | None = None,
) -> list[str | Exception]:
    """Deliver reminders at most once each, each checked against the state as its transaction starts.

    The batch reads the state for all and claims the lease on each reminder to send in two round
    trips; then each send, once it has an SMTP connection in hand, checks that nothing its
    decision was made from has changed (``SendCheck``, reading the renewal again if it has: the
    round trip is shared with other checks and carries the outcomes accepted meanwhile), decides
    and renders at that moment, and sends. Per reminder: what happened, or the exception that a retry may
    fix (its lease is given back and its scheduler claim held until the retry). ``attempt`` (1 for
    the first try) goes into the history with each outcome and deferral. ``planned_at``, when
    given, gets the time each reminder's rule planned it for (before any catch-up), for the log.
    """
    now = rt.clock.now()
    rules = rt.rules()
    views = rt.planning.views([(pid, rid) for pid, rid, _ in refs])
    results: list[str | Exception] = [""] * len(refs)
    recorder = Recorder(rt.ledger, attempt=attempt, outage=rt.redis_outage)
    sends: list[tuple[int, Send, RenewalView, bool]] = []
    replan: list[tuple[str, str]] = []
    for i, (ref, view) in enumerate(zip(refs, views, strict=True)):
        partner_id, renewal_id, reminder_id = ref
        if view.renewal.renewal is not None:
            recorder.clients[ref] = view.renewal.renewal.client_id
        if reminder_id in view.outcomes:
            recorder.add(release=[due_member(*ref)])
            results[i] = "already_final"
            continue
        plan = view.plan(rules, now)
        item = plan.planned_reminder(reminder_id)
        if planned_at is not None and item is not None:
            planned_at[ref] = item.planned_at
        decision = _decide(rt, view, reminder_id, plan, rules, now)
        # Once this reminder is final, the renewal is planned again when another reminder follows:
        # the due index holds only each renewal's next one.
        plan_next = any(p.reminder_id != reminder_id for p in plan.planned)
        if isinstance(decision, Wait):
            # The renewal changed after this reminder was claimed: hand it back to planning.
            recorder.add(release=[due_member(*ref)])
            replan.append((partner_id, renewal_id))
            results[i] = "waiting"
        elif isinstance(decision, Skip):
            recorder.add((ref, Outcome("skipped", now, reason=decision.reason), "", plan_next))
            results[i] = f"skipped:{decision.reason}"
        else:
            sends.append((i, decision, view, plan_next))
    if replan:
        recorder.write_now()  # out of the claimed set before re-planning
        for partner_id, renewal_id in replan:
            rt.planning.replan(partner_id, renewal_id, rules, now)

    lease_ms = rt.ledger.lease_ms
    # One round trip: the lease on each reminder to send, and the scheduler's claim cut to one lease
    # (renewed below while this worker lives), so a dead worker's reminders come back in seconds.
    claims = rt.ledger.claim_many(
        [(refs[i], []) for i, _, _, _ in sends], hold_claims_until_ms=_epoch_ms(rt.clock.now()) + lease_ms
    )
    leases: dict[ReminderRef, str] = {}
    checks = _checks_for(rt)
    recorder.on_pending = functools.partial(checks.kick, recorder)
    attempts = []
    for (i, send, view, plan_next), (claim, token, _) in zip(sends, claims, strict=True):
        ref = refs[i]
        if claim == "final":
            recorder.add(release=[due_member(*ref)])
            results[i] = "already_final"
        elif claim == "busy":
            _keep_claim(rt, *ref)
            results[i] = LeaseBusy(f"{ref[1]}/{ref[2]} is being sent by another worker")
        else:
            leases[ref] = token
            job = _Send(rt, ref, token, view, send, rules=rules, plan_next=plan_next, last_try=last_try)
            attempts.append((i, job.run(recorder, checks, leases)))
    keeper = asyncio.ensure_future(
        keep_leases_alive(rt.ledger, leases, lease_ms=lease_ms, now_ms=lambda: _epoch_ms(rt.clock.now()))
    )
    try:
        done = await asyncio.gather(*(a for _, a in attempts), return_exceptions=True) if attempts else []
    finally:
        keeper.cancel()
        # Even when cancelled half-way (a worker stopping), or with Redis away for a while: what the
        # server accepted is recorded before the message is acknowledged.
        await recorder.flush(wait_s=rt.settings.outcome_write_wait_s)
    for (i, _), result in zip(attempts, done, strict=True):
        if not isinstance(result, (str, Exception)):
            raise result  # cancelled: its lease is back and its claim held for the retry
        results[i] = result
    if any(isinstance(r, redis.RedisError) for r in results):
        # dramatiq needs Redis to enqueue the retry: wait for it here rather than lose the message.
        await wait_for_redis(lambda: bool(rt.ledger.redis.ping()), wait_s=rt.settings.outcome_write_wait_s)
    return results


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _decide(
    rt: Context, view: RenewalView, reminder_id: str, plan: Plan, rules: RuleSet, now: datetime
) -> Send | Skip | Wait:
    client = view.client
    return decide(
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


_Asked = tuple[Recorder, RenewalView, str, list[str], "asyncio.Future[tuple[list[bool], RenewalView | None]]"]
# One set of checks per event loop and runtime: all the batches a worker process runs at once share
# their pipelines (a process's SMTP connections are shared by its batches too).
_LOOP_CHECKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _Checks]] = weakref.WeakKeyDictionary()


def _checks_for(rt: Context) -> _Checks:
    per_runtime = _LOOP_CHECKS.setdefault(asyncio.get_running_loop(), {})
    checks = per_runtime.get(id(rt))
    if checks is None:
        checks = per_runtime[id(rt)] = _Checks(rt)
    return checks


class _Checks:
    """The pre-send checks of the batches running on one event loop: those asked for together go to
    Redis in one pipeline, with the outcomes waiting to be written (see ``Recorder``).

    Each compares, in Redis, the records its reminder was decided from with what its batch read
    (``SendCheck``); only a renewal that changed is read and decoded again. The pipeline runs on the
    event loop's thread, start to end without yielding: a round trip to Redis costs less than
    handing it to another thread and back, and no batch ever finds a write half done.
    """

    def __init__(self, rt: Context) -> None:
        self._rt = rt
        self._check = SendCheck(rt.ledger.redis, rt.ledger.keys)
        self._window_s = rt.settings.send_check_window_ms / 1000
        self._asked: list[_Asked] = []
        self._kicked: dict[Recorder, None] = {}
        # Recorders whose write failed (Redis away): carried by the next checks, which must not start
        # a transaction before what an earlier one on the same connection had accepted is written.
        self._unwritten: dict[Recorder, None] = {}
        self._drainer: asyncio.Future[None] | None = None

    async def read(
        self, recorder: Recorder, view: RenewalView, reminder_id: str, emails: list[str]
    ) -> tuple[list[bool], RenewalView | None]:
        """The renewal's view now (``view`` itself when nothing it was made from changed; None when
        the reminder is final already), and whether each of ``emails`` is suppressed."""
        future: asyncio.Future[tuple[list[bool], RenewalView | None]] = asyncio.get_running_loop().create_future()
        self._asked.append((recorder, view, reminder_id, emails, future))
        self._start()
        return await future

    def kick(self, recorder: Recorder) -> None:
        """Write what ``recorder`` holds soon, in the background (with the next checks, if any)."""
        self._kicked[recorder] = None
        self._start()

    def _start(self) -> None:
        # The drainer leaves its loop and ends without yielding, so one that is not done will see
        # what was just asked.
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        # Runs as a task: the checks asked for in the same turn of the event loop share a pipeline.
        while self._asked or self._kicked:
            # Group commit: the checks and records asked for in the next moment share the round trip.
            await asyncio.sleep(self._window_s)
            asked, self._asked = self._asked, []
            recorders = dict.fromkeys([*self._unwritten, *self._kicked, *(a[0] for a in asked)])
            self._kicked, self._unwritten = {}, {}
            try:
                results = self._read(recorders, asked)
            except Exception as exc:  # what the recorders hold stays, for the next checks and their flush
                self._unwritten = {recorder: None for recorder in recorders if recorder.pending}
                for *_, future in asked:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (*_, future), result in zip(asked, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _read(
        self, recorders: dict[Recorder, None], asked: list[_Asked]
    ) -> list[tuple[list[bool], RenewalView | None]]:
        rt, check = self._rt, self._check
        pending = [(recorder, recorder.take()) for recorder in recorders]

        def build(pipe: redis.client.Pipeline) -> None:
            for recorder, taken in pending:
                recorder.queue(pipe, taken)
            for _, view, reminder_id, emails, _ in asked:
                check.queue(pipe, view, reminder_id, emails)

        replies = run_pipeline(rt.ledger.redis, build, [rt.ledger.finish_script, check.script])
        for recorder, taken in pending:
            recorder.done(taken)
        checked = [SendCheck.parse(reply) for reply in replies[len(replies) - len(asked) :]]
        out: list[tuple[list[bool], RenewalView | None]] = []
        changed = []
        for n, ((_, view, _, _, _), result) in enumerate(zip(asked, checked, strict=True)):
            if result.status == "changed":
                changed.append(n)
            out.append((result.suppressed, None if result.status == "final" else view))
        if changed:
            requests = []
            for n in changed:
                view = asked[n][1]
                renewal = view.renewal.renewal
                requests.append((view.partner_id, view.renewal_id, renewal.client_id if renewal else ""))
            _, views = rt.planning.recheck(requests)
            for n, fresh in zip(changed, views, strict=True):
                out[n] = (out[n][0], fresh)
        return out


@dataclass(frozen=True)
class _Built:
    """Who the message built at the check went to, for its outcome once the server accepts it."""

    to: tuple[str, ...]
    cc: tuple[str, ...]
    locale: str
    suppressed: list[str]


class _Send:
    """One claimed reminder: checked, rendered and built again each time a connection is ready for it."""

    def __init__(
        self,
        rt: Context,
        ref: ReminderRef,
        token: str,
        view: RenewalView,
        send: Send,
        *,
        rules: RuleSet,
        plan_next: bool,
        last_try: bool,
    ) -> None:
        self.rt, self.ref, self.token, self.view, self.send = rt, ref, token, view, send
        self.client_id = send.client.client_id
        self.rules, self.plan_next, self.last_try = rules, plan_next, last_try
        self.config_error: ConfigError | None = None
        try:
            self.message_id = message_id_for(*ref, domain=_from_domain(rt.settings.mail_from))
        except ConfigError as exc:  # a bad MAIL_FROM: raised again when the send is prepared, and retried
            self.message_id, self.config_error = "", exc
        self.stopped: str | None = None
        self.sent: _Built | None = None

    async def run(self, recorder: Recorder, checks: _Checks, leases: dict[ReminderRef, str]) -> str | Exception:
        rt, ref = self.rt, self.ref
        partner_id, renewal_id, reminder_id = ref
        try:
            result = await rt.mailer.send_checked(
                lambda: self._prepare(recorder, checks), accepted=lambda r: self._accepted(recorder, r)
            )
        except ConfigError as exc:  # our own settings or templates: retried until fixed, never the reminder's outcome
            self._give_back(keep_claim=True)
            recorder.add(history=[self._deferral(recorder, exc)])
            return exc
        except InvalidMessage as exc:
            # The data cannot make a valid message (build_message refuses it): no retry can help.
            self._finish(
                recorder,
                Outcome("failed", rt.clock.now(), reason="invalid_message", message_id=self.message_id, reply=str(exc)),
            )
            _log.error("%s/%s/%s cannot be built: %s", partner_id, renewal_id, reminder_id, exc)
            return "failed:invalid_message"
        except PermanentSendError as exc:
            recorder.add(suppress=self._refused(dict.fromkeys(exc.recipients, str(exc))))
            tried = self.sent  # who the refused message was for: the history and `plan` show them
            outcome = Outcome(
                "failed",
                rt.clock.now(),
                reason="refused",
                message_id=self.message_id,
                to=tried.to if tried else (),
                cc=tried.cc if tried else (),
                reply=str(exc),
                extra={"refused": dict.fromkeys(exc.recipients, str(exc))} if exc.recipients else {},
            )
            self._finish(recorder, outcome)
            _log.error("%s/%s/%s refused: %s", partner_id, renewal_id, reminder_id, exc)
            return "failed:refused"
        except Exception as exc:
            # Deferred sends, lost connections, Redis away at the check, a template or SMTP login ops
            # can fix before retries run out, or a bug: retried with backoff, failed on the last try.
            self._give_back(keep_claim=not self.last_try or isinstance(exc, redis.RedisError))
            if not self.last_try or isinstance(exc, redis.RedisError):
                recorder.add(history=[self._deferral(recorder, exc)])
                return exc
            self._finish(
                recorder,
                Outcome(
                    "failed", rt.clock.now(), reason="retries exhausted", message_id=self.message_id, reply=str(exc)
                ),
                token="",
            )
            _log.error("%s/%s/%s failed after retries: %s", partner_id, renewal_id, reminder_id, exc)
            return "failed:retries exhausted"
        except BaseException:
            self._give_back(keep_claim=True)
            raise
        finally:
            leases.pop(ref, None)
        if result is None:
            return self.stopped or "stopped"
        return "sent"

    def _refused(self, replies: dict[str, str]) -> list[Suppression]:
        """Recipients the server refused for good (5xx): suppressed with its reply and this reminder, and logged."""
        if not replies:
            return []
        source, now = "/".join(self.ref), self.rt.clock.now()
        _log.warning(
            "reminder %s: refused and now suppressed: %s", source, "; ".join(f"{a} ({r})" for a, r in replies.items())
        )
        return [Suppression(a, now, "refused by the mail server", reply=r, source=source) for a, r in replies.items()]

    def _deferral(self, recorder: Recorder, exc: Exception) -> HistoryEntry:
        partner_id, renewal_id, reminder_id = self.ref
        return HistoryEntry(
            "deferral",
            self.rt.clock.now(),
            "deferred",
            partner=partner_id,
            client=self.client_id,
            renewal=renewal_id,
            reminder=reminder_id,
            reason=type(exc).__name__,
            message_id=self.message_id,
            reply=str(exc),
            attempt=recorder.attempt,
        )

    def _give_back(self, *, keep_claim: bool) -> None:
        """Hand the lease back without an outcome, and hold the scheduler's claim for the retry."""
        with contextlib.suppress(redis.RedisError):  # Redis away: the lease and claim run out by themselves
            self.rt.ledger.release(*self.ref, self.token)
            if keep_claim:
                _keep_claim(self.rt, *self.ref)

    def _failed(self, recorder: Recorder, reason: str, exc: BaseException, *, token: str | None = None) -> None:
        outcome = Outcome("failed", self.rt.clock.now(), reason=reason, message_id=self.message_id, reply=str(exc))
        self._finish(recorder, outcome, token=token)

    def _finish(self, recorder: Recorder, outcome: Outcome, *, token: str | None = None) -> None:
        recorder.add((self.ref, outcome, self.token if token is None else token, self.plan_next))

    async def _prepare(self, recorder: Recorder, checks: _Checks) -> Envelope | None:
        """The check at send time: state, ledger and suppressions read now, decided, rendered, built."""
        if self.config_error is not None:
            raise self.config_error
        rt, (partner_id, renewal_id, reminder_id) = self.rt, self.ref
        emails = [r.person.email for r in self.send.routing.to + self.send.routing.cc]

        flags, view = await checks.read(recorder, self.view, reminder_id, emails)
        now = rt.clock.now()
        if view is None or reminder_id in view.outcomes:
            return self._stop(recorder, "already_final", release=True)
        plan = view.plan(self.rules, now)
        decision = _decide(rt, view, reminder_id, plan, self.rules, now)
        if isinstance(decision, Wait):
            rt.ledger.release(*self.ref, self.token)
            rt.due_index.release(due_member(*self.ref))
            rt.planning.replan(partner_id, renewal_id, self.rules, now)
            return self._stop(recorder, "waiting")
        if isinstance(decision, Skip):
            self._finish(recorder, Outcome("skipped", now, reason=decision.reason))
            return self._stop(recorder, f"skipped:{decision.reason}")
        people = [r.person for r in decision.routing.to + decision.routing.cc]
        if [p.email for p in people] != emails or len(flags) != len(people):
            flags = rt.ledger.is_suppressed([p.email for p in people])  # recipients changed since the batch read
        return self._build(recorder, decision, flags, now)

    def _stop(self, recorder: Recorder, result: str, *, release: bool = False) -> Envelope | None:
        """No message now: ``result`` says what happened instead (the send returns None)."""
        self.stopped = result
        if release:
            recorder.add(release=[due_member(*self.ref)])
            with contextlib.suppress(redis.RedisError):
                self.rt.ledger.release(*self.ref, self.token)
        return None

    def _build(self, recorder: Recorder, send: Send, flags: list[bool], now: datetime) -> Envelope | None:
        rt, (partner_id, renewal_id, reminder_id) = self.rt, self.ref
        people_to = [r.person for r in send.routing.to]
        people_cc = [r.person for r in send.routing.cc]
        to = [p for p, flag in zip(people_to, flags[: len(people_to)], strict=True) if not flag]
        cc = [p for p, flag in zip(people_cc, flags[len(people_to) :], strict=True) if not flag]
        suppressed = [p.email for p, flag in zip(people_to + people_cc, flags, strict=True) if flag]
        if not to:
            outcome = Outcome(
                "suppressed", now, reason="every recipient is suppressed", extra={"addresses": suppressed}
            )
            self._finish(recorder, outcome)
            return self._stop(recorder, "suppressed")
        rendered = rt.renderer.render_send(send)
        data = build_message(
            rendered,
            mail_from=rt.settings.mail_from,
            to=to,
            cc=cc,
            reply_to=reply_to(send),
            message_id=self.message_id,
            # Renewal ids are unique per partner only: the partner id makes the tag name one reminder.
            reminder_tag=f"{partner_id}/{renewal_id}/{reminder_id}",
            sent_at=now,
        )
        self.sent = _Built(tuple(p.email for p in to), tuple(p.email for p in cc), rendered.locale, suppressed)
        return Envelope(_envelope_sender(rt.settings.mail_from), envelope_recipients(to, cc), data)

    def _accepted(self, recorder: Recorder, result: SendResult) -> None:
        """The server took the message: recorded before this connection carries another one."""
        sent = self.sent
        assert sent is not None  # built by _prepare before the transaction
        extra: dict[str, object] = {"locale": sent.locale}
        if result.refused:
            extra["refused"] = dict(result.refused)
        if sent.suppressed:
            extra["suppressed"] = sent.suppressed
        now = self.rt.clock.now()
        outcome = Outcome(
            "sent", now, message_id=self.message_id, to=sent.to, cc=sent.cc, reply=result.reply, extra=extra
        )
        recorder.accepted((self.ref, outcome, self.token, self.plan_next), suppress=self._refused(dict(result.refused)))
