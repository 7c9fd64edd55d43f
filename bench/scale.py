"""Planning at scale: a million planned reminders in Redis, re-planned after a rule change, next to a worker.

- Redis memory: INFO used_memory before and after storing and planning the population (the whole
  server's figure), and an estimate per kind of key from MEMORY USAGE on samples, to say where it goes.
- Re-plan: ``Planning.replan_all`` with a changed rule file, in a child process stopped at a timeout
  (its progress is counted through ``replan_many``, so a timeout still gives a rate).
- Process memory: VmRSS of a ``dramatiq worker.entrypoint`` process started on the empty
  database, again once the backlog is there and it has applied a partner update (which the
  scheduler then re-plans: every renewal of that partner), and of one started with the backlog
  already there; the scheduler's too, since re-planning happens in it.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from worker import publish_many
from worker.config.settings import load_settings
from worker.service.actors import EVENTS_QUEUE
from worker.service.runtime import Runtime, build_runtime
from worker.state.keys import CLIENT_BUCKETS, Keys
from worker.state.ledger import due_member
from worker.state.schedule import from_epoch_ms

from .context import DEFAULT_RULES, BenchContext
from .data import Population
from .procs import Service, rss_kib, start_scheduler, start_workers, wait_until
from .profiling import PySpy, Recording, summarize
from .seed import forget_marks, pending_marks, planned_reminders, seed_parallel

__all__ = [
    "changed_rules",
    "memory_breakdown",
    "memory_summary",
    "run_replan_all",
    "run_scale",
    "scale_population",
    "seed_for_replan",
]

_PARTNERS = 20
_SAMPLE = 100


def scale_population(renewals: int, *, tag: str = "scale") -> Population:
    start = datetime.now(UTC).date() + timedelta(days=120)
    return Population(renewals=renewals, partners=min(_PARTNERS, renewals), start_date=start, tag=tag)


def changed_rules(ctx: BenchContext) -> Path:
    """The default rules with every reminder an hour later: a change that moves every planned reminder."""
    text = DEFAULT_RULES.read_text()
    changed = text.replace('send_time: "09:00"', 'send_time: "10:00"')
    if changed == text:
        raise RuntimeError(f'{DEFAULT_RULES} has no send_time "09:00" to change')
    path = ctx.workdir / "rules-changed.yaml"
    path.write_text(changed)
    return path


def _seed(ctx: BenchContext, pop: Population, stage: str, *, processes: int) -> dict[str, float]:
    """Store or plan ``pop`` under the default rules, from ``processes`` processes."""
    return seed_parallel(
        redis_url=ctx.redis_url,
        key_prefix=ctx.key_prefix,
        rules_path=DEFAULT_RULES,
        pop=pop,
        stage=stage,
        when=datetime.now(UTC),
        processes=processes,
    )


def _used_memory(ctx: BenchContext) -> int:
    return int(ctx.redis.info("memory")["used_memory"])


def memory_breakdown(client: redis.Redis, key_names: Keys, pop: Population) -> dict[str, dict[str, Any]]:
    """Bytes per kind of key, each marked as part of the plans or of the state.

    Records: MEMORY USAGE of a sample, times how many there are (one client per renewal here).
    Everything else is measured whole: the due index, the set of planned reminder ids, each
    partner's renewals-by-client hash and the sets of seen event ids (a few per time slice, found
    by their prefix). MEMORY USAGE leaves out Redis's own table of keys (some 8 to 16 bytes a key)
    and the expiry table, so the sum is a little under the INFO used_memory difference.
    """
    k = key_names
    step = max(1, pop.renewals // _SAMPLE)
    indices = list(range(0, pop.renewals, step))[:_SAMPLE]
    partner_ids = [pop.partner_id(j) for j in range(pop.partners)]
    sampled = {
        "renewal record": [k.renewal(*pop.renewal_ref(i)) for i in indices],
        "client record": [k.client(pop.renewal_ref(i)[0], f"c{i}") for i in indices],
    }
    with client.pipeline(transaction=False) as pipe:
        for keys in sampled.values():
            for key in keys:
                pipe.memory_usage(key)
        sizes = iter(pipe.execute())
    out: dict[str, dict[str, Any]] = {}
    for name, keys in sampled.items():
        per_one = sum(next(sizes) or 0 for _ in keys) / len(keys)
        out[name] = {"part": "state", "bytes_each": round(per_one, 1), "count": pop.renewals}
    seen_keys = sorted(client.scan_iter(match=f"{k.prefix}:seen:*", count=1000))
    whole = {
        "due index (sorted set)": ("plans", [k.due()], client.zcard(k.due())),
        "planned reminder ids (set)": ("plans", [k.planned_reminder_ids()], 1),
        "partners' renewals-by-client hashes": (
            "state",
            [k.renewals_by_client_bucket(pid, bucket) for pid in partner_ids for bucket in range(CLIENT_BUCKETS)],
            pop.renewals,
        ),
        "partners set": ("state", [k.partners()], pop.partners),
        "seen event ids (sets per time slice)": ("state", seen_keys, 0),
    }
    with client.pipeline(transaction=False) as pipe:
        for _, keys, _ in whole.values():
            for key in keys:
                pipe.memory_usage(key, samples=0)
        for key in seen_keys:
            pipe.scard(key)
        replies = iter(pipe.execute())
        totals = {name: sum(next(replies) or 0 for _ in keys) for name, (_, keys, _) in whole.items()}
        seen_ids = sum(int(next(replies)) for _ in seen_keys)
    for name, (part, _, count) in whole.items():
        count = seen_ids if name.startswith("seen") else count
        out[name] = {"part": part, "bytes_each": round(totals[name] / max(1, count), 1), "count": count}
    for row in out.values():
        row["mb"] = round(row["bytes_each"] * row["count"] / 1e6, 1)
    return out


def memory_summary(breakdown: dict[str, dict[str, Any]], reminders: int) -> dict[str, float]:
    """MB per 1,000,000 planned reminders by the key-kind breakdown: all, the plans' part, the state's."""
    per_reminder = {
        part: sum(row["bytes_each"] * row["count"] for row in breakdown.values() if row["part"] == part)
        / max(1, reminders)
        for part in ("plans", "state")
    }
    return {
        "total_mb": round(per_reminder["plans"] + per_reminder["state"], 1),  # bytes per reminder = MB per million
        "plans_mb": round(per_reminder["plans"], 1),
        "state_mb": round(per_reminder["state"], 1),
    }


def _rss_mb(pid: int) -> float:
    return round((rss_kib(pid) or 0) / 1024, 1)


def _worker_rss(service: Service) -> dict[str, Any]:
    """VmRSS in MB of dramatiq's main process and of each worker process."""
    children = [pid for pid in service.pids() if pid != service.pid]
    parent = rss_kib(service.pid) or 0
    workers = [rss_kib(pid) or 0 for pid in children]
    return {
        "main_mb": round(parent / 1024, 1),
        "workers_mb": [round(v / 1024, 1) for v in workers],
        "max_worker_mb": round(max(workers, default=0) / 1024, 1),
    }


def _publish_and_wait(
    rt: Runtime, services: list[Service], events: list[dict[str, Any]], *, timeout_s: float, planned: bool
) -> float:
    """Publish, then wait until the workers have applied everything (and, if ``planned``, the scheduler planned it)."""
    started = time.perf_counter()
    publish_many(events, runtime=rt)

    def done() -> bool:
        for service in services:
            service.check_alive()
        return rt.broker.do_qsize(EVENTS_QUEUE) == 0 and (not planned or pending_marks(rt) == 0)

    wait_until(done, timeout_s=timeout_s, interval_s=0.05, what="the events to be applied and planned")
    return time.perf_counter() - started


def _warm_up_events(tag: str) -> list[dict[str, Any]]:
    """A tiny population of its own, so a worker has imported and run everything it runs for an event."""
    pop = Population(renewals=3, partners=1, start_date=datetime.now(UTC).date() + timedelta(days=120), tag=tag)
    events = list(pop.events())
    for event in events:
        event["partner_id"] = f"warm-{tag}"
    return events


def _replan_child(redis_url: str, key_prefix: str, rules_path: str, progress: Any, results: Any) -> None:
    rt = build_runtime(load_settings(redis_url=redis_url, key_prefix=key_prefix, rules_path=Path(rules_path)))
    rules = rt.rules()
    replan_many = rt.planning.replan_many

    def counted(*args: Any, **kwargs: Any) -> Any:
        count = replan_many(*args, **kwargs)
        if isinstance(count, int):
            with progress.get_lock():
                progress.value += count
        return count

    rt.planning.replan_many = counted  # type: ignore[method-assign]
    started = time.perf_counter()
    count = rt.planning.replan_all(rules, datetime.now(UTC))
    elapsed = time.perf_counter() - started
    results.put((count, elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
    rt.close()


def run_replan_all(
    ctx: BenchContext,
    rules_path: Path,
    *,
    renewals: int,
    timeout_s: float,
    profiler: PySpy | None = None,
    profile_name: str = "replan",
) -> dict[str, Any]:
    """``Planning.replan_all`` under ``rules_path`` in a child process, stopped after ``timeout_s``."""
    ctx_mp = multiprocessing.get_context("spawn")
    progress = ctx_mp.Value("q", 0)
    results = ctx_mp.Queue()
    child = ctx_mp.Process(
        target=_replan_child, args=(ctx.redis_url, ctx.key_prefix, str(rules_path), progress, results), daemon=True
    )
    started = time.perf_counter()
    child.start()
    recordings: list[Recording] = []
    if profiler is not None and child.pid is not None:
        time.sleep(1.0)  # let it import, so the profile is of the re-plan
        recordings = profiler.record_both(profile_name, child.pid, duration_s=timeout_s + 10, subprocesses=False)
    result: dict[str, Any] = {"renewals": renewals, "timeout_s": timeout_s}
    try:
        outcome = None
        deadline = started + timeout_s
        while time.perf_counter() < deadline:
            try:
                outcome = results.get(timeout=0.5)
                break
            except Exception:  # queue.Empty
                if not child.is_alive():
                    break
        if outcome is not None:
            count, elapsed, max_rss_kib = outcome
            result.update(
                completed=True,
                replanned=count,
                elapsed_s=round(elapsed, 2),
                renewals_per_s=round(count / elapsed, 1) if elapsed > 0 else None,
                child_max_rss_mb=round(max_rss_kib / 1024, 1),
            )
        else:
            elapsed = time.perf_counter() - started
            done = progress.value
            result.update(completed=False, replanned=done, elapsed_s=round(elapsed, 2), exit_code=child.exitcode)
            if done:
                result["renewals_per_s"] = round(done / elapsed, 1)
                result["estimated_total_s"] = round(elapsed * renewals / done, 1)
    finally:
        profiles = {recording.name: recording.stop() for recording in recordings}
        if child.is_alive():
            child.terminate()
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
                child.join()
        results.close()
    if profiles:
        result["profiles"] = {name: summarize(raw) for name, raw in profiles.items() if raw is not None}
    return result


def run_scale(
    ctx: BenchContext,
    *,
    renewals: int,
    threads: int = 8,
    seed_processes: int = 2,
    replan_timeout_s: float = 300.0,
    event_timeout_s: float = 300.0,
) -> dict[str, Any]:
    ctx.flush()
    pop = scale_population(renewals)
    rt = ctx.runtime()
    rules = rt.rules()
    env = ctx.env()
    queues = ["events", "deliveries"]
    result: dict[str, Any] = {"renewals": renewals, "rules": len(rules.reminders)}
    services: list[Service] = []
    try:
        worker_a = start_workers(env, processes=1, threads=threads, queues=queues, log_path=ctx.log_path("scale-a"))
        scheduler = start_scheduler(env, log_path=ctx.log_path("scale-scheduler-1"))
        services += [worker_a, scheduler]
        _publish_and_wait(rt, services, _warm_up_events("a"), timeout_s=60, planned=True)
        time.sleep(1.0)
        result["worker_rss_empty"] = _worker_rss(worker_a)
        result["scheduler_rss_empty_mb"] = _rss_mb(scheduler.pid)
        # Stopped while seeding, which plans everything itself: else it would re-plan what it marks.
        scheduler.stop(timeout_s=30)

        used_before = _used_memory(ctx)
        stored = _seed(ctx, pop, "store", processes=seed_processes)
        marks_bytes = ctx.redis.memory_usage(rt.keys.dirty(), samples=0) or 0
        # Planned just below, here: no scheduler is to plan them. In a steady state there are none;
        # they are left out of the state's figure and reported apart.
        marks_left = forget_marks(rt)
        used_stored = _used_memory(ctx)
        planned = _seed(ctx, pop, "plan", processes=seed_processes)
        result["seed"] = {"store": stored, "plan": planned, "marks_left": marks_left}
        used_after = _used_memory(ctx)
        indexed, reminders = planned_reminders(rt, pop.refs())
        result["planned_reminders"] = reminders
        result["indexed_renewals"] = indexed
        result["population"] = {
            "partners": pop.partners,
            "clients": pop.renewals,
            "renewals": pop.renewals,
            "planned_reminders": reminders,
        }
        # INFO used_memory is the whole server's: another client of the same Redis moves it. Bytes
        # per reminder is also MB per million reminders.
        per_million = 1e6 / reminders if reminders else 0.0
        result["redis_memory"] = {
            "total_mb": round((used_after - used_before) / 1e6, 1),
            "state_mb": round((used_stored - used_before) / 1e6, 1),
            "plans_mb": round((used_after - used_stored) / 1e6, 1),
            "bytes_per_reminder": round((used_after - used_before) / reminders, 1) if reminders else None,
            "plan_bytes_per_reminder": round((used_after - used_stored) / reminders, 1) if reminders else None,
            "state_bytes_per_reminder": round((used_stored - used_before) / reminders, 1) if reminders else None,
            "pending_marks_after_ingest_mb": round(marks_bytes / 1e6, 1),
            "pending_marks_per_million_reminders_mb": round(marks_bytes * per_million / 1e6, 1),
        }
        breakdown = memory_breakdown(ctx.redis, rt.keys, pop)
        result["memory_by_key_kind"] = breakdown
        result["memory_by_key_kind_per_million_reminders"] = memory_summary(breakdown, reminders)

        # A partner update: the worker applies it and marks the partner, the scheduler re-plans its renewals.
        scheduler = start_scheduler(env, log_path=ctx.log_path("scale-scheduler-2"))
        services.append(scheduler)
        touched = len(rt.store.renewal_ids(pop.partner_id(0)))
        update = pop.partner_event(0, at=datetime.now(UTC) + timedelta(seconds=1))
        update["event_id"] = f"{pop.tag}-p0-update"
        update["data"]["name"] = "Partner 0 renamed"
        elapsed = _publish_and_wait(rt, services, [update], timeout_s=event_timeout_s, planned=True)
        result["partner_update"] = {
            "renewals_replanned": touched,
            "elapsed_s": round(elapsed, 2),
            "renewals_per_s": round(touched / elapsed, 1),
        }
        result["worker_rss_after_backlog"] = _worker_rss(worker_a)
        result["scheduler_rss_after_partner_update_mb"] = _rss_mb(scheduler.pid)

        worker_b = start_workers(env, processes=1, threads=threads, queues=queues, log_path=ctx.log_path("scale-b"))
        services.append(worker_b)
        _publish_and_wait(rt, services, _warm_up_events("b"), timeout_s=60, planned=True)
        time.sleep(1.0)
        result["worker_rss_started_with_backlog"] = _worker_rss(worker_b)
        for service in services:
            service.stop(timeout_s=30)

        replan = run_replan_all(ctx, changed_rules(ctx), renewals=renewals, timeout_s=replan_timeout_s)
        result["replan_all"] = replan
        if replan.get("completed"):
            result["replan_all"]["due_index_size_after"] = rt.due_index.size()
            partner_id, renewal_id = pop.renewal_ref(0)
            score = rt.redis.zscore(rt.keys.due(), due_member(partner_id, renewal_id, rules.reminders[0].id))
            result["replan_all"]["moved_to_new_time"] = score is not None and from_epoch_ms(score).hour == 10
    finally:
        for service in services:
            service.stop(timeout_s=30)
        rt.close()
        ctx.flush()
    return result


def seed_for_replan(ctx: BenchContext, renewals: int, *, processes: int = 2) -> Population:
    """Store and plan a population under the default rules (for the re-plan profile)."""
    ctx.flush()
    pop = scale_population(renewals, tag="replan")
    _seed(ctx, pop, "store", processes=processes)
    _seed(ctx, pop, "plan", processes=processes)
    rt = ctx.runtime()
    try:
        forget_marks(rt)  # planned above; no scheduler is to plan them again
    finally:
        rt.close()
    return pop
