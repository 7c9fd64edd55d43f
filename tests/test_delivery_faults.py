"""Faults under the real worker and scheduler processes: nothing lost, nothing sent twice.

Each test starts its own redis-server (append-only, fsync always) on a free port, so it can kill
and restart it, and an SMTP server on loopback in this process; the worker (`dramatiq
worker.entrypoint`) and the scheduler (`renewals scheduler`) run as the production commands.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from factories import client_updated, partner_updated, renewal_updated
from redis_server import RedisServer
from service_processes import PREFIX, Service, arrivals, caught_up_start_date, wait_for

from worker.config.settings import load_settings
from worker.domain.events import parse_event
from worker.service.runtime import build_runtime
from worker.state.keys import Keys

pytestmark = pytest.mark.integration


def seed(redis_url: str, renewals: int) -> None:
    """Renewals whose first notice is already past: each is caught up at once, one email each."""
    rt = build_runtime(load_settings(redis_url=redis_url, key_prefix=PREFIX))
    start = caught_up_start_date()
    events = [partner_updated(at="2026-01-01T00:00:00Z"), client_updated(at="2026-01-01T00:00:00Z")]
    events += [
        renewal_updated(renewal_id=f"r{i}", start_date=start, at="2026-01-02T00:00:00Z") for i in range(renewals)
    ]
    rt.store.apply_many([parse_event(e) for e in events])
    rt.planning.flush(rt.rules(), rt.clock.now())
    rt.close()


def tags(count: int) -> set[str]:
    return {f"p1/r{i}/first-notice" for i in range(count)}


def test_a_worker_killed_mid_batch_resends_at_most_one_message_per_connection(
    private_redis: RedisServer, smtp_server, service: Service
) -> None:
    n = 60
    seed(private_redis.url(), n)
    smtp_server.slow_down(0.05)
    first = service.worker()
    service.scheduler()
    wait_for(lambda: len(smtp_server.messages) >= 15, 30, "the first messages")
    service.kill(first)
    service.worker()
    wait_for(lambda: {t for t, _, _ in arrivals(smtp_server)} >= tags(n), 60, "every reminder delivered")
    time.sleep(1.0)  # anything sent twice would arrive now

    received = arrivals(smtp_server)
    counts = Counter(tag for tag, _, _ in received)
    duplicates = {tag: c for tag, c in counts.items() if c > 1}
    assert len(duplicates) <= 2, (duplicates, service.logs())  # SMTP_POOL_SIZE=2 connections in the killed process
    assert all(c == 2 for c in duplicates.values())
    for tag in duplicates:  # a resend is the same message: same Message-ID, so clients can drop it
        assert len({mid for t, mid, _ in received if t == tag}) == 1


def test_redis_restarted_while_emails_go_out_loses_none_and_doubles_none_but_the_last_second(
    private_redis: RedisServer, smtp_server, service: Service
) -> None:
    n = 200
    seed(private_redis.url(), n)
    smtp_server.slow_down(0.01)
    service.worker()
    service.scheduler()
    wait_for(lambda: len(smtp_server.messages) >= 40, 30, "the first messages")
    crashed_at = time.time()
    private_redis.restart(down_s=2.0, hard=True)
    wait_for(lambda: {t for t, _, _ in arrivals(smtp_server)} >= tags(n), 90, "every reminder delivered")
    time.sleep(1.0)

    received = arrivals(smtp_server)
    counts = Counter(tag for tag, _, _ in received)
    assert set(counts) == tags(n)
    for tag, count in counts.items():
        if count > 1:
            first_at = min(at for t, _, at in received if t == tag)
            # Only a message accepted just before the crash may go twice: its record had not reached Redis.
            assert count == 2 and crashed_at - 1.0 <= first_at <= crashed_at + 0.5, (tag, count, first_at - crashed_at)
    client = private_redis.client()
    try:
        sent = sum(1 for i in range(n) if client.hexists(Keys(PREFIX).ledger("p1", f"r{i}"), "first-notice"))
    finally:
        client.close()
    assert sent == n, service.logs()


def test_an_smtp_outage_with_4xx_replies_then_recovery_delivers_each_reminder_once(
    private_redis: RedisServer, smtp_server, service: Service
) -> None:
    n = 30
    seed(private_redis.url(), n)
    smtp_server.reply_next("451 4.3.0 Mail system busy, try later", at="MAIL", messages=60)
    service.worker()
    service.scheduler()
    wait_for(lambda: {t for t, _, _ in arrivals(smtp_server)} >= tags(n), 90, "every reminder delivered")
    time.sleep(1.0)
    counts = Counter(tag for tag, _, _ in arrivals(smtp_server))
    assert counts == Counter({tag: 1 for tag in tags(n)}), service.logs()
