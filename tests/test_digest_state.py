"""The digest's reads and marks in the store: period marks taken once, time zones read without the models."""

from __future__ import annotations

from factories import partner_updated

from worker.domain.events import parse_event
from worker.state.digests import DigestState
from worker.state.keys import Keys
from worker.state.store import Store


def test_a_period_is_marked_once_and_a_new_period_marks_again(fake_redis):
    state = DigestState(Store(fake_redis, keys=Keys("t"), event_id_ttl_s=60))
    assert state.claim_periods([("p1", "digest/2026-W50"), ("p2", "digest/2026-W50")]) == [True, True]
    assert state.claim_periods([("p1", "digest/2026-W50"), ("p2", "digest/2026-W51")]) == [False, True]
    assert state.claim_periods([]) == []


def test_partner_time_zones_are_read_for_every_partner(fake_redis):
    store = Store(fake_redis, keys=Keys("t"), event_id_ttl_s=60)
    store.apply(parse_event(partner_updated(timezone="Asia/Tokyo")))
    store.apply(parse_event(partner_updated(partner_id="p2", timezone="America/Chicago")))
    assert DigestState(store).partner_timezones() == [("p1", "Asia/Tokyo"), ("p2", "America/Chicago")]
