"""A real dramatiq worker on the real Redis: events in through the API and the CLI, stored once, in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from draining import drain
from factories import client_updated, partner_updated, renewal_updated, services_ended

from worker import publish, publish_many
from worker.config.settings import load_settings
from worker.domain.errors import InvalidEvent
from worker.service.actors import EVENTS_QUEUE
from worker.service.runtime import Runtime, build_runtime, set_runtime

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def runtime(redis_url: str) -> Iterator[Runtime]:
    rt = build_runtime(load_settings(redis_url=redis_url, key_prefix="it"))
    set_runtime(rt)
    yield rt
    set_runtime(None)
    rt.close()


def test_events_published_through_the_api_are_stored(runtime):
    publish(partner_updated(partner_id="p1"), runtime=runtime)
    publish(client_updated(partner_id="p1", domain="acme.com"), runtime=runtime)
    drain(runtime)
    state = runtime.store.client_state("p1", "c1")
    assert state.client is not None and state.client.domain == "acme.com"
    assert runtime.store.partner("p1") is not None


def test_publish_refuses_an_invalid_event_naming_the_field(runtime):
    raw = client_updated()
    raw["data"]["domain"] = "no spaces.com"
    with pytest.raises(InvalidEvent) as exc:
        publish(raw, runtime=runtime)
    assert exc.value.errors[0][0] == "data.domain"
    assert runtime.redis.llen("it-queue:" + EVENTS_QUEUE) == 0


def test_duplicates_and_stale_events_do_not_change_the_state(runtime):
    newest = client_updated(at="2026-11-03T00:00:00Z", domain="newest.com", event_id="e-new")
    publish_many(
        [
            newest,
            newest,
            client_updated(at="2026-11-01T00:00:00Z", domain="older.com"),
        ],
        runtime=runtime,
    )
    drain(runtime)
    state = runtime.store.client_state("p1", "c1")
    assert state.client is not None and state.client.domain == "newest.com"


def test_a_poison_event_is_dead_lettered_and_never_stops_the_events_behind_it(runtime):
    runtime.actors.ingest.send('{"event_id": "x", "type": "renewal.updated"')  # broken JSON
    runtime.actors.ingest.send(json.dumps(renewal_updated(currency="BTC")))
    runtime.actors.ingest.send_with_options(args=(1, 2, 3))
    publish(renewal_updated(renewal_id="r-good"), runtime=runtime)
    drain(runtime)
    assert runtime.store.renewal_state("p1", "r-good").renewal is not None
    letters = runtime.store.dead_letters()
    assert len(letters) == 3
    assert any(("data.currency", "not an ISO 4217 currency code: 'BTC'") in d.errors for d in letters)
    assert any(d.raw.startswith('{"event_id": "x"') for d in letters)


def test_cli_enqueue_reports_bad_lines_and_enqueues_the_good_ones(runtime, redis_url, tmp_path):
    bad = client_updated(client_id="c2")
    bad["data"]["contacts"]["primary"]["email"] = "nobody"
    lines = [
        json.dumps(partner_updated()),
        "this is not json",
        json.dumps(bad),
        json.dumps(client_updated(client_id="c3")),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {**os.environ, "REDIS_URL": redis_url, "KEY_PREFIX": "it"}
    proc = subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "enqueue", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert f"{path}:2:" in proc.stderr
    assert f"{path}:3: data.contacts.primary.email:" in proc.stderr
    assert "enqueued 2 event(s), rejected 2" in proc.stdout
    assert runtime.broker.do_qsize(EVENTS_QUEUE) == 1  # one batch message
    drain(runtime)
    assert runtime.store.client_state("p1", "c3").client is not None
    assert runtime.store.client_state("p1", "c2").client is None


def test_the_procfile_worker_consumes_from_the_real_broker(runtime, redis_url):
    procfile = (ROOT / "Procfile").read_text(encoding="utf-8")
    line = next(row for row in procfile.splitlines() if row.startswith("worker:"))
    command = [*line.split(":", 1)[1].split(), "--processes", "2", "--threads", "2"]
    assert command[0] == "dramatiq"
    command[0] = str(Path(sys.executable).with_name("dramatiq"))
    env = {**os.environ, "REDIS_URL": redis_url, "KEY_PREFIX": "it"}
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        publish(services_ended(client_id="c9"), runtime=runtime)
        publish(client_updated(client_id="c9", at="2026-11-09T00:00:00Z"), runtime=runtime)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = runtime.store.client_state("p1", "c9")
            if state.services_ended and state.client is not None:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the dramatiq worker did not apply the events")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]


def test_an_event_that_keeps_failing_is_dead_lettered_after_its_last_retry(runtime, monkeypatch):
    from worker.service import actors

    monkeypatch.setattr(actors, "INGEST_MAX_RETRIES", 0)

    def broken(*args, **kwargs):
        raise RuntimeError("store exploded")

    monkeypatch.setattr(actors, "handle_event_message", broken)
    publish(partner_updated(), runtime=runtime)
    publish(partner_updated(partner_id="p2"), runtime=runtime)
    drain(runtime)
    letters = runtime.store.dead_letters()
    assert [d.reason for d in letters] == ["processing_failed", "processing_failed"]
    assert letters[0].errors == [("", "RuntimeError: store exploded")]
    assert '"partner_id":"p' in letters[0].raw


def test_the_worker_stops_when_its_whole_process_group_gets_sigterm(runtime, redis_url):
    """timeout, systemd and container stops signal every process of the group at once."""
    import signal

    env = {**os.environ, "REDIS_URL": redis_url, "KEY_PREFIX": "it"}
    command = [str(Path(sys.executable).with_name("dramatiq")), "worker.entrypoint", "--processes", "1"]
    command += ["--threads", "2", "--queues", "events", "deliveries"]
    proc = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        publish(partner_updated(partner_id="p-sig"), runtime=runtime)
        deadline = time.monotonic() + 30
        while runtime.store.partner("p-sig") is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert runtime.store.partner("p-sig") is not None, "the worker never started"
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail("the worker hung after SIGTERM to its process group")
        proc.stderr.close()


def test_an_event_dated_days_ahead_is_dead_lettered_so_it_cannot_make_real_events_stale(runtime):
    from datetime import UTC, datetime, timedelta

    ahead = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    publish(client_updated(at=ahead, domain="future.com"), runtime=runtime)
    publish(client_updated(domain="now.com"), runtime=runtime)
    drain(runtime)
    state = runtime.store.client_state("p1", "c1")
    assert state.client is not None and state.client.domain == "now.com"
    (letter,) = runtime.store.dead_letters()
    assert letter.errors[0][0] == "occurred_at" and "in the future" in letter.errors[0][1]
