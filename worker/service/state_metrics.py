"""What Redis holds, as metrics read at each scrape: the due index, queues, events by result, alarms.

Schedulers serve these (every scheduler the same figures: alert on ``max``), so they are the
cluster's, not one process's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..state.alarms import SmtpAlarm
from ..state.connection import REDIS_ERRORS
from ..state.overview import due_overview, queue_depths, state_counts

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ..state.keys import Keys
    from .clock import Clock

__all__ = ["StateCollector"]

_log = logging.getLogger("worker.metrics")


class StateCollector:
    """What Redis holds, read at each scrape: the due index, queues, events by result, dead letters, alarms.

    Served by schedulers only (every scheduler serves the same figures: alert on ``max``).
    """

    def __init__(self, redis_client: Any, keys: Keys, *, queue_namespace: str, clock: Clock) -> None:
        self.redis = redis_client
        self.keys = keys
        self.queue_namespace = queue_namespace
        self.clock = clock

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        now = self.clock.now()
        try:
            due = due_overview(self.redis, self.keys, now)
            counts = state_counts(self.redis, self.keys)
            queues = queue_depths(self.redis, self.queue_namespace, ["events", "deliveries"])
            alarm = SmtpAlarm(self.redis, self.keys).current()
        except Exception as exc:  # a scrape while Redis is away says so (renewals_redis_up 0) instead of failing
            level = logging.DEBUG if isinstance(exc, REDIS_ERRORS) else logging.WARNING
            _log.log(level, "metrics: cannot read Redis: %s", exc)
            up = GaugeMetricFamily("renewals_redis_up", "1 when the last scrape could read Redis.")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("renewals_redis_up", "1 when the last scrape could read Redis.")
        up.add_metric([], 1)
        yield up

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc)
            family.add_metric([], value)
            return family

        yield gauge("renewals_overdue_reminders", "Reminders due and not yet claimed by a scheduler.", due.overdue)
        yield gauge(
            "renewals_oldest_overdue_seconds",
            "Age of the oldest due reminder not yet claimed (the schedulers' lag).",
            due.oldest_overdue_s(now),
        )
        yield gauge("renewals_planned_reminders", "Reminders in the due index (each renewal's next).", due.planned)
        yield gauge("renewals_in_flight_reminders", "Reminders claimed and being delivered.", due.in_flight)
        yield gauge("renewals_due_next_hour_reminders", "Reminders falling due in the next hour.", due.due_next_hour)
        yield gauge(
            "renewals_replan_pending", "Renewals, clients and partners marked to be re-planned.", counts.replan_pending
        )
        yield gauge("renewals_suppressed_addresses", "Addresses on the suppression list.", counts.suppressed)
        yield gauge("renewals_smtp_alarm", "1 while an SMTP error stops all sending (login, TLS).", 1 if alarm else 0)
        if alarm is not None:
            yield gauge(
                "renewals_smtp_alarm_since_timestamp_seconds",
                "When the SMTP error that stops all sending began.",
                alarm.since.timestamp(),
            )
        events = CounterMetricFamily(
            "renewals_events", "Events by result, every worker's since the database began.", labels=["result"]
        )
        for result in ("applied", "duplicate", "stale", "already_ended"):
            events.add_metric([result], counts.events.get(result, 0))
        events.add_metric(["refused"], counts.dead_letters_total)
        yield events
        dead = CounterMetricFamily("renewals_dead_letters", "Events dead-lettered (refused or failed), ever.")
        dead.add_metric([], counts.dead_letters_total)
        yield dead
        depth = GaugeMetricFamily(
            "renewals_queue_messages",
            "Messages on the dramatiq queues: ready, delayed (retries waiting) and dead (dramatiq's dead letters).",
            labels=["queue", "state"],
        )
        for queue in queues:
            depth.add_metric([queue.queue, "ready"], queue.ready)
            depth.add_metric([queue.queue, "delayed"], queue.delayed)
            depth.add_metric([queue.queue, "dead"], queue.dead)
        yield depth
