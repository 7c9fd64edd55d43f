"""Two scheduler processes and two dramatiq worker processes on the real Redis: each reminder enqueued once."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes
from pathlib import Path

import pytest
from factories import client_updated, partner_updated, renewal_updated
from procs import scheduler_loop

from worker import publish_many
from worker.config.settings import load_settings
from worker.service.runtime import build_runtime, set_runtime

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
N = 120


def _start_workers(redis_url: str, outbox: Path, count: int) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "REDIS_URL": redis_url, "KEY_PREFIX": "sc", "OUTBOX_DIR": str(outbox)}
    dramatiq_bin = str(Path(sys.executable).with_name("dramatiq"))
    command = [dramatiq_bin, "worker.entrypoint", "--processes", "1", "--threads", "4"]
    command += ["--queues", "events", "deliveries"]
    return [
        subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(count)
    ]


def test_two_schedulers_and_two_workers_enqueue_and_send_every_due_reminder_once(redis_url, tmp_path):
    rt = build_runtime(load_settings(redis_url=redis_url, key_prefix="sc"))
    set_runtime(rt)
    outbox = tmp_path / "outbox"
    ctx = multiprocessing.get_context("spawn")
    schedulers = [
        ctx.Process(target=scheduler_loop, args=(redis_url, "sc", "test:stop", "test:enqueued", 0.01)) for _ in range(2)
    ]
    for proc in schedulers:
        proc.start()
    workers = _start_workers(redis_url, outbox, 2)
    try:
        # Start dates whose first notice is already past: every renewal's first notice is caught up,
        # so all N fall due while both schedulers are polling.
        start = date.today() + timedelta(days=45 + 20)
        events = [partner_updated(at="2026-01-01T00:00:00Z"), client_updated(at="2026-01-01T00:00:00Z")]
        events += [
            renewal_updated(renewal_id=f"r{i}", start_date=start.isoformat(), at="2026-01-02T00:00:00Z")
            for i in range(N)
        ]
        publish_many(events, runtime=rt)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            sent = sum(1 for i in range(N) if rt.ledger.outcome("p1", f"r{i}", "first-notice") is not None)
            if sent == N:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"only {sent} of {N} reminders were sent")
    finally:
        rt.redis.set("test:stop", 1)
        for proc in schedulers:
            proc.join(timeout=30)
        for worker in workers:
            worker.terminate()
        errors = [worker.communicate(timeout=30)[1] for worker in workers]
    assert all(proc.exitcode == 0 for proc in schedulers)
    assert all(worker.returncode == 0 for worker in workers), errors[0].decode()[-2000:]

    enqueued = [m.decode() for m in rt.redis.lrange("test:enqueued", 0, -1)]
    first_notices = [m for m in enqueued if m.endswith("\x1ffirst-notice")]
    assert len(first_notices) == N
    assert len(set(first_notices)) == N, "a reminder was enqueued twice"

    outcomes = [rt.ledger.outcome("p1", f"r{i}", "first-notice") for i in range(N)]
    assert {o.kind for o in outcomes if o} == {"sent"}
    files = sorted(outbox.glob("*.eml"))
    assert len(files) == N
    ids = {message_from_bytes(f.read_bytes())["Message-ID"] for f in files}
    assert len(ids) == N
    assert all(o.at <= datetime.now(UTC) for o in outcomes if o)
    set_runtime(None)
    rt.close()
