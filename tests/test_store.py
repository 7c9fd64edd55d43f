"""The store applies each event once, in event-time order, per partner, on fakeredis (fast)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest
import redis
from factories import client_updated, owner_changed, partner_updated, renewal_removed, renewal_updated, services_ended

from worker.domain.events import parse_event
from worker.state.keys import Keys
from worker.state.scripts import LuaScript
from worker.state.store import _APPLY, Store


@pytest.fixture
def store(fake_redis) -> Store:
    return Store(fake_redis, keys=Keys("t"), event_id_ttl_s=60)


def apply(store: Store, raw) -> str:
    return store.apply(parse_event(raw))


def test_a_repeated_event_id_is_ignored(store):
    raw = partner_updated(event_id="same")
    assert apply(store, raw) == "applied"
    assert apply(store, raw) == "duplicate"


def test_a_repeat_of_the_event_a_record_was_last_written_by_stays_a_duplicate_past_the_configured_time(store):
    now = datetime.now(UTC)
    event = parse_event(partner_updated(event_id="e-latest"))
    assert store.apply(event, now=now) == "applied"
    assert store.apply(event, now=now + timedelta(days=365)) == "duplicate"


def test_a_superseded_event_id_is_remembered_for_the_configured_time(store, fake_redis):
    now = datetime.now(UTC)
    first = parse_event(partner_updated(event_id="e-first", at="2026-12-01T00:00:00Z"))
    assert store.apply(first, now=now) == "applied"
    assert apply(store, partner_updated(event_id="e-second", at="2026-12-02T00:00:00Z")) == "applied"
    assert store.apply(first, now=now + timedelta(seconds=59.9)) == "duplicate"
    slices = fake_redis.keys("t:seen:*")
    assert slices and all(50_000 < fake_redis.pttl(key) <= 60_000 * 9 / 8 for key in slices)
    # Forgotten at most an eighth later than configured (one slice of the sets holding the ids);
    # a repeat then is still ignored, as older than the record.
    assert store.apply(first, now=now + timedelta(seconds=60 * 9 / 8 + 0.1)) == "stale"


def test_a_refused_event_id_is_remembered_too(store):
    apply(store, client_updated(at="2026-12-02T00:00:00Z"))
    older = client_updated(at="2026-12-01T00:00:00Z", event_id="e-older")
    assert apply(store, older) == "stale"
    assert apply(store, older) == "duplicate"


def test_an_event_id_reused_for_another_record_is_a_duplicate_while_still_the_first_record_s_latest(store):
    assert apply(store, renewal_updated(event_id="reused", renewal_id="r1")) == "applied"
    assert apply(store, renewal_updated(event_id="reused", renewal_id="r2")) == "duplicate"
    assert apply(store, client_updated(event_id="reused")) == "duplicate"
    assert store.renewal_state("p1", "r2").renewal is None


def test_a_reused_event_id_is_a_duplicate_for_the_whole_window_and_forgotten_after_it(store):
    now = datetime.now(UTC)
    assert store.apply(parse_event(renewal_updated(event_id="reused", renewal_id="r1")), now=now) == "applied"
    other = parse_event(renewal_updated(event_id="reused", renewal_id="r2"))
    assert store.apply(other, now=now + timedelta(seconds=59.9)) == "duplicate"
    assert store.apply(other, now=now + timedelta(seconds=60 * 9 / 8 + 0.1)) == "applied"


@pytest.mark.integration
def test_each_remembered_event_id_costs_about_eight_bytes(real_redis):
    # Digests in intsets: 8 bytes an id (the ids themselves in a hashtable set cost some 90).
    store = Store(real_redis, keys=Keys("m"), event_id_ttl_s=30 * 86_400)
    events = [
        parse_event(renewal_updated(event_id=f"evt-{n:08d}-{'x' * 24}", renewal_id=f"r{n}")) for n in range(20_000)
    ]
    for start in range(0, len(events), 1_000):
        store.apply_many(events[start : start + 1_000])
    keys = real_redis.keys("m:seen:*")
    assert {real_redis.object("encoding", key) for key in keys} == {b"intset"}
    assert sum(real_redis.scard(key) for key in keys) == 20_000
    used = sum(real_redis.memory_usage(key) for key in keys)
    assert used <= 8 * 20_000 + 100 * len(keys), used


def test_an_older_event_is_stale_and_the_newest_state_wins(store):
    apply(store, client_updated(at="2026-12-02T00:00:00Z", domain="new.com"))
    assert apply(store, client_updated(at="2026-12-01T00:00:00Z", domain="old.com")) == "stale"
    state = store.client_state("p1", "c1")
    assert state.client is not None
    assert state.client.domain == "new.com"


def test_events_dated_before_1970_are_ordered_too(store):
    apply(store, client_updated(at="1969-12-31T23:59:59Z", domain="first.com"))
    assert apply(store, client_updated(at="1969-12-31T23:59:58Z", domain="older.com")) == "stale"
    assert apply(store, client_updated(at="1970-01-01T00:00:00Z", domain="newer.com")) == "applied"
    state = store.client_state("p1", "c1")
    assert state.client is not None and state.client.domain == "newer.com"


def test_occurred_at_is_compared_as_an_instant_across_offsets(store):
    apply(store, client_updated(at="2026-12-01T10:00:00+02:00", domain="first.com"))  # 08:00Z
    assert apply(store, client_updated(at="2026-12-01T09:00:00+00:00", domain="second.com")) == "applied"


def test_equal_timestamps_converge_whatever_the_delivery_order(fake_redis):
    a = client_updated(at="2026-12-01T00:00:00Z", event_id="a", domain="a.com")
    b = client_updated(at="2026-12-01T00:00:00Z", event_id="b", domain="b.com")
    results = []
    for order in ((a, b), (b, a)):
        s = Store(fake_redis, keys=Keys(f"o{len(results)}"), event_id_ttl_s=60)
        for raw in order:
            apply(s, raw)
        state = s.client_state("p1", "c1")
        assert state.client is not None
        results.append(state.client.domain)
    assert results[0] == results[1]


def test_client_details_and_owner_override_age_separately(store):
    apply(store, owner_changed(at="2026-12-05T00:00:00Z", owner="partner"))
    assert apply(store, client_updated(at="2026-12-01T00:00:00Z")) == "applied"
    state = store.client_state("p1", "c1")
    assert state.client is not None
    assert state.override is not None
    assert state.override.owner == "partner"


def test_renewal_update_and_removal_share_one_clock(store):
    apply(store, renewal_updated(at="2026-12-01T00:00:00Z"))
    assert apply(store, renewal_removed(at="2026-12-02T00:00:00Z")) == "applied"
    assert store.renewal_state("p1", "r1").removed
    assert apply(store, renewal_updated(at="2026-12-01T12:00:00Z")) == "stale"
    assert store.renewal_state("p1", "r1").removed
    assert apply(store, renewal_updated(at="2026-12-03T00:00:00Z")) == "applied"
    state = store.renewal_state("p1", "r1")
    assert not state.removed
    assert state.renewal is not None


def test_a_removal_arriving_before_its_update_still_wins(store):
    assert apply(store, renewal_removed(at="2026-12-02T00:00:00Z")) == "applied"
    assert apply(store, renewal_updated(at="2026-12-01T00:00:00Z")) == "stale"
    assert store.renewal_state("p1", "r1").removed


def test_services_ended_is_final_whatever_comes_later(store):
    apply(store, services_ended(at="2026-12-05T00:00:00Z"))
    assert apply(store, client_updated(at="2026-12-06T00:00:00Z")) == "applied"
    assert apply(store, services_ended(at="2026-12-07T00:00:00Z")) == "already_ended"
    state = store.client_state("p1", "c1")
    assert state.services_ended
    assert state.client is not None


def test_services_ended_counts_even_when_it_is_older_than_the_client_details(store):
    apply(store, client_updated(at="2026-12-06T00:00:00Z"))
    assert apply(store, services_ended(at="2026-12-01T00:00:00Z")) == "applied"
    assert store.client_state("p1", "c1").services_ended


def test_two_partners_may_use_the_same_client_id(store):
    apply(store, client_updated(partner_id="p1", domain="one.com"))
    apply(store, client_updated(partner_id="p2", domain="two.com"))
    apply(store, services_ended(partner_id="p2"))
    one, two = store.client_state("p1", "c1"), store.client_state("p2", "c1")
    assert one.client is not None and two.client is not None
    assert (one.client.domain, two.client.domain) == ("one.com", "two.com")
    assert (one.services_ended, two.services_ended) == (False, True)


def test_ids_with_colons_cannot_collide_in_keys(store):
    apply(store, client_updated(partner_id="a:b", client_id="c", domain="one.com"))
    apply(store, client_updated(partner_id="a", client_id="b:c", domain="two.com"))
    first = store.client_state("a:b", "c").client
    assert first is not None and first.domain == "one.com"


def test_indexes_list_partners_clients_and_renewals(store):
    apply(store, partner_updated(partner_id="p9"))
    apply(store, client_updated(partner_id="p9", client_id="c2"))
    apply(store, renewal_updated(partner_id="p9", client_id="c2", renewal_id="r7"))
    assert store.partner_ids() == ["p9"]
    assert store.client_ids("p9") == ["c2"]
    assert store.renewal_ids("p9") == ["r7"]
    assert store.renewal_ids("p9", "c2") == ["r7"]


def test_dead_letters_keep_reason_errors_and_raw_body_newest_first(store):
    from datetime import UTC, datetime

    now = datetime(2026, 12, 1, tzinfo=UTC)
    store.add_dead_letter("first", "invalid_event", [("data.x", "bad")], now=now)
    store.add_dead_letter("second", "malformed_message", [], now=now)
    letters = store.dead_letters()
    assert [d.raw for d in letters] == ["second", "first"]
    assert letters[1].errors == [("data.x", "bad")]


def test_dead_letters_are_trimmed_to_the_configured_maximum(fake_redis):
    from datetime import UTC, datetime

    store = Store(fake_redis, keys=Keys("d"), event_id_ttl_s=60, dead_letter_max=3)
    for i in range(5):
        store.add_dead_letter(str(i), "invalid_event", [], now=datetime(2026, 12, 1, tzinfo=UTC))
    assert [d.raw for d in store.dead_letters()] == ["4", "3", "2"]


def test_every_apply_outcome_is_counted(store):
    raw = client_updated(at="2026-12-02T00:00:00Z")
    apply(store, raw)
    apply(store, raw)
    apply(store, client_updated(at="2026-12-01T00:00:00Z"))
    apply(store, services_ended())
    apply(store, services_ended())
    assert store.event_stats() == {"applied": 2, "duplicate": 1, "stale": 1, "already_ended": 1, "dead_lettered": 0}


def test_apply_many_gives_each_event_the_outcome_apply_would(store, fake_redis):
    raws = [
        partner_updated(event_id="p"),
        client_updated(at="2026-12-02T00:00:00Z", domain="new.com", event_id="c-new"),
        client_updated(at="2026-12-01T00:00:00Z", domain="old.com", event_id="c-old"),
        partner_updated(event_id="p"),
        services_ended(event_id="end"),
        services_ended(event_id="end-again"),
    ]
    outcomes = store.apply_many([parse_event(raw) for raw in raws])
    assert outcomes == ["applied", "applied", "stale", "duplicate", "applied", "already_ended"]
    one_by_one = Store(fakeredis.FakeRedis(), keys=Keys("t"), event_id_ttl_s=60)
    assert [apply(one_by_one, raw) for raw in raws] == outcomes
    assert store.client_state("p1", "c1").client.domain == "new.com"
    assert store.apply_many([]) == []


@pytest.mark.integration
def test_apply_many_loads_its_script_on_a_redis_that_never_saw_it(real_redis):
    store = Store(real_redis, keys=Keys("t"), event_id_ttl_s=60)
    # A script of its own (not SCRIPT FLUSH, which would pull the scripts from under others' runs).
    store._apply = LuaScript(real_redis, f"{_APPLY}-- {uuid.uuid4()}\n")
    assert store.apply_many([parse_event(partner_updated()), parse_event(client_updated())]) == ["applied", "applied"]


def test_a_batch_of_dead_letters_keeps_each_one_in_order_and_counts_them(store):
    from datetime import UTC, datetime

    store.add_dead_letters(
        [("raw-1", "invalid_event", [("data.domain", "bad")]), ("raw-2", "invalid_event", [("type", "unknown")])],
        now=datetime(2026, 12, 1, tzinfo=UTC),
    )
    store.add_dead_letters([], now=datetime(2026, 12, 1, tzinfo=UTC))
    assert [(d.raw, d.errors) for d in store.dead_letters()] == [
        ("raw-2", [("type", "unknown")]),
        ("raw-1", [("data.domain", "bad")]),
    ]
    assert store.event_stats()["dead_lettered"] == 2


@pytest.mark.parametrize(
    ("raw", "read"),
    [
        (partner_updated(), lambda s: s.partner("p1")),
        (client_updated(), lambda s: s.client_state("p1", "c1").client),
        (owner_changed(owner="partner"), lambda s: s.client_state("p1", "c1").override),
        (renewal_updated(), lambda s: s.renewal_state("p1", "r1").renewal),
    ],
)
def test_every_record_reads_back_as_applied(store, raw, read):
    assert apply(store, raw) == "applied"
    assert read(store) == parse_event(raw).data


def test_a_removed_renewal_keeps_what_it_was(store):
    raw = renewal_updated(at="2026-12-01T00:00:00Z")
    apply(store, raw)
    apply(store, renewal_removed(at="2026-12-02T00:00:00Z"))
    state = store.renewal_state("p1", "r1")
    assert state.removed and state.renewal == parse_event(raw).data
    assert state.updated_at == datetime(2026, 12, 2, tzinfo=UTC)


def test_a_record_in_another_layout_fails_loudly_rather_than_read_as_absent(store, fake_redis):
    fake_redis.hset(store.keys.renewal("p1", "r1"), mapping={"ts": "1", "eid": "e", "data": "{}", "removed": "0"})
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.renewal_state("p1", "r1")
    fake_redis.set(store.keys.client("p1", "c1"), '{"client_id": "c1"}')
    with pytest.raises(ValueError, match="layout"):
        store.client_state("p1", "c1")


def test_renewal_ids_are_found_by_client_and_by_partner_across_the_index_hashes(store):
    for n in range(300):
        apply(store, client_updated(client_id=f"c{n}"))
        apply(store, renewal_updated(renewal_id=f"r{n}", client_id=f"c{n}"))
    apply(store, renewal_updated(renewal_id="r0", client_id="c1", at="2026-12-02T00:00:00Z"))  # moved client
    apply(store, client_updated(client_id="c-alone"))
    assert store.renewal_ids("p1", "c1") == ["r0", "r1"]  # a superset: r0 moved here from c0
    assert store.renewal_ids("p1", "c0") == ["r0"]
    assert store.renewal_ids("p1", "c-alone") == []
    assert store.renewal_ids("p1") == sorted(f"r{n}" for n in range(300))
    assert store.client_ids("p1") == sorted([f"c{n}" for n in range(300)] + ["c-alone"])
    assert store.renewal_ids("p2") == [] and store.client_ids("p2") == []
