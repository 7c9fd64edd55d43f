"""A rule change re-plans every renewal in chunks between due claims, shared by several schedulers (real Redis)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from factories import client_updated, partner_updated, renewal_updated

from worker.config.settings import load_settings
from worker.domain.events import parse_event
from worker.service.clock import VirtualClock
from worker.service.processes import build_scheduler, replan_chunks, run_scheduler_loop, sync_rules
from worker.service.runtime import Runtime, build_runtime
from worker.state.ledger import parse_due_member
from worker.state.replan_run import ReplanRun

pytestmark = pytest.mark.integration
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
N = 3_000
RULE = (
    "deadline_days_before_start: 45\nreminders:\n"
    '  - {{id: {id}, anchor: deadline, offset_days: -{days}, send_time: "09:00", template: first-notice}}\n'
)


def make_runtime(redis_url: str, rules_path) -> Runtime:
    settings = load_settings(
        redis_url=redis_url, key_prefix="rc", rules_path=rules_path, rules_reload_s=0.001, scheduler_poll_s=0.05
    )
    return build_runtime(settings, clock=VirtualClock(NOW))


@pytest.fixture
def seeded(redis_url, tmp_path):
    """N renewals (one client each) planned under the first rules, then an edit of the rules."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULE.format(id="early", days=20), encoding="utf-8")
    rt = make_runtime(redis_url, rules)
    events = [partner_updated(at="2026-11-01T00:00:00Z")]
    for n in range(N):
        events.append(client_updated(client_id=f"c{n}", at="2026-11-01T00:00:00Z"))
        events.append(renewal_updated(renewal_id=f"r{n}", client_id=f"c{n}", at="2026-11-01T00:00:00Z"))
    parsed = [parse_event(raw) for raw in events]
    for start in range(0, len(parsed), 1_000):
        rt.store.apply_many(parsed[start : start + 1_000], now=NOW)
    rt.planning.flush(rt.rules(), NOW)
    assert sync_rules(rt)
    while replan_chunks(rt):
        pass
    rules.write_text(RULE.format(id="late", days=3), encoding="utf-8")
    time.sleep(0.01)  # past RULES_RELOAD_S
    yield rt, rules
    rt.close()


def planned_reminders(rt: Runtime) -> dict[str, int]:
    counts: dict[str, int] = {}
    for member in rt.redis.zrange(rt.keys.due(), 0, -1):
        reminder = parse_due_member(member)[2]
        counts[reminder] = counts.get(reminder, 0) + 1
    return counts


def test_a_due_reminder_is_claimed_while_a_rule_change_is_still_being_re_planned(seeded):
    rt, _ = seeded
    run = ReplanRun(rt.redis, rt.keys)
    # A renewal arriving late: its reminder (deadline 2026-12-02, minus 3 days) is caught up at once.
    late = parse_event(
        renewal_updated(renewal_id="due-now", client_id="c0", start_date="2027-01-16", at="2026-12-01T11:00:00Z")
    )
    assert rt.store.apply(late, now=NOW) == "applied"
    assert sync_rules(rt)  # the edit is seen: the re-plan of every renewal is under way
    claims: list[tuple[float, str, tuple[int, int]]] = []

    def enqueue(items) -> None:
        progress = run.progress()
        for item in items:
            claims.append((time.monotonic(), item.renewal_id, (progress.handed_out, progress.total)))

    scheduler = build_scheduler(rt)
    scheduler.enqueue = enqueue
    stop = threading.Event()
    started = time.monotonic()
    thread = threading.Thread(target=run_scheduler_loop, args=(rt, scheduler, stop))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while run.progress().rules_fingerprint is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        finished = time.monotonic()
    finally:
        stop.set()
        thread.join(timeout=30)
    assert [renewal for _, renewal, _ in claims] == ["due-now"]
    claimed_at, _, (handed_out, total) = claims[0]
    # Claimed in the first tick, after one share of the re-plan, long before the re-plan was over.
    assert handed_out < total, (handed_out, total)
    assert claimed_at - started < 1.0
    assert claimed_at < finished
    assert planned_reminders(rt) == {"late": N}


def test_two_schedulers_share_a_re_plan_and_never_plan_the_same_renewals(seeded, redis_url):
    rt, rules = seeded
    assert sync_rules(rt)
    other = make_runtime(redis_url, rules)
    planned: list[list[str]] = [[], []]

    def work(runtime: Runtime, seen: list[str]) -> None:
        original = runtime.planning.replan_many

        def recording(partner_id, renewal_ids, rules, now):
            ids = list(renewal_ids)
            seen.extend(ids)
            return original(partner_id, ids, rules, now)

        runtime.planning.replan_many = recording  # type: ignore[method-assign]
        while replan_chunks(runtime, budget_s=0.01) or run_left(runtime):
            time.sleep(0.001)

    def run_left(runtime: Runtime) -> bool:
        return ReplanRun(runtime.redis, runtime.keys).progress().rules_fingerprint is not None

    threads = [threading.Thread(target=work, args=(r, seen)) for r, seen in zip((rt, other), planned, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    everything = planned[0] + planned[1]
    assert planned[0] and planned[1], "both schedulers took chunks"
    assert len(everything) == len(set(everything)) == N
    assert planned_reminders(rt) == {"late": N}
    other.close()


def test_a_partner_update_over_many_renewals_does_not_hold_up_a_due_claim(seeded):
    rt, rules = seeded
    rules.write_text(RULE.format(id="early", days=20), encoding="utf-8")  # back to the rules planned
    time.sleep(0.01)
    rt.rules()
    # The partner takes its clients' mail, in Tokyo time: each of its N renewals is re-planned; one arrives
    # late with a reminder due at once (deadline 2026-12-02, minus 20 days: long past, caught up).
    partner = parse_event(partner_updated(default_owner="partner", timezone="Asia/Tokyo", at="2026-12-01T10:00:00Z"))
    late = parse_event(
        renewal_updated(renewal_id="due-now", client_id="c0", start_date="2027-01-16", at="2026-12-01T11:00:00Z")
    )
    assert rt.store.apply_many([partner, late], now=NOW) == ["applied", "applied"]
    claims: list[tuple[str, int]] = []

    def enqueue(items) -> None:
        claims.extend((item.renewal_id, rt.redis.zcard(rt.keys.dirty())) for item in items)

    scheduler = build_scheduler(rt)
    scheduler.enqueue = enqueue
    stop = threading.Event()
    thread = threading.Thread(target=run_scheduler_loop, args=(rt, scheduler, stop))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while (not claims or rt.redis.zcard(rt.keys.dirty())) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert [renewal for renewal, _ in claims] == ["due-now"]
    assert claims[0][1] > 0, "claimed only once the whole partner was re-planned"
    assert rt.redis.zcard(rt.keys.dirty()) == 0
    due = rt.redis.zrange(rt.keys.due(), 0, 0, withscores=True)
    # Every renewal now planned in Tokyo time: 09:00 there is 00:00 UTC.
    assert datetime.fromtimestamp(due[0][1] / 1000, tz=UTC).hour == 0
