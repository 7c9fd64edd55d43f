"""Re-planning on fakeredis: what an event changes in the due index, and properties over event sequences."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import fakeredis
import pytest
from factories import client_updated, owner_changed, partner_updated, renewal_removed, renewal_updated, services_ended
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.config.rulefile import load_rules
from worker.config.settings import load_settings
from worker.domain.events import parse_event
from worker.domain.planner import deadline_end
from worker.service.clock import VirtualClock
from worker.service.runtime import Runtime, build_runtime
from worker.state.ledger import Outcome, parse_due_member

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def make_runtime(now: datetime = NOW) -> Runtime:
    return build_runtime(load_settings(redis_url=None), clock=VirtualClock(now), redis_client=fakeredis.FakeRedis())


@pytest.fixture
def rt() -> Runtime:
    """A runtime whose partners p1 and p2 are known and already know client c1 (older than any test's
    events): a renewal is planned only once its client and its partner are known."""
    runtime = make_runtime()
    for pid in ("p1", "p2"):
        raw = partner_updated(partner_id=pid, at="2026-01-01T00:00:00Z", event_id=f"fixture-partner-{pid}")
        runtime.store.apply(parse_event(raw), now=NOW)
        raw = client_updated(partner_id=pid, at="2026-01-01T00:00:00Z", event_id=f"fixture-client-{pid}")
        runtime.store.apply(parse_event(raw), now=NOW)
    runtime.planning.flush(runtime.rules(), NOW)
    return runtime


def ingest(rt: Runtime, raw) -> str:
    event = parse_event(raw)
    outcome = rt.store.apply(event)
    if outcome != "stale":
        rt.planning.replan_for_event(event, rt.rules(), rt.clock.now())
    return outcome


def due_entries(rt: Runtime) -> dict[tuple[str, str, str], datetime]:
    rows = rt.redis.zrange(rt.keys.due(), 0, -1, withscores=True)
    return {parse_due_member(m): datetime.fromtimestamp(score / 1000, tz=UTC) for m, score in rows}


def test_a_new_pending_renewal_indexes_its_next_reminder_and_each_final_one_brings_the_next(rt):
    ingest(rt, client_updated(timezone="Europe/Berlin"))
    ingest(rt, renewal_updated(start_date="2027-03-15"))  # deadline 2027-01-29
    expected = [
        ("first-notice", datetime(2026, 12, 30, 8, 0, tzinfo=UTC)),
        ("second-notice", datetime(2027, 1, 22, 8, 0, tzinfo=UTC)),
        ("final-notice", datetime(2027, 1, 28, 8, 0, tzinfo=UTC)),
    ]
    for reminder_id, due_at in expected:
        assert due_entries(rt) == {("p1", "r1", reminder_id): due_at}  # one entry per renewal
        rt.ledger.finish("p1", "r1", reminder_id, Outcome("sent", due_at))  # marks the renewal
        assert due_entries(rt) == {}
        rt.planning.flush(rt.rules(), due_at)
    assert due_entries(rt) == {}
    assert set(rt.ledger.outcomes("p1", "r1")) == {"first-notice", "second-notice", "final-notice"}


def test_a_client_time_zone_change_re_plans_its_renewals(rt):
    ingest(rt, client_updated(timezone="Europe/Berlin", at="2026-12-01T00:00:00Z"))
    ingest(rt, renewal_updated(start_date="2027-03-15"))
    ingest(rt, client_updated(timezone="America/New_York", at="2026-12-01T01:00:00Z"))
    assert due_entries(rt)[("p1", "r1", "first-notice")] == datetime(2026, 12, 30, 14, 0, tzinfo=UTC)


def test_partner_owner_change_moves_reminders_to_the_partners_time_zone(rt):
    ingest(rt, partner_updated(timezone="Asia/Tokyo", default_owner="hubspot"))
    ingest(rt, client_updated(timezone="Europe/Berlin"))
    ingest(rt, renewal_updated(start_date="2027-03-15"))
    ingest(rt, owner_changed(owner="partner", at="2026-12-01T10:00:00Z"))
    assert due_entries(rt)[("p1", "r1", "first-notice")] == datetime(2026, 12, 30, 0, 0, tzinfo=UTC)


def test_ending_services_empties_the_plan_of_every_renewal_of_the_client(rt):
    ingest(rt, client_updated())
    ingest(rt, renewal_updated(renewal_id="r1"))
    ingest(rt, renewal_updated(renewal_id="r2"))
    ingest(rt, services_ended(at="2026-12-02T00:00:00Z"))
    assert due_entries(rt) == {}


def test_removal_empties_the_plan_and_a_newer_update_brings_it_back(rt):
    ingest(rt, renewal_updated(at="2026-12-01T00:00:00Z"))
    ingest(rt, renewal_removed(at="2026-12-02T00:00:00Z"))
    assert due_entries(rt) == {}
    ingest(rt, renewal_updated(at="2026-12-03T00:00:00Z"))
    assert [key[2] for key in due_entries(rt)] == ["first-notice"]


def test_a_status_other_than_pending_plans_nothing(rt):
    ingest(rt, renewal_updated(status="confirmed"))
    assert due_entries(rt) == {}


def test_a_late_renewal_catches_up_the_latest_missed_reminder_and_records_the_others_skipped(rt):
    # Deadline 2026-12-10: first (11-10) and second (12-03)... at NOW (12-01) only the first is missed.
    ingest(rt, client_updated(timezone="UTC"))
    ingest(rt, renewal_updated(start_date="2027-01-24"))
    due = due_entries(rt)
    assert due[("p1", "r1", "first-notice")] == NOW
    rt2 = make_runtime(datetime(2026, 12, 8, tzinfo=UTC))
    ingest(rt2, partner_updated())
    ingest(rt2, client_updated(timezone="UTC"))
    ingest(rt2, renewal_updated(start_date="2027-01-24"))
    assert due_entries(rt2)[("p1", "r1", "second-notice")] == datetime(2026, 12, 8, tzinfo=UTC)
    skipped = rt2.ledger.outcome("p1", "r1", "first-notice")
    assert skipped is not None and (skipped.kind, skipped.reason) == ("skipped", "missed")


def test_a_final_reminder_is_never_planned_again_even_when_the_start_date_moves(rt):
    ingest(rt, renewal_updated(start_date="2027-03-15", at="2026-12-01T00:00:00Z"))
    rt.ledger.finish("p1", "r1", "first-notice", Outcome("sent", NOW))
    ingest(rt, renewal_updated(start_date="2027-06-15", at="2026-12-02T00:00:00Z"))
    assert ("p1", "r1", "first-notice") not in due_entries(rt)
    assert ("p1", "r1", "second-notice") in due_entries(rt)


def test_a_claimed_reminder_is_not_put_back_by_a_re_plan(rt):
    ingest(rt, renewal_updated(start_date="2027-01-24", at="2026-12-01T00:00:00Z"))  # first notice due now
    claimed = rt.due_index.claim(NOW, lease_ms=60_000, limit=10)
    assert [c.reminder_id for c in claimed] == ["first-notice"]
    ingest(rt, client_updated(at="2026-12-01T01:00:00Z"))
    assert ("p1", "r1", "first-notice") not in due_entries(rt)
    # While the first is in flight, the plan's next reminder holds the renewal's place in the index.
    assert list(due_entries(rt)) == [("p1", "r1", "second-notice")]


def test_a_rule_change_re_plans_every_renewal(rt, tmp_path):
    ingest(rt, renewal_updated(renewal_id="a", partner_id="p1"))
    ingest(rt, renewal_updated(renewal_id="b", partner_id="p2"))
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "deadline_days_before_start: 45\nreminders:\n"
        '  - {id: only, anchor: deadline, offset_days: -2, send_time: "10:00", template: final-notice}\n',
        encoding="utf-8",
    )
    from worker.config.rulefile import load_rules

    assert rt.planning.replan_all(load_rules(rules), NOW) == 2
    assert {key[2] for key in due_entries(rt)} == {"only"}


# -- properties over any sequence of events ---------------------------------------------------

CLIENT_IDS = st.sampled_from(["c1", "c2"])
TIMEZONES = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Pacific/Auckland"])
START_DATES = st.dates(min_value=date(2026, 12, 1), max_value=date(2027, 6, 1))


@st.composite
def event_sequences(draw):
    steps = []
    for i in range(draw(st.integers(min_value=1, max_value=14))):
        at = (datetime(2026, 11, 1, tzinfo=UTC) + timedelta(hours=draw(st.integers(0, 24 * 150)))).isoformat()
        kind = draw(st.sampled_from(["partner", "client", "owner", "ended", "renewal", "removed", "advance"]))
        cid = draw(CLIENT_IDS)
        rid = draw(st.sampled_from(["r1", "r2", "r3"]))
        eid = f"e{i}"
        if kind == "partner":
            raw = partner_updated(
                at=at,
                event_id=eid,
                timezone=draw(TIMEZONES),
                default_owner=draw(st.sampled_from(["hubspot", "partner"])),
            )
        elif kind == "client":
            raw = client_updated(at=at, event_id=eid, client_id=cid, timezone=draw(TIMEZONES))
        elif kind == "owner":
            raw = owner_changed(
                at=at, event_id=eid, client_id=cid, owner=draw(st.sampled_from(["hubspot", "partner", None]))
            )
        elif kind == "ended":
            raw = services_ended(at=at, event_id=eid, client_id=cid)
        elif kind == "renewal":
            raw = renewal_updated(
                at=at,
                event_id=eid,
                client_id=cid,
                renewal_id=rid,
                start_date=draw(START_DATES).isoformat(),
                status=draw(st.sampled_from(["pending", "pending", "renewed"])),
            )
        elif kind == "removed":
            raw = renewal_removed(at=at, event_id=eid, renewal_id=rid)
        else:
            raw = {"advance_hours": draw(st.integers(1, 24 * 40))}
        steps.append(raw)
    return steps


def _deliver_due(rt: Runtime, clock: VirtualClock, sent: list[tuple[str, str, str]]) -> None:
    """What the scheduler and delivery do, minus SMTP: claim due reminders, re-check, record once."""
    from worker.domain.decision import Send, Skip, decide

    rules = rt.rules()
    for item in rt.due_index.claim(clock.now(), lease_ms=60_000, limit=1000):
        view = rt.planning.view(item.partner_id, item.renewal_id)
        client = view.client
        decision = decide(
            item.reminder_id,
            view.plan(rules, clock.now()),
            renewal=view.renewal.renewal,
            client=client.client if client else None,
            partner=view.partner,
            override=client.override if client else None,
            rules=rules,
            now=clock.now(),
        )
        key = (item.partner_id, item.renewal_id, item.reminder_id)
        if isinstance(decision, Send):
            assert not (client and client.services_ended), "a reminder for an ended client"
            zone = ZoneInfo(view.plan(rules, clock.now()).timezone)
            assert clock.now() < deadline_end(decision.deadline, zone), "a reminder after the deadline"
            sent.append(key)
            rt.ledger.finish(*key, Outcome("sent", clock.now()))
        elif isinstance(decision, Skip):
            rt.ledger.finish(*key, Outcome("skipped", clock.now(), reason=decision.reason))
        else:
            rt.due_index.release(item.member)
            rt.planning.replan(item.partner_id, item.renewal_id, rules, clock.now())
    rt.planning.flush(rules, clock.now())  # as the scheduler's tick: index each renewal's next reminder


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_sequences())
def test_any_event_sequence_sends_each_reminder_at_most_once_never_late_never_to_ended_clients(steps):
    clock = VirtualClock(datetime(2026, 11, 1, tzinfo=UTC))
    rt = build_runtime(load_settings(redis_url=None), clock=clock, redis_client=fakeredis.FakeRedis())
    sent: list[tuple[str, str, str]] = []
    ingest(rt, partner_updated(at="2026-10-01T00:00:00Z", event_id="p0"))
    for raw in steps:
        if "advance_hours" in raw:
            target = clock.now() + timedelta(hours=raw["advance_hours"])
            while (upcoming := rt.due_index.next_due()) is not None and upcoming <= target:
                clock.advance_to(upcoming)
                _deliver_due(rt, clock, sent)
            clock.advance_to(target)
            continue
        clock.advance_to(datetime.fromisoformat(raw["occurred_at"]))
        _deliver_due(rt, clock, sent)
        ingest(rt, raw)
        _deliver_due(rt, clock, sent)
        for pid, rid, rem in due_entries(rt):
            state = rt.store.renewal_state(pid, rid)
            assert state.renewal is not None and not state.removed
            assert not rt.store.client_state(pid, state.renewal.client_id).services_ended
            assert rt.ledger.outcome(pid, rid, rem) is None, "a final reminder is planned again"
    assert len(sent) == len(set(sent)), "a reminder was sent twice"


def test_applied_events_mark_what_to_re_plan_and_flush_plans_it_in_batches(rt):
    for i in range(1200):
        rt.store.apply(parse_event(renewal_updated(renewal_id=f"r{i}")), now=NOW)
    assert rt.redis.zcard(rt.keys.dirty()) == 1200
    assert rt.planning.flush(rt.rules(), NOW) == 1200
    assert rt.redis.zcard(rt.keys.dirty()) == 0
    assert len(due_entries(rt)) == 1200  # each renewal's next reminder


def test_a_client_change_marks_every_renewal_of_the_client_through_one_mark(rt):
    for rid in ("r1", "r2"):
        rt.store.apply(parse_event(renewal_updated(renewal_id=rid)), now=NOW)
    rt.planning.flush(rt.rules(), NOW)
    rt.store.apply(parse_event(services_ended(at="2026-12-02T00:00:00Z")), now=NOW)
    assert rt.redis.zcard(rt.keys.dirty()) == 1
    assert rt.planning.flush(rt.rules(), NOW) == 2
    assert due_entries(rt) == {}


def test_a_renewal_marked_itself_and_through_its_partner_counts_once_in_what_flush_planned(rt):
    for rid in ("r1", "r2"):
        rt.store.apply(parse_event(renewal_updated(renewal_id=rid)), now=NOW)
    rt.store.apply(parse_event(partner_updated(at="2026-12-02T00:00:00Z")), now=NOW)
    assert rt.planning.flush(rt.rules(), NOW) == 2


def test_stale_and_duplicate_events_mark_nothing(rt):
    raw = renewal_updated(at="2026-12-02T00:00:00Z")
    rt.store.apply(parse_event(raw), now=NOW)
    rt.planning.flush(rt.rules(), NOW)
    rt.store.apply(parse_event(raw), now=NOW)
    rt.store.apply(parse_event(renewal_updated(at="2026-12-01T00:00:00Z")), now=NOW)
    assert rt.redis.zcard(rt.keys.dirty()) == 0


def test_a_mark_renewed_while_planning_ran_stays_for_the_next_flush(rt, monkeypatch):
    rt.store.apply(parse_event(renewal_updated(at="2026-12-01T00:00:00Z")), now=NOW)
    original = rt.planning._replan_batch

    def replan_then_event_arrives(pairs, rules, now):
        plans = original(pairs, rules, now)
        later = NOW + timedelta(seconds=1)
        rt.store.apply(parse_event(renewal_updated(at="2026-12-02T00:00:00Z", status="confirmed")), now=later)
        return plans

    monkeypatch.setattr(rt.planning, "_replan_batch", replan_then_event_arrives)
    rt.planning.flush(rt.rules(), NOW, limit=1)
    assert rt.redis.zcard(rt.keys.dirty()) == 1
    monkeypatch.setattr(rt.planning, "_replan_batch", original)
    rt.planning.flush(rt.rules(), NOW)
    assert due_entries(rt) == {}


RULES = (
    "deadline_days_before_start: 45\nreminders:\n"
    '  - {{id: {a}, anchor: deadline, offset_days: -20, send_time: "09:00", template: first-notice}}\n'
    '  - {{id: {b}, anchor: deadline, offset_days: -3, send_time: "09:00", template: first-notice}}\n'
)


def test_a_re_plan_under_new_rules_replaces_exactly_the_previous_plan(rt, tmp_path):
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(RULES.format(a="early", b="late"), encoding="utf-8")
    new.write_text(RULES.format(a="late", b="later"), encoding="utf-8")
    for rid in ("r1", "r2"):
        rt.store.apply(parse_event(renewal_updated(renewal_id=rid, start_date="2027-03-15")))
    rt.planning.replan_many("p1", ["r1", "r2"], load_rules(old), NOW)
    rt.planning.replan("p1", "r1", load_rules(new), NOW)
    assert sorted(due_entries(rt)) == [("p1", "r1", "late"), ("p1", "r2", "early")]
    due = due_entries(rt)
    assert due[("p1", "r1", "late")] == due[("p1", "r2", "early")], "the id 'late' moved to the new rule's time"


def test_a_removed_renewal_leaves_no_plan_bookkeeping_behind(rt):
    ingest(rt, renewal_updated(at="2026-12-01T00:00:00Z", start_date="2027-03-15"))
    assert len(due_entries(rt)) == 1
    ingest(rt, renewal_removed(at="2026-12-02T00:00:00Z"))
    assert due_entries(rt) == {}
    record = rt.keys.renewal("p1", "r1")
    assert [key.decode() for key in rt.redis.keys(record + "*")] == [record]  # no set or list per renewal
