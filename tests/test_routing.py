"""Owner and recipients as a table: every owner/override/contact combination."""

from __future__ import annotations

import pytest

from worker.domain.events import ClientData, Contacts, OwnerData, PartnerData, Person
from worker.domain.routing import effective_owner, partner_user, route

ANNA = Person(name="Anna Reed", email="anna@agency.com")
JONAS = Person(name="Jonas Berg", email="jonas@agency.com")
JANE = Person(name="Jane Doe", email="jane@acme.com")
JANE_UPPER = Person(name="Jane D.", email="JANE@acme.com")
BILL = Person(name="Bill Pay", email="billing@acme.com")
BOB = Person(name="Bob Stone", email="bob@acme.com")


def partner(owner: str = "hubspot", user: Person | None = ANNA) -> PartnerData:
    return PartnerData(name="Agency", default_owner=owner, notify_user=user)  # type: ignore[arg-type]


def client(primary: Person | None = JANE, billing: Person | None = BILL, dm: Person | None = BOB) -> ClientData:
    return ClientData(
        client_id="c1",
        domain="acme.com",
        locale="en",
        contacts=Contacts(primary=primary, billing=billing, decision_maker=dm),
    )


def override(owner: str | None, user: Person | None = None) -> OwnerData:
    return OwnerData(client_id="c1", owner=owner, notify_user=user)  # type: ignore[arg-type]


def emails(recipients) -> list[str]:
    return [r.person.email for r in recipients]


OWNER_TABLE = [
    # partner default, override, expected owner
    (None, None, "hubspot"),
    ("hubspot", None, "hubspot"),
    ("partner", None, "partner"),
    ("hubspot", "partner", "partner"),
    ("partner", "hubspot", "hubspot"),
    ("partner", None, "partner"),
    ("hubspot", "clear", "hubspot"),
    ("partner", "clear", "partner"),
    (None, "partner", "partner"),
]


@pytest.mark.parametrize(("default", "over", "expected"), OWNER_TABLE)
def test_override_beats_partner_default_which_beats_hubspot(default, over, expected):
    p = None if default is None else partner(default)
    o = None if over is None else override(None if over == "clear" else over)
    assert effective_owner(p, o) == expected


@pytest.mark.parametrize(
    ("partner_user_", "override_user", "expected"),
    [(ANNA, None, ANNA), (ANNA, JONAS, JONAS), (None, JONAS, JONAS), (None, None, None)],
)
def test_partner_user_is_the_overrides_when_it_names_one(partner_user_, override_user, expected):
    assert partner_user(partner("hubspot", partner_user_), override(None, override_user)) == expected


ROUTE_TABLE = [
    # id, partner default, partner user, override (owner, user), contacts, expected To, expected Cc, reason
    (
        "hubspot all contacts",
        "hubspot",
        ANNA,
        None,
        (JANE, BILL, BOB),
        ["jane@acme.com", "billing@acme.com", "bob@acme.com"],
        ["anna@agency.com"],
        None,
    ),
    (
        "hubspot no partner user",
        "hubspot",
        None,
        None,
        (JANE, BILL, BOB),
        ["jane@acme.com", "billing@acme.com", "bob@acme.com"],
        [],
        None,
    ),
    (
        "hubspot duplicates removed case-insensitively",
        "hubspot",
        ANNA,
        None,
        (JANE, JANE_UPPER, BOB),
        ["jane@acme.com", "bob@acme.com"],
        ["anna@agency.com"],
        None,
    ),
    (
        "hubspot missing contacts skipped",
        "hubspot",
        ANNA,
        None,
        (None, BILL, None),
        ["billing@acme.com"],
        ["anna@agency.com"],
        None,
    ),
    ("hubspot no contacts", "hubspot", ANNA, None, (None, None, None), [], [], "no_recipients"),
    (
        "hubspot override user is the cc",
        "hubspot",
        ANNA,
        ("hubspot", JONAS),
        (JANE, None, None),
        ["jane@acme.com"],
        ["jonas@agency.com"],
        None,
    ),
    (
        "hubspot cc already in to",
        "hubspot",
        JANE,
        None,
        (JANE, BILL, None),
        ["jane@acme.com", "billing@acme.com"],
        [],
        None,
    ),
    (
        "partner default to point of contact only",
        "partner",
        ANNA,
        None,
        (JANE, BILL, BOB),
        ["anna@agency.com"],
        [],
        None,
    ),
    ("partner with no point of contact", "partner", None, None, (JANE, BILL, BOB), [], [], "no_point_of_contact"),
    (
        "override to partner uses override user",
        "hubspot",
        ANNA,
        ("partner", JONAS),
        (JANE, BILL, BOB),
        ["jonas@agency.com"],
        [],
        None,
    ),
    (
        "override to partner without user falls back to partner user",
        "hubspot",
        ANNA,
        ("partner", None),
        (JANE, None, None),
        ["anna@agency.com"],
        [],
        None,
    ),
    (
        "override to hubspot beats partner default",
        "partner",
        ANNA,
        ("hubspot", None),
        (JANE, None, BOB),
        ["jane@acme.com", "bob@acme.com"],
        ["anna@agency.com"],
        None,
    ),
    (
        "cleared override returns to the default",
        "partner",
        ANNA,
        (None, JONAS),
        (JANE, None, None),
        ["jonas@agency.com"],
        [],
        None,
    ),
    (
        "partner owned with no client contacts still reaches the partner",
        "partner",
        ANNA,
        None,
        (None, None, None),
        ["anna@agency.com"],
        [],
        None,
    ),
]


@pytest.mark.parametrize(
    ("default", "user", "over", "contacts", "to", "cc", "reason"),
    [row[1:] for row in ROUTE_TABLE],
    ids=[row[0] for row in ROUTE_TABLE],
)
def test_routing_table(default, user, over, contacts, to, cc, reason):
    o = None if over is None else override(*over)
    result = route(client(*contacts), partner(default, user), o)
    assert emails(result.to) == to
    assert emails(result.cc) == cc
    assert result.no_recipient_reason == reason
    assert result.sendable == bool(to)


def test_partner_owned_renewal_never_emails_client_contacts():
    result = route(client(), partner("partner", ANNA), None)
    client_emails = {JANE.email, BILL.email, BOB.email}
    assert not client_emails & set(emails(result.to) + emails(result.cc))


def test_contact_roles_setting_limits_who_receives_hubspot_mail():
    result = route(client(), partner("hubspot", ANNA), None, contact_roles=("decision_maker",))
    assert emails(result.to) == ["bob@acme.com"]
    assert emails(result.cc) == ["anna@agency.com"]


def test_each_recipient_carries_the_reasons_it_is_there():
    result = route(client(JANE, JANE_UPPER, BOB), partner("hubspot", ANNA), override(None, JONAS))
    assert result.to[0].reasons == ("primary", "billing")
    assert result.cc[0].reasons == ("partner_user (client override)",)
    assert result.owner_source == "partner_default"


def test_unknown_partner_and_client_fall_back_to_hubspot_with_no_recipients():
    result = route(None, None, None)
    assert (result.owner, result.owner_source, result.no_recipient_reason) == (
        "hubspot",
        "built_in_default",
        "no_recipients",
    )
