"""`renewals simulate`: the production pipeline on the embedded default, driven by a virtual clock."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dramatiq

from ..config.settings import load_settings
from ..domain.errors import InvalidEvent
from ..domain.events import parse_event
from ..service.actors import DELIVERIES_QUEUE, EVENTS_QUEUE
from ..service.clock import VirtualClock
from ..service.digests import DigestScheduler, next_digest_due
from ..service.runtime import Runtime, build_runtime, set_runtime
from ..state.digests import DigestState
from ..state.ledger import Outcome
from ..state.schedule import Scheduler

__all__ = ["SimulationReport", "TimelineEntry", "simulate"]


@dataclass(frozen=True)
class TimelineEntry:
    """One final outcome: of a reminder of a renewal, or of a digest (``renewal_id`` is then the user's email
    and ``reminder_id`` the period, ``digest/2026-W49``)."""

    partner_id: str
    renewal_id: str
    reminder_id: str
    outcome: Outcome


@dataclass
class SimulationReport:
    events: dict[str, int] = field(default_factory=dict)  # applied, duplicate, stale, dead_lettered...
    rejected: list[str] = field(default_factory=list)
    timeline: list[TimelineEntry] = field(default_factory=list)
    inactive: list[str] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        return Counter(
            e.outcome.kind if e.outcome.kind != "skipped" else f"skipped ({e.outcome.reason})" for e in self.timeline
        )


class _Simulation:
    def __init__(self, rt: Runtime, clock: VirtualClock) -> None:
        self.rt = rt
        self.clock = clock
        self.scheduler = Scheduler(rt.due_index, rt.actors.enqueue_deliveries, clock.now, lease_ms=60_000)
        self.digest_state = DigestState(rt.store)
        self.digests = DigestScheduler(self.digest_state, rt.rules, rt.actors.enqueue_digest)

    def drain(self) -> None:
        self.rt.broker.join(EVENTS_QUEUE, timeout=60_000)
        self.rt.planning.flush(self.rt.rules(), self.clock.now())
        self.rt.broker.join(DELIVERIES_QUEUE, timeout=60_000)
        # A final reminder marks its renewal: planning it again indexes the renewal's next reminder.
        self.rt.planning.flush(self.rt.rules(), self.clock.now())

    def tick(self) -> None:
        """What a scheduler's tick does now: enqueue due reminders and digests, then let the worker drain."""
        self.scheduler.run_once()
        self.digests.run_once(self.clock.now())
        self.drain()

    def advance_to(self, target: datetime) -> None:
        """Deliver, in due order, everything due at or before ``target``, moving the clock as it goes."""
        while True:
            moments = [
                self.rt.due_index.next_due(),
                next_digest_due(self.digest_state, self.rt.rules(), self.clock.now()),
            ]
            upcoming = min((m for m in moments if m is not None), default=None)
            if upcoming is None or upcoming > target:
                break
            self.clock.advance_to(upcoming)
            self.tick()
        self.clock.advance_to(target)


@contextmanager
def _running_worker(rt: Runtime) -> Iterator[None]:
    worker = dramatiq.Worker(rt.broker, worker_threads=1, worker_timeout=20)
    worker.start()
    try:
        yield
    finally:
        worker.stop()


def simulate(
    events_path: Path,
    *,
    until: datetime,
    outbox: Path,
    start: datetime | None = None,
    rules_path: Path | None = None,
) -> SimulationReport:
    """Apply the events in file order on a virtual clock and deliver every reminder due up to ``until``."""
    lines = events_path.read_text(encoding="utf-8").splitlines()
    report = SimulationReport()
    parsed = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            parsed.append((parse_event(line), line))
        except InvalidEvent as exc:
            report.rejected.append(f"{events_path.name}:{number}: {exc}")
    first = min((event.occurred_at for event, _ in parsed), default=until)
    overrides: dict[str, object] = {"redis_url": None, "smtp_host": None, "outbox_dir": outbox}
    if rules_path is not None:
        overrides["rules_path"] = rules_path
    settings = load_settings(**overrides)
    clock = VirtualClock((start or first).astimezone(UTC))
    rt = build_runtime(settings, clock=clock)
    set_runtime(rt)
    rt.rules()  # an invalid rule file stops the simulation before anything happens
    sim = _Simulation(rt, clock)
    with _running_worker(rt):
        for event, line in parsed:
            sim.advance_to(event.occurred_at)
            rt.actors.ingest.send(line)
            sim.tick()
        sim.advance_to(until)
    report.events = rt.store.event_stats()
    report.timeline = _timeline(rt)
    report.inactive = _inactive(rt)
    set_runtime(None)
    return report


def _timeline(rt: Runtime) -> list[TimelineEntry]:
    entries = []
    for partner_id in rt.store.partner_ids():
        for renewal_id in rt.store.renewal_ids(partner_id):
            for reminder_id, outcome in rt.ledger.outcomes(partner_id, renewal_id).items():
                entries.append(TimelineEntry(partner_id, renewal_id, reminder_id, outcome))
        # A digest is shown as partner/<user email> digest/<period>.
        for email, period_id, outcome in DigestState(rt.store).outcomes(partner_id):
            entries.append(TimelineEntry(partner_id, email, period_id, outcome))
    entries.sort(key=lambda e: (e.outcome.at, e.renewal_id, e.reminder_id))
    return entries


def _inactive(rt: Runtime) -> list[str]:
    """Renewals that will get no further reminder, and why (their plan is empty, so nothing is recorded)."""
    rules, now = rt.rules(), rt.clock.now()
    lines = []
    for partner_id in rt.store.partner_ids():
        for renewal_id in rt.store.renewal_ids(partner_id):
            view = rt.planning.view(partner_id, renewal_id)
            reason = view.plan(rules, now).inactive_reason
            if reason is not None:
                never = [r.id for r in rules.reminders if r.id not in view.outcomes]
                lines.append(
                    f"{partner_id}/{renewal_id}: no further reminders ({reason}); never sent: {', '.join(never)}"
                )
    return lines


def report_json(report: SimulationReport) -> str:
    return json.dumps(
        {
            "events": report.events,
            "rejected": report.rejected,
            "timeline": [
                {"partner_id": e.partner_id, "renewal_id": e.renewal_id, "reminder_id": e.reminder_id}
                | json.loads(e.outcome.to_json())
                for e in report.timeline
            ],
        },
        indent=2,
        ensure_ascii=False,
    )


def print_report(report: SimulationReport, outbox: Path) -> None:
    """The timeline of who got what and when, then the totals."""
    for line in report.rejected:
        print(f"rejected: {line}")
    events = ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in sorted(report.events.items()) if count)
    print(f"events: {events or 'none'}; {len(report.rejected)} rejected before the queue; emails in {outbox}/\n")
    for entry in report.timeline:
        o = entry.outcome
        if o.reason == "nothing_requires_action":
            continue  # a digest with nothing in it: counted in the totals, not worth a line
        head = f"{o.at:%Y-%m-%d %H:%M} UTC  {entry.partner_id}/{entry.renewal_id} {entry.reminder_id}: {o.kind}"
        if o.kind == "sent":
            print(f"{head} [{o.extra.get('locale', '?')}]")
            print(f"    To: {', '.join(o.to)}" + (f"  Cc: {', '.join(o.cc)}" if o.cc else ""))
        else:
            print(f"{head} ({o.reason})")
    for line in report.inactive:
        print(line)
    print("\ntotals: " + ", ".join(f"{kind} {count}" for kind, count in sorted(report.counts.items())))
