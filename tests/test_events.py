"""The event contract: every field is validated, and every rejection names the field."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from email_validator import EmailNotValidError, validate_email
from factories import (
    client_updated,
    owner_changed,
    partner_updated,
    person,
    renewal_removed,
    renewal_updated,
    services_ended,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from worker.domain.errors import InvalidEvent
from worker.domain.events import (
    ClientUpdated,
    PartnerUpdated,
    RenewalUpdated,
    _normalized_email,
    event_json_schema,
    parse_event,
)

ROOT = Path(__file__).resolve().parent.parent


def fields_of(exc: pytest.ExceptionInfo[InvalidEvent]) -> list[str]:
    return [field for field, _ in exc.value.errors]


@pytest.mark.parametrize(
    "make", [partner_updated, client_updated, owner_changed, services_ended, renewal_updated, renewal_removed]
)
def test_every_event_type_parses_from_dict_and_json(make):
    raw = make()
    assert parse_event(raw).event_id == raw["event_id"]
    assert parse_event(json.dumps(raw)).event_id == raw["event_id"]


def test_defaults_fill_the_optional_partner_fields():
    raw = partner_updated()
    for key in ("default_owner", "notify_user", "locale", "timezone"):
        del raw["data"][key]
    event = parse_event(raw)
    assert isinstance(event, PartnerUpdated)
    assert (event.data.default_owner, event.data.notify_user, event.data.locale, event.data.timezone) == (
        "hubspot",
        None,
        "en",
        "UTC",
    )


def test_renewal_status_defaults_to_pending_and_money_is_exact_decimal():
    raw = renewal_updated()
    del raw["data"]["status"]
    del raw["data"]["renewal_manager"]
    event = parse_event(raw)
    assert isinstance(event, RenewalUpdated)
    assert event.data.status == "pending"
    assert event.data.current_mrr == Decimal("800.00")
    assert event.data.renewal_manager is None


def test_client_contacts_may_each_be_left_out():
    event = parse_event(client_updated(contacts={}))
    assert isinstance(event, ClientUpdated)
    assert event.data.contacts.primary is None


def test_email_addresses_are_normalised_and_idn_domains_accepted():
    event = parse_event(client_updated(domain="Bücher.DE", contacts={"primary": person("Jürgen", "j@Bücher.de")}))
    assert isinstance(event, ClientUpdated)
    assert event.data.domain == "bücher.de"
    assert event.data.contacts.primary is not None
    assert event.data.contacts.primary.email == "j@bücher.de"


def _email_validator_says(address: str) -> str | None:
    try:
        return str(validate_email(address, check_deliverability=False, allow_smtputf8=True).normalized)
    except EmailNotValidError:
        return None


def _ours(address: str) -> str | None:
    try:
        return _normalized_email(address)
    except ValueError:
        return None


_ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-."
_label = st.one_of(
    st.text("abcxyz0189-", min_size=0, max_size=70),
    st.text("abcxyzABCXYZ0189-", min_size=0, max_size=70),
    st.sampled_from(["xn--bcher-kva", "xn--zz", "ab--cd", "arpa", "localhost", "test", "invalid", "123", "é"]),
)


@settings(max_examples=400, deadline=None)
@given(
    local=st.one_of(st.text(_ATEXT, min_size=0, max_size=70), st.sampled_from(["Info", "POSTMASTER", "sales", "Jane"])),
    labels=st.lists(_label, min_size=1, max_size=5),
)
@example(local="jane", labels=["ACME", "com"])
@example(local="jane", labels=["xn--bcher-kva", "de"])
@example(local="Info", labels=["acme", "com"])
@example(local="jane", labels=["mail", "localhost"])
@example(local="jane", labels=["a" * 63, "b" * 64])
@example(local="jane", labels=["acme", "c0m"])
@example(local="jane", labels=["acme", "co1"])
@example(local="jane", labels=["-acme", "com"])
@example(local="jane", labels=["acme-", "com"])
@example(local="jane", labels=["a" * 63] * 3 + ["com"])
@example(local="x" * 64, labels=["a" * 63] * 2 + ["a" * 60, "com"])
def test_the_shortcut_for_plain_addresses_agrees_with_email_validator(local, labels):
    address = f"{local}@{'.'.join(labels)}"
    assert _ours(address) == _email_validator_says(address)


BAD_FIELDS = [
    # (event builder, mutation, field named)
    (partner_updated, lambda e: e.pop("event_id"), "event_id"),
    (partner_updated, lambda e: e.update(event_id=""), "event_id"),
    (partner_updated, lambda e: e.update(event_id="a\nb"), "event_id"),
    (partner_updated, lambda e: e.update(type="partner.deleted"), "type"),
    (partner_updated, lambda e: e.pop("type"), "type"),
    (partner_updated, lambda e: e.update(occurred_at="2026-12-01T09:00:00"), "occurred_at"),
    (partner_updated, lambda e: e.update(occurred_at="yesterday"), "occurred_at"),
    (partner_updated, lambda e: e.update(partner_id="p\x001"), "partner_id"),
    (partner_updated, lambda e: e.update(partner_id=7), "partner_id"),
    (partner_updated, lambda e: e.update(surprise=True), "surprise"),
    (partner_updated, lambda e: e.pop("data"), "data"),
    (partner_updated, lambda e: e["data"].pop("name"), "data.name"),
    (partner_updated, lambda e: e["data"].update(name="Evil\r\nBcc: x@y.z"), "data.name"),
    (partner_updated, lambda e: e["data"].update(default_owner="client"), "data.default_owner"),
    (partner_updated, lambda e: e["data"].update(notify_user={"name": "A", "email": "nope"}), "data.notify_user.email"),
    (partner_updated, lambda e: e["data"].update(notify_user={"name": "A"}), "data.notify_user.email"),
    (partner_updated, lambda e: e["data"]["notify_user"].update(phone="1"), "data.notify_user.phone"),
    (partner_updated, lambda e: e["data"].update(locale="English"), "data.locale"),
    (partner_updated, lambda e: e["data"].update(timezone="Mars/Olympus"), "data.timezone"),
    (partner_updated, lambda e: e["data"].update(extra=1), "data.extra"),
    (client_updated, lambda e: e["data"].pop("client_id"), "data.client_id"),
    (client_updated, lambda e: e["data"].update(client_id="c\r1"), "data.client_id"),
    (client_updated, lambda e: e["data"].update(domain="not a domain"), "data.domain"),
    (client_updated, lambda e: e["data"].update(domain="acme"), "data.domain"),
    (client_updated, lambda e: e["data"].pop("locale"), "data.locale"),
    (client_updated, lambda e: e["data"].update(timezone="Europe/Atlantis"), "data.timezone"),
    (client_updated, lambda e: e["data"].pop("contacts"), "data.contacts"),
    (client_updated, lambda e: e["data"]["contacts"].update(cfo=None), "data.contacts.cfo"),
    (
        client_updated,
        lambda e: e["data"]["contacts"]["billing"].update(email="a@@b.com"),
        "data.contacts.billing.email",
    ),
    (client_updated, lambda e: e["data"]["contacts"]["primary"].update(name="X\nY"), "data.contacts.primary.name"),
    (owner_changed, lambda e: e["data"].update(owner="nobody"), "data.owner"),
    (owner_changed, lambda e: e["data"].pop("owner"), "data.owner"),
    (services_ended, lambda e: e["data"].update(reason="x"), "data.reason"),
    (renewal_updated, lambda e: e["data"].update(start_date="2027-02-30"), "data.start_date"),
    (renewal_updated, lambda e: e["data"].update(start_date="15/03/2027"), "data.start_date"),
    (renewal_updated, lambda e: e["data"].update(start_date="0001-01-10"), "data.start_date"),
    (renewal_updated, lambda e: e["data"].update(products=[]), "data.products"),
    (renewal_updated, lambda e: e["data"]["products"][0].pop("renewal_mrr"), "data.products.0.renewal_mrr"),
    (renewal_updated, lambda e: e["data"].update(currency="EURO"), "data.currency"),
    (renewal_updated, lambda e: e["data"].update(currency="XYZ"), "data.currency"),
    (renewal_updated, lambda e: e["data"].update(current_mrr=800.5), "data.current_mrr"),
    (renewal_updated, lambda e: e["data"].update(renewal_mrr="12,50"), "data.renewal_mrr"),
    (renewal_updated, lambda e: e["data"].update(status="lost"), "data.status"),
    (
        renewal_updated,
        lambda e: e["data"].update(renewal_manager={"name": "O", "email": "o@"}),
        "data.renewal_manager.email",
    ),
    (renewal_removed, lambda e: e["data"].pop("renewal_id"), "data.renewal_id"),
]


@pytest.mark.parametrize(("make", "mutate", "field"), BAD_FIELDS)
def test_a_bad_field_is_rejected_with_its_name(make, mutate, field):
    raw = make()
    mutate(raw)
    with pytest.raises(InvalidEvent) as exc:
        parse_event(raw)
    assert field in fields_of(exc), exc.value.errors


def test_every_problem_of_an_event_is_reported_at_once():
    raw = renewal_updated(currency="XYZ", status="lost")
    raw["occurred_at"] = "soon"
    with pytest.raises(InvalidEvent) as exc:
        parse_event(raw)
    assert {"occurred_at", "data.currency", "data.status"} <= set(fields_of(exc))


@pytest.mark.parametrize("raw", ["", "not json", "[1, 2]", '"text"', "{"])
def test_text_that_is_not_a_json_object_is_rejected(raw):
    with pytest.raises(InvalidEvent):
        parse_event(raw)


def test_the_committed_json_schema_matches_the_models():
    committed = json.loads((ROOT / "docs" / "event-schema.json").read_text(encoding="utf-8"))
    assert committed == json.loads(json.dumps(event_json_schema())), "run: renewals schema -o docs/event-schema.json"


def test_the_json_schema_names_every_event_type():
    text = json.dumps(event_json_schema())
    for type_ in ("partner.updated", "client.owner_changed", "client.services_ended", "renewal.removed"):
        assert type_ in text
