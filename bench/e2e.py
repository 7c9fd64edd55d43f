"""End to end: reminders fall due, the real scheduler and dramatiq workers send them to a real SMTP server.

How N reminders fall due at one instant T0: the bench rule file has one reminder whose due time has
already passed (and whose deadline has not), so the planner plans it "caught up", at the ``now`` it
is given. Before the scheduler and the workers start, the benchmark stores the renewals and plans
them all an hour ahead ("parked"; the scheduler's own first tick would otherwise plan them at its
clock). With the processes running and warmed up by a few reminders of their own, it re-plans all
N with ``now = T0``, a few seconds ahead: at T0 the due index holds N members scored T0, exactly as
if a rule had made them due at T0. The benchmark's process only polls two counters until all are
sent. The steady run re-plans each renewal at its own instant (T0 + i / rate) instead, to measure
latency when the pipeline keeps up.

Latency of a reminder = its ledger outcome's ``at`` (taken when the server answered 250) minus its
due instant.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from worker.service.processes import sync_rules
from worker.service.runtime import Runtime
from worker.state.ledger import Outcome
from worker.state.schedule import epoch_ms

from .context import BenchContext
from .data import Population, bench_rules_yaml
from .procs import CpuMeter, Service, start_scheduler, start_workers, wait_until
from .profiling import PySpy, Recording, summarize
from .redis_stats import RedisCounters
from .seed import apply_events, plan_marked, plan_refs, trusted_event

__all__ = [
    "REMINDER_ID",
    "bench_population",
    "percentile",
    "prepare",
    "read_outcomes",
    "run_burst",
    "run_steady",
    "write_bench_rules",
]

REMINDER_ID = "bench-notice"
_DEADLINE_DAYS = 45
# Due a week before a deadline two days ahead: always past, never too late, whatever the hour.
_OFFSET_DAYS = -(_DEADLINE_DAYS + 8)
_PARKED = timedelta(hours=1)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1), nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


def write_bench_rules(ctx: BenchContext) -> Path:
    """The bench rule file: one reminder, already due (caught up) whenever the renewals are planned."""
    path = ctx.workdir / "rules-bench.yaml"
    path.write_text(bench_rules_yaml(offset_days=_OFFSET_DAYS, send_time="00:00", deadline_days=_DEADLINE_DAYS))
    return path


def bench_population(renewals: int, tag: str, *, partner_prefix: str = "bp") -> Population:
    """Renewals whose deadline is two days ahead (UTC), so the bench reminder is open, caught up, until then."""
    start = datetime.now(UTC).date() + timedelta(days=2 + _DEADLINE_DAYS)
    return Population(
        renewals=renewals,
        start_date=date(start.year, start.month, start.day),
        tag=tag,
        partner_prefix=partner_prefix,
    )


def prepare(rt: Runtime, *populations: Population) -> None:
    """Store the populations with every reminder parked an hour ahead, before any scheduler runs.

    ``sync_rules`` records the rules as planned, as a scheduler's first tick does on an empty
    database (else that tick would re-plan everything at its own clock), and the marks ingestion
    leaves are planned here (``Planning.flush``), parked.
    """
    sync_rules(rt)
    for pop in populations:
        apply_events(rt, (trusted_event(e) for e in pop.events()))
    plan_marked(rt, rt.rules(), datetime.now(UTC) + _PARKED)


class _Pipeline:
    """The production processes of one run: a scheduler and ``dramatiq worker.entrypoint`` with P x T."""

    def __init__(
        self,
        ctx: BenchContext,
        rules_path: Path,
        *,
        processes: int,
        threads: int,
        name: str,
        worker_module: str = "worker.entrypoint",
    ) -> None:
        self.ctx = ctx
        self.worker_module = worker_module
        self.env = ctx.env(rules_path)
        self.processes = processes
        self.threads = threads
        self.name = name
        self.scheduler: Service | None = None
        self.workers: Service | None = None

    def start(self) -> None:
        self.scheduler = start_scheduler(self.env, log_path=self.ctx.log_path(f"{self.name}-scheduler"))
        self.workers = start_workers(
            self.env,
            processes=self.processes,
            threads=self.threads,
            queues=["events", "deliveries"],
            log_path=self.ctx.log_path(f"{self.name}-workers"),
            module=self.worker_module,
        )

    def warm_up(self, rt: Runtime, warm: Population, *, timeout_s: float = 90.0) -> float:
        """Reminders of their own, due now, through the whole pipeline: the scheduler is polling, the
        workers have rendered and opened their SMTP connections. Returns how long that took."""
        started = time.perf_counter()
        refs = warm.refs()
        plan_refs(rt, refs, rt.rules(), datetime.now(UTC))

        def delivered() -> bool:
            self.check_alive()
            return all(outcome is not None for outcome in read_outcomes(rt, refs))

        wait_until(delivered, timeout_s=timeout_s, interval_s=0.1, what="the warm-up reminders")
        if self.ctx.smtp is not None:
            self.ctx.smtp.take()  # not the run's messages
        return time.perf_counter() - started

    def cpu_meter(self) -> CpuMeter:
        redis_pid = int(self.ctx.redis.info("server")["process_id"])
        sink_pid = getattr(self.ctx.smtp, "pid", None)
        groups: dict[str, Any] = {
            "workers": lambda: self.workers.pids() if self.workers else [],
            "scheduler": lambda: self.scheduler.pids() if self.scheduler else [],
            "redis": lambda: [redis_pid],
        }
        if sink_pid is not None:
            groups["smtp_sink"] = lambda: [sink_pid]
        return CpuMeter(groups)

    def check_alive(self) -> None:
        for service in (self.scheduler, self.workers):
            if service is not None:
                service.check_alive()

    def stop(self) -> dict[str, int | None]:
        codes = {}
        for label, service in (("workers", self.workers), ("scheduler", self.scheduler)):
            if service is not None:
                codes[label] = service.stop(timeout_s=30)
        return codes


def _warm_up_size(processes: int, threads: int) -> int:
    return 2 * processes * threads


def read_outcomes(rt: Runtime, refs: Sequence[tuple[str, str]]) -> list[Outcome | None]:
    out: list[Outcome | None] = []
    for start in range(0, len(refs), 2000):
        with rt.redis.pipeline(transaction=False) as pipe:
            for partner_id, renewal_id in refs[start : start + 2000]:
                pipe.hget(rt.keys.ledger(partner_id, renewal_id), REMINDER_ID)
            out += [None if raw is None else Outcome.from_json(raw) for raw in pipe.execute()]
    return out


def _open_count(rt: Runtime) -> int:
    """Reminders still planned or in flight: a finished delivery leaves both sorted sets."""
    with rt.redis.pipeline(transaction=False) as pipe:
        pipe.zcard(rt.keys.due())
        pipe.zcard(rt.keys.claimed())
        due, claimed = pipe.execute()
    return int(due) + int(claimed)


def _wait_done(rt: Runtime, pipeline: _Pipeline, *, not_before: float, timeout_s: float) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        pipeline.check_alive()
        if time.time() >= not_before and _open_count(rt) == 0:
            return True
        time.sleep(0.05)
    return False


def _summarize(outcomes: Sequence[Outcome | None], due_s: Sequence[float], *, started_s: float) -> dict[str, Any]:
    kinds = Counter(o.kind if o else "missing" for o in outcomes)
    latencies = [o.at.timestamp() - due for o, due in zip(outcomes, due_s, strict=True) if o and o.kind == "sent"]
    sent_at = [o.at.timestamp() for o in outcomes if o and o.kind == "sent"]
    result: dict[str, Any] = {"outcomes": dict(kinds), "sent": kinds.get("sent", 0)}
    if sent_at:
        span = max(sent_at) - started_s
        result["elapsed_s"] = round(span, 3)
        result["rate_per_s"] = round(len(sent_at) / span, 1) if span > 0 else None
        first_to_last = max(sent_at) - min(sent_at)
        result["delivery_rate_per_s"] = round(len(sent_at) / first_to_last, 1) if first_to_last > 0 else None
        result["first_sent_after_s"] = round(min(sent_at) - started_s, 3)
        result["latency_s"] = {
            "p50": round(percentile(latencies, 0.50) or 0, 3),
            "p90": round(percentile(latencies, 0.90) or 0, 3),
            "p99": round(percentile(latencies, 0.99) or 0, 3),
            "max": round(max(latencies), 3),
            "mean": round(statistics.fmean(latencies), 3),
        }
    return result


def _check_sink(ctx: BenchContext, expected: int) -> dict[str, Any]:
    if ctx.smtp is None:
        return {}
    batch = ctx.smtp.take()
    return {
        "sink_messages": batch.messages,
        "sink_duplicate_message_ids": batch.duplicates,
        "sink_without_message_id": batch.without_id,
        "sink_ok": batch.messages == expected and batch.duplicates == 0 and batch.without_id == 0,
    }


def run_burst(
    ctx: BenchContext,
    *,
    renewals: int,
    processes: int,
    threads: int,
    timeout_s: float = 600.0,
    plan_rate_guess: float = 800.0,
    profiler: PySpy | None = None,
    profile_name: str | None = None,
    worker_module: str = "worker.entrypoint",
) -> dict[str, Any]:
    """``renewals`` reminders due at one instant T0 until every one is final; see the module docstring.

    ``worker_module`` is what ``dramatiq`` imports in the workers (a bench variant of the production one).
    """
    ctx.flush()
    rules_path = write_bench_rules(ctx)
    pop = bench_population(renewals, "burst")
    warm = bench_population(_warm_up_size(processes, threads), "warm", partner_prefix="wp")
    rt = ctx.runtime(rules_path)
    pipeline = _Pipeline(
        ctx, rules_path, processes=processes, threads=threads, name=f"burst-p{processes}", worker_module=worker_module
    )
    result: dict[str, Any] = {"renewals": renewals, "processes": processes, "threads": threads}
    recordings: list[Recording] = []
    try:
        started = time.perf_counter()
        prepare(rt, pop, warm)
        result["seed_s"] = round(time.perf_counter() - started, 2)
        pipeline.start()
        result["warm_up_s"] = round(pipeline.warm_up(rt, warm), 2)
        lead_s = 2.0 + renewals / plan_rate_guess
        t0 = datetime.now(UTC) + timedelta(seconds=lead_s)
        t0 = t0.replace(microsecond=t0.microsecond // 1000 * 1000)  # the due index keeps milliseconds
        started = time.perf_counter()
        plan_refs(rt, pop.refs(), rt.rules(), t0)
        result["seed_plan_s"] = round(time.perf_counter() - started, 2)
        planned_ahead_s = t0.timestamp() - time.time()
        result["planned_ahead_s"] = round(planned_ahead_s, 2)
        result["valid"] = planned_ahead_s > 0.2  # else some were due before all were planned
        if profiler is not None:
            wait_until(lambda: time.time() >= t0.timestamp() - 0.5, timeout_s=lead_s + 5, interval_s=0.01)
            assert pipeline.workers is not None and pipeline.scheduler is not None
            duration = timeout_s + 10  # stopped as soon as the run is over
            name = profile_name or f"burst-p{processes}"
            recordings = [
                *profiler.record_both(f"{name}-workers", pipeline.workers.pid, duration_s=duration),
                *profiler.record_both(f"{name}-scheduler", pipeline.scheduler.pid, duration_s=duration),
            ]
        meter = pipeline.cpu_meter()
        wait_until(lambda: time.time() >= t0.timestamp(), timeout_s=lead_s + 5, interval_s=0.005)
        counters = RedisCounters.read(ctx.redis)
        meter.start()
        finished = _wait_done(rt, pipeline, not_before=t0.timestamp(), timeout_s=timeout_s)
        result["cpu_s"] = meter.stop()
        result["redis"] = RedisCounters.read(ctx.redis).since(counters, per=renewals)
        result["completed"] = finished
        profiles = {recording.name: recording.stop() for recording in recordings}
        outcomes = read_outcomes(rt, pop.refs())
        result.update(_summarize(outcomes, [t0.timestamp()] * renewals, started_s=t0.timestamp()))
        if not finished and "sent" in result:
            # Report the rate over the time given, not over the part that finished.
            result["rate_per_s"] = round(result["sent"] / timeout_s, 1)
        sent = result.get("sent", 0)
        if result["cpu_s"].get("wall_s"):
            result["cpu_ms_per_reminder"] = {
                name: round(1000 * seconds / sent, 3)
                for name, seconds in result["cpu_s"].items()
                if sent and name not in ("machine_busy_fraction", "wall_s")
            }
        result.update(_check_sink(ctx, renewals))
        if profiles:
            result["profiles"] = {name: summarize(raw) for name, raw in profiles.items() if raw is not None}
    finally:
        for recording in recordings:
            recording.stop()
        result["exit_codes"] = pipeline.stop()
        rt.close()
        ctx.flush()
    return result


def run_steady(
    ctx: BenchContext,
    *,
    rate_per_s: float,
    duration_s: float,
    processes: int,
    threads: int,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Reminders falling due evenly, ``rate_per_s`` for ``duration_s``: latency when the pipeline keeps up."""
    ctx.flush()
    rules_path = write_bench_rules(ctx)
    renewals = max(1, round(rate_per_s * duration_s))
    pop = bench_population(renewals, "steady")
    warm = bench_population(_warm_up_size(processes, threads), "warm", partner_prefix="wp")
    rt = ctx.runtime(rules_path)
    pipeline = _Pipeline(ctx, rules_path, processes=processes, threads=threads, name=f"steady-p{processes}")
    result: dict[str, Any] = {
        "renewals": renewals,
        "rate_per_s_offered": rate_per_s,
        "processes": processes,
        "threads": threads,
    }
    try:
        prepare(rt, pop, warm)
        pipeline.start()
        result["warm_up_s"] = round(pipeline.warm_up(rt, warm), 2)
        # Re-plans of a few renewals each run at roughly 700 renewals/s; start once all are written.
        lead_s = 2.0 + renewals / 300
        t0 = time.time() + lead_s
        refs = pop.refs()
        due_s = [round(t0 + i / rate_per_s, 3) for i in range(renewals)]
        rules = rt.rules()
        started = time.perf_counter()
        slot_ms = 10
        i = 0
        while i < renewals:
            slot = int(due_s[i] * 1000) // slot_ms
            j = i
            while j < renewals and int(due_s[j] * 1000) // slot_ms == slot:
                j += 1
            now = datetime.fromtimestamp(due_s[i], tz=UTC)
            plan_refs(rt, refs[i:j], rules, now)
            for k in range(i, j):
                due_s[k] = epoch_ms(now) / 1000
            i = j
        result["seed_plan_s"] = round(time.perf_counter() - started, 2)
        result["planned_ahead_s"] = round(t0 - time.time(), 2)
        result["valid"] = t0 - time.time() > 0.2
        meter = pipeline.cpu_meter()
        wait_until(lambda: time.time() >= t0, timeout_s=lead_s + 5, interval_s=0.005)
        meter.start()
        finished = _wait_done(rt, pipeline, not_before=due_s[-1], timeout_s=duration_s + timeout_s)
        result["cpu_s"] = meter.stop()
        result["completed"] = finished
        outcomes = read_outcomes(rt, refs)
        result.update(_summarize(outcomes, due_s, started_s=t0))
        result.update(_check_sink(ctx, renewals))
    finally:
        result["exit_codes"] = pipeline.stop()
        rt.close()
        ctx.flush()
    return result
