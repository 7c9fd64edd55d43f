"""Code run in child processes by the integration tests (importable, so `spawn` can find it)."""

from __future__ import annotations

import time

from worker.config.settings import load_settings
from worker.service.runtime import build_runtime
from worker.state.schedule import DueItem, Scheduler


def scheduler_loop(redis_url: str, key_prefix: str, stop_key: str, record_key: str, poll_s: float) -> None:
    """A real scheduler that also records every member it enqueues, so a test can count them."""
    rt = build_runtime(load_settings(redis_url=redis_url, key_prefix=key_prefix))

    def enqueue(items: list[DueItem]) -> None:
        rt.actors.enqueue_deliveries(items)
        rt.redis.rpush(record_key, *[item.member for item in items])

    scheduler = Scheduler(rt.due_index, enqueue, rt.clock.now, lease_ms=60_000, batch=20)
    deadline = time.monotonic() + 120
    while not rt.redis.exists(stop_key) and time.monotonic() < deadline:
        rt.planning.flush(rt.rules(), rt.clock.now())
        scheduler.run_once()
        time.sleep(poll_s)
    rt.close()
