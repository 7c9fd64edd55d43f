"""Ingest: events through the public ``publish_many`` until production workers have stored them all.

The benchmark's process is the producer, publishing in chunks of 1,000 as an upstream system
would (``publish_many`` sends them INGEST_BATCH_SIZE per message); on one machine it shares the
cores with the workers, so its CPU time is reported too. A scheduler runs as in production: it
plans what the workers stored (and marked), so the time until every renewal is planned is
reported as well.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from worker import publish_many
from worker.service.actors import EVENTS_QUEUE
from worker.service.runtime import Runtime

from .context import BenchContext
from .data import Population
from .procs import CpuMeter, start_scheduler, start_workers, wait_until
from .profiling import PySpy, Recording, summarize
from .redis_stats import RedisCounters
from .seed import pending_marks, planned_reminders

__all__ = ["ingest_population", "run_ingest", "stored_count"]

_PARTNERS = 20
_CHUNK = 1000


def ingest_population(events: int, *, tag: str = "ingest") -> Population:
    """About ``events`` events (partners, then a client and a renewal each), reminders all in the future."""
    renewals = max(1, (events - _PARTNERS) // 2)
    start = datetime.now(UTC).date() + timedelta(days=120)
    return Population(renewals=renewals, partners=min(_PARTNERS, renewals), start_date=start, tag=tag)


def stored_count(rt: Runtime, pop: Population) -> int:
    """Partners, clients and renewals the store holds: one per event of the population once all are in."""
    k = rt.keys
    partner_ids = [pop.partner_id(j) for j in range(pop.partners)]
    with rt.redis.pipeline(transaction=False) as pipe:
        for pid in partner_ids:
            pipe.exists(k.partner(pid))
        found = sum(int(v) for v in pipe.execute())
    return found + sum(len(rt.store.client_ids(pid)) + len(rt.store.renewal_ids(pid)) for pid in partner_ids)


def run_ingest(
    ctx: BenchContext,
    *,
    events: int,
    processes: int,
    threads: int,
    timeout_s: float = 600.0,
    profiler: PySpy | None = None,
    profile_name: str = "ingest",
) -> dict[str, Any]:
    ctx.flush()
    pop = ingest_population(events)
    total = pop.event_count()
    raw = list(pop.events())
    rt = ctx.runtime()
    result: dict[str, Any] = {
        "events": total,
        "processes": processes,
        "threads": threads,
        "batch_size": rt.settings.ingest_batch_size,
    }
    workers = scheduler = None
    recordings: list[Recording] = []
    try:
        scheduler = start_scheduler(ctx.env(), log_path=ctx.log_path(f"{profile_name}-scheduler"))
        workers = start_workers(
            ctx.env(),
            processes=processes,
            threads=threads,
            queues=["events", "deliveries"],
            log_path=ctx.log_path(f"{profile_name}-p{processes}"),
        )
        redis_pid = int(ctx.redis.info("server")["process_id"])
        me = os.getpid()
        groups = {"workers": workers.pids, "scheduler": scheduler.pids, "redis": lambda: [redis_pid]}
        meter = CpuMeter({**groups, "producer": lambda: [me]})
        if profiler is not None:
            duration = 2 * timeout_s + 10  # stopped as soon as the run is over
            recordings = [
                *profiler.record_both(f"{profile_name}-workers", workers.pid, duration_s=duration),
                *profiler.record_both(f"{profile_name}-scheduler", scheduler.pid, duration_s=duration),
                *profiler.record_both(f"{profile_name}-producer", me, duration_s=duration, subprocesses=False),
            ]
        counters = RedisCounters.read(ctx.redis)
        meter.start()
        started = time.perf_counter()
        for start in range(0, total, _CHUNK):
            publish_many(raw[start : start + _CHUNK], runtime=rt)
        published = time.perf_counter()

        def stored() -> bool:
            workers.check_alive()
            return stored_count(rt, pop) >= total

        wait_until(stored, timeout_s=timeout_s, interval_s=0.1, what="every event to be stored")
        stored_at = time.perf_counter()
        wait_until(lambda: rt.broker.do_qsize(EVENTS_QUEUE) == 0, timeout_s=timeout_s, what="the events queue")
        drained = time.perf_counter()

        def planned() -> bool:
            scheduler.check_alive()
            # The due index holds each renewal's next reminder: one entry per renewal once planned.
            return pending_marks(rt) == 0 and rt.due_index.size() >= pop.renewals

        wait_until(planned, timeout_s=timeout_s, interval_s=0.1, what="the scheduler to plan every renewal")
        planned_at = time.perf_counter()
        result["cpu_s"] = meter.stop()
        result["redis"] = RedisCounters.read(ctx.redis).since(counters, per=total)
        profiles = {recording.name: recording.stop() for recording in recordings}
        result["publish_s"] = round(published - started, 3)
        result["publish_per_s"] = round(total / (published - started), 1)
        result["stored_s"] = round(stored_at - started, 3)
        result["rate_per_s"] = round(total / (stored_at - started), 1)
        result["drained_s"] = round(drained - started, 3)
        result["planned_s"] = round(planned_at - started, 3)
        result["planned_renewals_per_s"] = round(pop.renewals / (planned_at - started), 1)
        result["dead_letters"] = len(rt.store.dead_letters(limit=10))
        result["indexed_renewals"], result["planned_reminders"] = planned_reminders(rt, pop.refs())
        result["cpu_ms_per_event"] = {
            name: round(1000 * seconds / total, 3)
            for name, seconds in result["cpu_s"].items()
            if name not in ("machine_busy_fraction", "wall_s")
        }
        if profiles:
            result["profiles"] = {name: summarize(raw) for name, raw in profiles.items() if raw is not None}
    finally:
        for recording in recordings:
            recording.stop()
        if workers is not None:
            result["exit_code"] = workers.stop(timeout_s=30)
        if scheduler is not None:
            result["scheduler_exit_code"] = scheduler.stop(timeout_s=30)
        rt.close()
        ctx.flush()
    return result
