"""The digest's reads of the store: models built from trusted fields equal the validated ones; the period marks."""

from __future__ import annotations

import json

import pytest
from factories import client_updated, partner_updated, person, renewal_updated

from worker.domain.events import ClientData, Contacts, Person, Product, RenewalData
from worker.state.digests import DigestState, trusted_client, trusted_renewal
from worker.state.keys import Keys
from worker.state.store import Store


@pytest.mark.parametrize(
    "data",
    [
        renewal_updated()["data"],
        renewal_updated(
            renewal_manager=None,
            status="confirmed",
            products=[
                {"name": "Łódź <b>", "current_mrr": "-1.5", "renewal_mrr": "0"},
                {"name": "B", "current_mrr": "123456789.123456", "renewal_mrr": "2.00"},
            ],
            current_mrr="123456787.623456",
            renewal_mrr="2.00",
        )["data"],
    ],
)
def test_a_renewal_built_from_trusted_fields_equals_the_validated_model(data):
    text = json.dumps(data)
    assert trusted_renewal(json.loads(text)) == RenewalData.model_validate_json(text)


@pytest.mark.parametrize(
    "data",
    [
        client_updated()["data"],
        client_updated(name=None, timezone=None, contacts={"primary": person("Zoë", "zoe@bücher.de")})["data"],
    ],
)
def test_a_client_built_from_trusted_fields_equals_the_validated_model(data):
    validated = ClientData.model_validate_json(json.dumps(data))
    stored = json.loads(validated.model_dump_json())  # as the store writes it: every field present
    assert trusted_client(stored) == validated


@pytest.mark.parametrize("model", [RenewalData, Product, ClientData, Contacts, Person])
def test_the_trusted_builders_know_every_field_of_the_models(model):
    # A field added to a model must be added to trusted_renewal / trusted_client too.
    known = {
        RenewalData: {"renewal_id", "client_id", "start_date", "products", "currency", "current_mrr", "renewal_mrr",
                      "status", "renewal_manager"},
        Product: {"name", "current_mrr", "renewal_mrr"},
        ClientData: {"client_id", "domain", "name", "locale", "timezone", "contacts"},
        Contacts: {"primary", "billing", "decision_maker"},
        Person: {"name", "email"},
    }  # fmt: skip
    assert set(model.model_fields) == known[model]


def test_a_period_is_marked_once_and_a_new_period_marks_again(fake_redis):
    state = DigestState(Store(fake_redis, keys=Keys("t"), event_id_ttl_s=60))
    assert state.claim_periods([("p1", "digest/2026-W50"), ("p2", "digest/2026-W50")]) == [True, True]
    assert state.claim_periods([("p1", "digest/2026-W50"), ("p2", "digest/2026-W51")]) == [False, True]
    assert state.claim_periods([]) == []


def test_partner_time_zones_are_read_without_building_the_models(fake_redis):
    from worker.domain.events import parse_event

    store = Store(fake_redis, keys=Keys("t"), event_id_ttl_s=60)
    store.apply(parse_event(partner_updated(timezone="Asia/Tokyo")))
    store.apply(parse_event(partner_updated(partner_id="p2", timezone="America/Chicago")))
    assert DigestState(store).partner_timezones() == [("p1", "Asia/Tokyo"), ("p2", "America/Chicago")]
