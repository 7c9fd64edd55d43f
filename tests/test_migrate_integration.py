"""A store in the previous layout (1: no version key, raw event ids) is refused, then migrated in place."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from factories import client_updated, partner_updated, renewal_updated

from worker.config.settings import load_settings
from worker.domain.errors import StoreLayoutError
from worker.domain.events import parse_event
from worker.service.runtime import build_runtime
from worker.state.keys import Keys
from worker.state.layout import LAYOUT_VERSION, stored_layout
from worker.state.replan_run import ReplanRun
from worker.state.store import Store

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PREFIX = "mg"
DAY_MS = 86_400_000


def write_layout_1_store(client) -> str:
    """What the previous version left: the same records, no version key, and the ids of superseded
    events themselves in one set per time slice (`seen:<slice ms>:<index>`, 30 days in 8 slices)."""
    store = Store(client, keys=Keys(PREFIX), event_id_ttl_s=30 * 86_400)
    now = datetime.now(UTC)
    for raw in (
        partner_updated(at="2026-11-01T00:00:00Z"),
        client_updated(at="2026-11-01T00:00:00Z"),
        renewal_updated(at="2026-11-01T00:00:00Z", event_id="r1-v1"),
        renewal_updated(at="2026-11-02T00:00:00Z", event_id="r1-v2"),
        renewal_updated(renewal_id="r-orphan", partner_id="never-seen", at="2026-11-01T00:00:00Z"),
    ):
        assert store.apply(parse_event(raw), now=now) == "applied"
    for key in client.keys(f"{PREFIX}:seen:*") + client.keys(f"{PREFIX}:layout"):
        client.delete(key)
    slice_ms = -(-30 * DAY_MS // 8)
    old_slice = f"{PREFIX}:seen:{slice_ms}:{int(now.timestamp() * 1000) // slice_ms}"
    client.sadd(old_slice, "r1-v1")  # superseded by r1-v2, as layout 1 remembered it
    client.pexpire(old_slice, 20 * DAY_MS)
    client.set(f"{PREFIX}:rules:fingerprint", "f" * 64)
    return old_slice


def run(command: list[str], redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": redis_url, "KEY_PREFIX": PREFIX}
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_store_in_the_previous_layout_stops_workers_and_cli_until_it_is_migrated_in_place(real_redis, redis_url):
    old_slice = write_layout_1_store(real_redis)
    settings = load_settings(redis_url=redis_url, key_prefix=PREFIX)
    with pytest.raises(StoreLayoutError, match="renewals migrate"):
        build_runtime(settings)
    for command in (
        [str(BIN / "renewals"), "plan", "p1", "r1"],
        [str(BIN / "dramatiq"), "worker.entrypoint", "--processes", "1", "--threads", "1"],
    ):
        proc = run(command, redis_url)
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr, proc.stderr
        (line,) = [line for line in proc.stderr.splitlines() if "layout" in line]
        assert "has layout 1" in line and "renewals migrate" in line, line

    proc = run([str(BIN / "renewals"), "migrate"], redis_url)
    assert proc.returncode == 0, proc.stderr
    assert f"layout 1 -> layout {LAYOUT_VERSION}" in proc.stdout
    assert "1 in 1 time slice" in proc.stdout
    assert stored_layout(real_redis, Keys(PREFIX)) == LAYOUT_VERSION
    # The ids remembered by layout 1 are still known, as digests, for the rest of their time.
    assert not real_redis.exists(old_slice)
    buckets = real_redis.keys(f"{old_slice}:*")
    assert len(buckets) == 1 and real_redis.pttl(buckets[0]) > 19 * DAY_MS
    rt = build_runtime(settings)
    assert rt.store.apply(parse_event(renewal_updated(at="2026-11-01T00:00:00Z", event_id="r1-v1"))) == "duplicate"
    assert rt.store.renewal_state("p1", "r1").renewal is not None
    # Every renewal is re-planned under the new layout's rules (in chunks, by the schedulers).
    progress = ReplanRun(rt.redis, rt.keys).progress()
    assert progress.rules_fingerprint == "f" * 64 and progress.total > 0
    rt.close()

    again = run([str(BIN / "renewals"), "migrate"], redis_url)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_a_store_of_a_newer_layout_is_refused_naming_what_to_do(real_redis, redis_url):
    real_redis.set(f"{PREFIX}:layout", LAYOUT_VERSION + 1)
    proc = run([str(BIN / "renewals"), "waiting"], redis_url)
    assert proc.returncode == 2
    assert "newer version" in proc.stderr and "Traceback" not in proc.stderr
    proc = run([str(BIN / "renewals"), "migrate"], redis_url)
    assert proc.returncode == 2 and "newer version" in proc.stderr


def test_an_empty_store_is_stamped_with_this_layout_on_first_use(real_redis, redis_url):
    build_runtime(load_settings(redis_url=redis_url, key_prefix=PREFIX)).close()
    assert real_redis.get(f"{PREFIX}:layout") == str(LAYOUT_VERSION).encode()
