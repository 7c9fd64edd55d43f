"""The worker's own metrics (prometheus-client) and the small calls that feed them and the logs.

Metric objects are made on first use, not at import: in a dramatiq worker process the
multiprocess folder must be set (``exposition.prepare_multiprocess_dir``) before prometheus-client
creates its first value. Each ``record_*`` function is one call at its call site.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..domain.errors import ConfigError, RenewalsError
from ..mail.transport import Accepted, Mailer, Prepare, SendResult
from ..state.alarms import SmtpAlarm

if TYPE_CHECKING:
    from .clock import Clock
    from .context import Context

__all__ = [
    "InstrumentedMailer",
    "metrics",
    "outcome_of",
    "record_deliveries",
    "record_rule_reload",
    "record_tick",
    "scheduler_metrics",
]

_log_delivery = logging.getLogger("worker.delivery")

# Seconds: a send is a few ms on a LAN and up to SMTP_TIMEOUT_S; lateness runs from seconds (one
# scheduler poll) to hours (an outage caught up).
_SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LATENESS_BUCKETS = (1.0, 2.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1_800.0, 3_600.0, 14_400.0, 86_400.0)
_TICK_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Metrics:
    """Every metric a worker or scheduler process updates itself (what Redis holds is read at scrape time)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.reminders = Counter(
            "renewals_reminders",
            "Reminders handled by delivery, by outcome (sent, skipped, suppressed, failed, deferred, ...) and reason.",
            ["outcome", "reason"],
        )
        self.smtp_replies = Counter(
            "renewals_smtp_replies",
            "SMTP transactions by their result: 2xx, 4xx, 5xx, connection (lost or refused), config (login, TLS).",
            ["reply_class"],
        )
        self.send_duration = Histogram(
            "renewals_smtp_send_duration_seconds",
            "One message in the mailer: waiting for a connection, the send-time check, the SMTP transaction.",
            buckets=_SEND_BUCKETS,
        )
        self.lateness = Histogram(
            "renewals_delivery_lateness_seconds",
            "From when a reminder fell due in the due index (a caught-up one: when it was caught up) "
            "to the server accepting it.",
            buckets=_LATENESS_BUCKETS,
        )
        self.rule_reloads = Counter(
            "renewals_rule_reloads",
            "Rule file edits seen by a running process, by result (applied, invalid).",
            ["result"],
        )
        for result in ("applied", "invalid"):
            self.rule_reloads.labels(result)
        for reply_class in ("2xx", "4xx", "5xx", "connection", "config"):
            self.smtp_replies.labels(reply_class)


class _SchedulerMetrics:
    """Made only in a process that runs a scheduler, so that a worker never exports a tick time of 0."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.tick_duration = Histogram(
            "renewals_scheduler_tick_duration_seconds",
            "One scheduler tick: rule check, re-planning what events marked, claiming and enqueueing what is due.",
            buckets=_TICK_BUCKETS,
        )
        self.ticks = Counter("renewals_scheduler_ticks", "Scheduler ticks by result (ok, failed).", ["result"])
        self.last_tick = Gauge(
            "renewals_scheduler_last_success_timestamp_seconds",
            "Unix time of this scheduler's last successful tick (a dead man's switch).",
            multiprocess_mode="max",
        )
        for result in ("ok", "failed"):
            self.ticks.labels(result)


_metrics: _Metrics | None = None
_scheduler_metrics: _SchedulerMetrics | None = None
_metrics_lock = threading.Lock()


def metrics() -> _Metrics:
    """This process's metrics, created on first use."""
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            _metrics = _Metrics()
        return _metrics


def scheduler_metrics() -> _SchedulerMetrics:
    """The scheduler's metrics, created on first use (in a process that runs a scheduler)."""
    global _scheduler_metrics
    with _metrics_lock:
        if _scheduler_metrics is None:
            _scheduler_metrics = _SchedulerMetrics()
        return _scheduler_metrics


def outcome_of(result: str | Exception) -> tuple[str, str]:
    """(outcome, reason) of one delivery result as ``deliver_many`` returns it."""
    if isinstance(result, Exception):
        return "deferred", type(result).__name__
    outcome, _, reason = result.partition(":")
    return outcome, reason


def record_deliveries(
    rt: Context,
    items: Sequence[Sequence[Any]],
    results: Sequence[str | Exception],
    *,
    planned_at: Mapping[tuple[str, str, str], datetime] | None = None,
) -> None:
    """One line per reminder in the log, and the metrics, for a delivery batch.

    ``items`` are the message's ``[partner_id, renewal_id, reminder_id, due_ms]``, ``due_ms`` its
    time in the due index: for a reminder caught up, when it was caught up. The log names the time
    its rule planned it for (``planned_at``, from the delivery's plan) and then the catch-up time;
    the lateness metric runs from the due index's time, the service's own delay. The hourly
    outcome counts of `status` are kept in Redis by the writes themselves (see ``OutcomeCounts``).
    """
    m = metrics()
    now = rt.clock.now()
    for item, result in zip(items, results, strict=True):
        partner_id, renewal_id, reminder_id, due_ms = item
        outcome, reason = outcome_of(result)
        m.reminders.labels(outcome, reason).inc()
        due = _due_at(due_ms)
        if outcome == "sent" and due is not None:
            m.lateness.observe(max(0.0, (now - due).total_seconds()))
        due_text = _due_text(due, due_ms, (planned_at or {}).get((str(partner_id), str(renewal_id), str(reminder_id))))
        if isinstance(result, Exception):
            _log_delivery.warning(
                "reminder %s/%s/%s (due %s): deferred, will retry: %s",
                partner_id,
                renewal_id,
                reminder_id,
                due_text,
                result,
                extra={"partner": partner_id, "renewal": renewal_id, "reminder": reminder_id, "outcome": "deferred"},
            )
        else:
            _log_delivery.info(
                "reminder %s/%s/%s (due %s): %s",
                partner_id,
                renewal_id,
                reminder_id,
                due_text,
                result,
                extra={"partner": partner_id, "renewal": renewal_id, "reminder": reminder_id, "outcome": outcome},
            )


def _due_text(due: datetime | None, due_ms: object, planned: datetime | None) -> str:
    """The planned time, and the catch-up time when it differs by more than a second."""
    if planned is None:
        return due.isoformat(timespec="seconds") if due is not None else repr(due_ms)
    text = planned.isoformat(timespec="seconds")
    if due is not None and abs((due - planned).total_seconds()) >= 1:
        text += f", caught up {due.isoformat(timespec='seconds')}"
    return text


def _due_at(due_ms: object) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(due_ms) / 1000, tz=UTC)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def record_tick(duration_s: float, *, ok: bool, now: datetime) -> None:
    m = scheduler_metrics()
    m.tick_duration.observe(duration_s)
    m.ticks.labels("ok" if ok else "failed").inc()
    if ok:
        m.last_tick.set(now.timestamp())


def record_rule_reload(result: str) -> None:
    """``applied`` for a valid edit now in force, ``invalid`` for an edit refused (the old rules stay)."""
    metrics().rule_reloads.labels(result).inc()


def _reply_class(exc: BaseException) -> str:
    if isinstance(exc, ConfigError):
        return "config"
    code = getattr(exc, "code", None)
    if isinstance(code, int) and 400 <= code < 600:
        return f"{code // 100}xx"
    return "connection"


class InstrumentedMailer:
    """A Mailer that times each send, counts replies by class and keeps the cluster's SMTP alarm.

    An error that stops every send (ConfigError: the login refused, TLS failed) raises the alarm in
    Redis; the next accepted message from this process clears it.
    """

    def __init__(self, inner: Mailer, *, alarm: SmtpAlarm, clock: Clock) -> None:
        self.inner = inner
        self.alarm = alarm
        self.clock = clock
        self._alarm_raised = False

    async def send(self, *, sender: str, recipients: Sequence[str], message: bytes) -> SendResult:
        started = time.perf_counter()
        try:
            result = await self.inner.send(sender=sender, recipients=recipients, message=message)
        except RenewalsError as exc:
            self._failed(exc, started)
            raise
        self._accepted(started)
        return result

    async def send_checked(self, prepare: Prepare, *, accepted: Accepted | None = None) -> SendResult | None:
        started = time.perf_counter()
        try:
            result = await self.inner.send_checked(prepare, accepted=accepted)
        except RenewalsError as exc:
            self._failed(exc, started)
            raise
        if result is not None:  # None: the send-time check found nothing to send
            self._accepted(started)
        return result

    def _failed(self, exc: RenewalsError, started: float) -> None:
        m = metrics()
        m.send_duration.observe(time.perf_counter() - started)
        m.smtp_replies.labels(_reply_class(exc)).inc()
        if isinstance(exc, ConfigError):
            self._raise_alarm(str(exc))

    def _accepted(self, started: float) -> None:
        m = metrics()
        m.send_duration.observe(time.perf_counter() - started)
        m.smtp_replies.labels("2xx").inc()
        if self._alarm_raised:
            self._alarm_raised = False
            self._quietly(self.alarm.clear)

    async def close(self) -> None:
        await self.inner.close()

    def _raise_alarm(self, message: str) -> None:
        self._alarm_raised = True
        self._quietly(lambda: self.alarm.raise_(message, now=self.clock.now()))

    @staticmethod
    def _quietly(action: Any) -> None:
        try:
            action()
        except Exception:  # Redis away: the send's own error is what the caller must see
            logging.getLogger("worker.mailer").warning("could not update the SMTP alarm in Redis", exc_info=True)
