"""Long-running processes: the scheduler loop, and `renewals run` (worker and scheduler in one process)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import cast

import dramatiq

from ..state.connection import REDIS_ERRORS
from ..state.digests import DigestState
from ..state.replan_run import ReplanRun
from ..state.rule_change import RulesRecord
from ..state.rules_in_force import StoredRules, publish_rules
from ..state.schedule import Scheduler
from .digests import DigestScheduler
from .runtime import Runtime

__all__ = [
    "REPLAN_BUDGET_S",
    "build_scheduler",
    "log_start",
    "plan_pending",
    "replan_chunks",
    "run_scheduler",
    "run_scheduler_loop",
    "run_service",
    "sync_rules",
]

_log = logging.getLogger("worker.service")
# How long a scheduler's tick re-plans chunks of a rule change before it claims due reminders again.
REPLAN_BUDGET_S = 0.2


def sync_rules(rt: Runtime) -> bool:
    """Re-plan everything when the rules in force differ from those the due index was planned with.

    The fingerprint in Redis is swapped atomically (SET ... GET), so of many schedulers seeing the
    same edit, one re-plans. The rules are recorded first with the ones they replace, so that the
    re-plan, and every delivery, can tell which reminders the edit added or moved into the past;
    their text goes to Redis too, for the CLI's views. The re-plan itself is done in chunks
    between due claims (``replan_chunks``).
    """
    rules = rt.rules()
    RulesRecord(rt.redis, rt.keys).record(rules, rt.clock.now())
    previous = rt.redis.set(rt.keys.rules_fingerprint(), rules.fingerprint, get=True)
    if previous is not None and previous.decode() == rules.fingerprint:
        _publish_rules(rt)
        return False
    _publish_rules(rt)
    partner_ids = rt.store.partner_ids()
    _log.info("rules %s in force: re-planning the renewals of %d partner(s)", rules.fingerprint[:12], len(partner_ids))
    ReplanRun(rt.redis, rt.keys).start(rules.fingerprint, partner_ids)
    return True


def replan_chunks(rt: Runtime, *, budget_s: float = REPLAN_BUDGET_S) -> bool:
    """Re-plan chunks of the run under way until ``budget_s`` has passed; True when chunks remain.

    Called between due claims, so that a re-plan of every renewal (minutes for hundreds of
    thousands) never holds up reminders that fall due meanwhile by more than about one chunk.
    """
    run = ReplanRun(rt.redis, rt.keys)
    rules = rt.rules()
    started = time.monotonic()
    planned = 0
    while (chunk := run.claim(rules.fingerprint, rt.clock.now())) is not None:
        ids = rt.store.renewal_ids_in_bucket(chunk.partner_id, chunk.bucket)
        planned += rt.planning.replan_many(chunk.partner_id, ids, rules, rt.clock.now())
        run.done(chunk)
        if time.monotonic() - started >= budget_s:
            _log.debug("re-planned %d renewal(s) of the rule change; more to come", planned)
            return True
    if planned:
        _log.info("re-planned %d renewal(s): the rule change is planned", planned)
    return False


def _publish_rules(rt: Runtime) -> None:
    """Keep the text of the rules in force in Redis (written only when what is there differs)."""
    rules = rt.rules()
    stored = cast(bytes | None, rt.redis.hget(rt.keys.rules_in_force(), "fingerprint"))
    if stored is not None and stored.decode() == rules.fingerprint:
        return
    text = rt.rules_watcher.text
    publish_rules(rt.redis, rt.keys, StoredRules(text, rules.fingerprint, str(rt.settings.rules_path), rt.clock.now()))


def plan_pending(rt: Runtime) -> bool:
    """Each tick: pick up a rule edit, re-plan what events marked since the last tick, then a share
    of a rule change's re-plan; True when that re-plan has more to do (the next tick comes at once)."""
    sync_rules(rt)
    count = rt.planning.flush(rt.rules(), rt.clock.now(), budget_s=REPLAN_BUDGET_S)
    if count:
        _log.info("re-planned %d renewal(s)", count)
    marks_left = bool(rt.redis.zcard(rt.keys.dirty()))
    return replan_chunks(rt) or marks_left


def build_scheduler(rt: Runtime) -> Scheduler:
    digests = DigestScheduler(DigestState(rt.store), rt.rules, rt.actors.enqueue_digest)

    def tick() -> bool:
        busy = plan_pending(rt)
        try:
            digests.maybe_run(rt.clock.now())
        except REDIS_ERRORS:  # waited out by the scheduler loop, logged once there
            raise
        except Exception:
            # A digest is a convenience: a fault in finding who is due must never hold up reminders.
            _log.exception("looking for partners due a digest failed; reminders go on")
        return busy

    return Scheduler(
        rt.due_index,
        rt.actors.enqueue_deliveries,
        rt.clock.now,
        lease_ms=int(rt.settings.claim_lease_s * 1000),
        on_tick=tick,
    )


def run_scheduler_loop(rt: Runtime, scheduler: Scheduler, stop: threading.Event) -> None:
    """Tick every SCHEDULER_POLL_S until ``stop``; while Redis is away, back off and say so once.

    The process's RedisOutage logs the outage and its end, shared with the worker of `renewals run`.
    """
    poll_s = rt.settings.scheduler_poll_s
    outage = rt.redis_outage
    failures = 0
    _log.info("scheduler started (poll every %.1fs)", poll_s)
    while not stop.is_set():
        try:
            # A tick that reports more work (re-planning in parts) is followed at once by the next.
            busy = bool(scheduler.on_tick()) if scheduler.on_tick is not None else False
            count = scheduler.run_once()
        except REDIS_ERRORS as exc:
            outage.failed(exc)
            stop.wait(max(poll_s, outage.backoff_s(failures)))
            failures += 1
            continue
        outage.recovered()
        failures = 0
        if count:
            _log.info("enqueued %d due reminder(s)", count)
        stop.wait(0 if busy else poll_s)
    _log.info("scheduler stopped")


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        _log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def log_start(rt: Runtime) -> None:
    """Say where the rules and templates in use come from (env, the checkout, or the packaged copies)."""
    for line in rt.settings.data_sources():
        _log.info("%s", line)


def run_scheduler(rt: Runtime, stop: threading.Event | None = None) -> None:
    log_start(rt)
    stop = stop or threading.Event()
    _stop_on_signals(stop)
    run_scheduler_loop(rt, build_scheduler(rt), stop)


def run_service(rt: Runtime, *, threads: int = 8, stop: threading.Event | None = None) -> None:
    """A dramatiq worker and a scheduler in this process until SIGINT or SIGTERM."""
    log_start(rt)
    stop = stop or threading.Event()
    _stop_on_signals(stop)
    worker = dramatiq.Worker(rt.broker, worker_threads=threads)
    worker.start()
    try:
        run_scheduler_loop(rt, build_scheduler(rt), stop)
    finally:
        worker.stop()
