"""`renewals status`: is the service working? One screen (or JSON), and `--check` as a health probe."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..domain.durations import describe_age, describe_duration
from ..state.alarms import OutcomeCounts, SmtpAlarm, SmtpAlarmState
from ..state.heartbeat import Heartbeat, Heartbeats
from ..state.overview import (
    DueOverview,
    QueueDepth,
    StateCounts,
    due_overview,
    queue_depths,
    state_counts,
)
from ..state.replan_run import ReplanProgress, ReplanRun
from ..state.waiting import count_waiting_renewals

if TYPE_CHECKING:
    from ..service.runtime import Runtime

__all__ = ["Status", "add_status_parser", "gather_status", "health_problems", "render_status"]

_QUEUES = ("events", "deliveries")


@dataclass(frozen=True)
class Status:
    """Everything `renewals status` shows, read from Redis at ``now``."""

    now: datetime
    redis: str | None
    key_prefix: str
    processes: list[Heartbeat]
    rules_fingerprint: str | None
    replan: ReplanProgress | None  # a rule change's re-plan under way, or None
    due: DueOverview
    outcomes_24h: dict[str, int]
    queues: list[QueueDepth]
    counts: StateCounts
    smtp_alarm: SmtpAlarmState | None
    waiting: dict[str, int]  # renewals waiting for missing data, by what they wait for

    def schedulers(self) -> list[Heartbeat]:
        return [p for p in self.processes if p.role == "scheduler"]

    def workers(self) -> list[Heartbeat]:
        return [p for p in self.processes if p.role == "worker"]


def gather_status(rt: Runtime) -> Status:
    """Read the status from Redis: a few pipelined round trips, whatever the size of the state."""
    now = rt.clock.now()
    fingerprint = rt.redis.get(rt.keys.rules_fingerprint())
    progress = ReplanRun(rt.redis, rt.keys).progress()
    under_way = progress.rules_fingerprint is not None and (
        progress.handed_out < progress.total or progress.in_progress > 0
    )
    # Renewals waiting for missing data, by what they wait for (client, partner).
    waiting = {count.waits_for: count.count for count in count_waiting_renewals(rt.redis, rt.keys)}
    return Status(
        now=now,
        redis=rt.settings.redis_url_redacted,
        key_prefix=rt.settings.key_prefix,
        processes=Heartbeats(rt.redis, rt.keys).alive(),
        rules_fingerprint=fingerprint.decode() if fingerprint else None,
        replan=progress if under_way else None,
        due=due_overview(rt.redis, rt.keys, now),
        outcomes_24h=OutcomeCounts(rt.redis, rt.keys).last_day(now=now),
        queues=queue_depths(rt.redis, rt.broker.namespace, _QUEUES),
        counts=state_counts(rt.redis, rt.keys),
        smtp_alarm=SmtpAlarm(rt.redis, rt.keys).current(),
        waiting=waiting,
    )


def _last_tick(process: Heartbeat) -> datetime:
    value = process.info.get("last_tick_at")
    return datetime.fromisoformat(value) if isinstance(value, str) else process.beat_at


def health_problems(status: Status, *, max_tick_age_s: float, max_overdue_s: float) -> list[str]:
    """One line per reason the service is unhealthy; empty when it is healthy."""
    problems = []
    schedulers = status.schedulers()
    if not schedulers:
        problems.append("no scheduler is running (no scheduler heartbeat)")
    else:
        newest = max(_last_tick(s) for s in schedulers)
        age_s = (status.now - newest).total_seconds()
        # While a rule change's re-plan is under way, ticks may run long.
        if age_s > max_tick_age_s and status.replan is None:
            ago = describe_duration(status.now - newest)
            problems.append(f"no scheduler tick for {ago} (HEALTH_MAX_TICK_AGE_S={max_tick_age_s:g})")
    if not status.workers():
        problems.append("no worker is running (no worker heartbeat)")
    oldest = status.due.oldest_overdue_at
    if oldest is not None and status.due.oldest_overdue_s(status.now) > max_overdue_s:
        waited = describe_duration(status.now - oldest)
        limit = f"HEALTH_MAX_OVERDUE_S={max_overdue_s:g}"
        problems.append(f"{status.due.overdue} reminder(s) overdue, the oldest for {waited} ({limit})")
    if status.smtp_alarm is not None:
        since = describe_age(status.smtp_alarm.since - status.now)
        problems.append(f"SMTP error stops all sending since {since}: {status.smtp_alarm.message}")
    return problems


def _when(moment: datetime | None, now: datetime) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S} UTC ({describe_age(moment - now)})"


def render_status(status: Status, problems: list[str]) -> str:
    now = status.now
    redis = status.redis or "(in-process)"
    lines = [f"renewals status at {now:%Y-%m-%d %H:%M:%S} UTC; redis {redis}, prefix {status.key_prefix}"]
    lines.append("processes:")
    if not status.processes:
        lines.append("  none (no scheduler or worker heartbeat)")
    for p in status.processes:
        if p.role == "scheduler":
            tick = _last_tick(p)
            took = p.info.get("tick_s")
            state = f"last tick {describe_age(tick - now)}" + (
                f" (took {float(took) * 1000:.0f} ms)" if took is not None else ""
            )
        else:
            state = f"heartbeat {describe_age(p.beat_at - now)}"
        url = p.info.get("metrics_url") or "-"
        lines.append(f"  {p.role:<9} {p.process_id:<40} {state:<36} metrics {url}")
    rules = status.rules_fingerprint[:12] if status.rules_fingerprint else "(none recorded: no scheduler has run)"
    sources = sorted({(str(p.info.get("rules_path")), str(p.info.get("rules_loaded_at"))) for p in status.schedulers()})
    where = "; ".join(
        f"{path}, in force since {_when(datetime.fromisoformat(at), now)}" for path, at in sources if at != "None"
    )
    lines.append(f"rules in force: {rules}" + (f" ({where})" if where else ""))
    if status.replan is not None:
        r = status.replan
        fingerprint = (r.rules_fingerprint or "?")[:12]
        chunks = f"{r.handed_out} of {r.total} chunk(s) handed out, {r.in_progress} in progress"
        lines.append(f"  re-planning for rules {fingerprint}: {chunks}")
    due = status.due
    lines.append(
        f"due index: {due.planned} planned; overdue {due.overdue} (oldest {_when(due.oldest_overdue_at, now)}); "
        f"due in the next hour {due.due_next_hour}, next day {due.due_next_day}"
    )
    lease = f" (first lease ends {_when(due.in_flight_lease_until, now)})" if due.in_flight_lease_until else ""
    lines.append(f"in flight: {due.in_flight}{lease}")
    outcomes = ", ".join(f"{kind} {count}" for kind, count in status.outcomes_24h.items()) or "none"
    lines.append(f"last 24 h: {outcomes}")
    lines.append(
        "queues: "
        + "; ".join(f"{q.queue} ready {q.ready}, retrying {q.delayed}, dead (dramatiq) {q.dead}" for q in status.queues)
    )
    c = status.counts
    events = ", ".join(f"{kind} {count}" for kind, count in c.events.items()) or "none"
    lines.append(f"events: {events}; refused {c.dead_letters_total} ({c.dead_letters_kept} kept in dead letters)")
    lines.append(f"suppressed addresses: {c.suppressed}; marked for re-planning: {c.replan_pending}")
    if status.smtp_alarm is None:
        lines.append("smtp: no error that stops sending")
    else:
        a = status.smtp_alarm
        lines.append(f"smtp: FAILING since {_when(a.since, now)}, last {_when(a.last_seen, now)}: {a.message}")
    waiting = [f"{count} renewal(s) wait for their {what}'s details" for what, count in status.waiting.items() if count]
    lines.append("waiting for missing data: " + ("; ".join(waiting) or "none"))
    if problems:
        lines.append("health: UNHEALTHY")
        lines.extend(f"  {problem}" for problem in problems)
    else:
        lines.append("health: ok")
    return "\n".join(lines)


def _as_json(status: Status, problems: list[str]) -> str:
    data = asdict(status)
    data["healthy"] = not problems
    data["problems"] = problems
    data["due"]["oldest_overdue_s"] = status.due.oldest_overdue_s(status.now)
    return json.dumps(data, default=lambda value: value.isoformat() if isinstance(value, datetime) else str(value))


def _cmd_status(args: argparse.Namespace) -> int:
    from ..service.runtime import get_runtime

    rt = get_runtime()
    if rt.settings.embedded:
        print("error: REDIS_URL is not set: status reads the Redis a deployment's processes share", file=sys.stderr)
        return 2
    status = gather_status(rt)
    settings = rt.settings
    problems = health_problems(
        status, max_tick_age_s=settings.health_max_tick_age_s, max_overdue_s=settings.health_max_overdue_s
    )
    if args.check:
        for problem in problems:
            print(problem)
        if not problems and not args.json:
            print("ok")
    if args.json:
        print(_as_json(status, problems))
    elif not args.check:
        print(render_status(status, problems))
    return 1 if args.check and problems else 0


def add_status_parser(sub: Any) -> None:
    """Register `renewals status` on the CLI's subcommands."""
    summary = "schedulers and workers alive, due index, outcomes, queues, health"
    p = sub.add_parser("status", help=summary, description=f"Is the service working? {summary}.")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p.add_argument(
        "--check",
        action="store_true",
        help="print one line per health problem and exit 1 if any (a liveness or readiness probe)",
    )
    p.set_defaults(handler=_cmd_status)
