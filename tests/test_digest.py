"""The partner digest's pure decisions: who gets one, which renewals require action, sorting, totals, the cut."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from factories import client_updated, owner_changed, partner_updated, person, renewal_updated

from worker.domain.digest import (
    DigestRecipient,
    RenewalFacts,
    SentReminder,
    build_digest,
    currency_totals,
    digest_recipients,
    requiring_action,
    rows_for,
)
from worker.domain.events import ClientData, OwnerData, PartnerData, Person, RenewalData

TODAY = date(2026, 12, 7)
ANNA = person("Anna Reed", "anna@northwind.agency")
JONAS = person("Jonas Berg", "jonas@northwind.agency")


def partner(**over) -> PartnerData:
    return PartnerData.model_validate(partner_updated(**over)["data"])


def client(client_id: str = "c1", **over) -> ClientData:
    return ClientData.model_validate(client_updated(client_id=client_id, domain=f"{client_id}.example", **over)["data"])


def override(client_id: str = "c1", **over) -> OwnerData:
    return OwnerData.model_validate(owner_changed(client_id=client_id, **over)["data"])


def renewal(renewal_id: str = "r1", client_id: str = "c1", *, deadline: date, **over) -> RenewalData:
    start = deadline + timedelta(days=45)
    data = renewal_updated(renewal_id=renewal_id, client_id=client_id, start_date=start.isoformat(), **over)["data"]
    return RenewalData.model_validate(data, strict=False)


def fact(
    renewal_id: str = "r1",
    client_id: str = "c1",
    *,
    deadline: date = TODAY + timedelta(days=10),
    removed: bool = False,
    ended: bool = False,
    owner: OwnerData | None = None,
    sent: tuple[SentReminder, ...] = (),
    **renewal_over,
) -> RenewalFacts:
    return RenewalFacts(
        renewal=renewal(renewal_id, client_id, deadline=deadline, **renewal_over),
        removed=removed,
        client=client(client_id),
        override=owner,
        services_ended=ended,
        sent=sent,
    )


def served(facts):
    """The overrides of the clients still served, as the store hands them over."""
    return [f.override for f in facts if f.override is not None and not f.services_ended]


def rows(facts, *, the_partner: PartnerData | None = None, horizon_days: int = 60):
    return requiring_action(
        facts,
        partner=the_partner or partner(),
        deadline_days_before_start=45,
        today=TODAY,
        horizon_days=horizon_days,
    )


@pytest.mark.parametrize(
    ("case", "kwargs", "included"),
    [
        ("pending, deadline in ten days", {}, True),
        ("deadline today", {"deadline": TODAY}, True),
        ("deadline on the horizon's last day", {"deadline": TODAY + timedelta(days=60)}, True),
        ("deadline a day past the horizon", {"deadline": TODAY + timedelta(days=61)}, False),
        ("deadline yesterday", {"deadline": TODAY - timedelta(days=1)}, False),
        ("renewed (decided)", {"status": "renewed"}, False),
        ("confirmed (decided)", {"status": "confirmed"}, False),
        ("cancellation requested (decided)", {"status": "cancellation_requested"}, False),
        ("removed", {"removed": True}, False),
        ("services ended", {"ended": True}, False),
    ],
)
def test_a_renewal_requires_action_only_when_pending_open_and_within_the_horizon(case, kwargs, included):
    assert [r.renewal_id for r in rows([fact(**kwargs)])] == (["r1"] if included else []), case


def test_rows_are_sorted_by_deadline_then_client_domain_and_say_days_left():
    found = rows(
        [
            fact("r3", "c3", deadline=TODAY + timedelta(days=30)),
            fact("r2", "c2", deadline=TODAY + timedelta(days=5)),
            fact("r1", "c1", deadline=TODAY + timedelta(days=5)),
        ]
    )
    assert [(r.client_domain, r.days_left) for r in found] == [("c1.example", 5), ("c2.example", 5), ("c3.example", 30)]


def test_each_row_names_the_effective_owner_products_and_the_mrr_change():
    (default_row, overridden_row) = rows([fact("r1", "c1"), fact("r2", "c2", owner=override("c2", owner="partner"))])
    assert default_row.owner == "hubspot"
    assert overridden_row.owner == "partner"
    assert default_row.products == ("Marketing Hub",)
    assert (default_row.current_mrr, default_row.renewal_mrr, default_row.mrr_change) == (
        Decimal("800.00"),
        Decimal("900.00"),
        Decimal("100.00"),
    )
    (partner_default,) = rows([fact()], the_partner=partner(default_owner="partner"))
    assert partner_default.owner == "partner"


def test_reminders_already_sent_say_whether_the_client_or_the_partner_got_them():
    sent = (
        SentReminder("second-notice", datetime(2026, 12, 3, 9, tzinfo=UTC), ("anna@northwind.agency",)),
        SentReminder("first-notice", datetime(2026, 11, 1, 9, tzinfo=UTC), ("jane@acme.com", "bob@acme.com")),
    )
    (row,) = rows([fact(sent=sent)])
    assert row.reminders_sent == (
        ("first-notice", date(2026, 11, 1), "client"),
        ("second-notice", date(2026, 12, 3), "partner"),
    )


def test_the_default_notify_user_gets_everything_and_an_override_user_only_their_clients():
    facts = [
        fact("r1", "c1"),
        fact("r2", "c2", owner=override("c2", owner="partner", notify_user=JONAS)),
        fact("r3", "c3", owner=override("c3", owner="hubspot", notify_user=JONAS)),
        fact("r4", "c4", owner=override("c4", owner="partner", notify_user=None)),
    ]
    recipients = digest_recipients(partner(), served(facts))
    assert recipients == (
        DigestRecipient(Person(**ANNA), None),
        DigestRecipient(Person(**JONAS), frozenset({"c2", "c3"})),
    )
    found = rows(facts)
    assert [r.client_id for r in rows_for(recipients[0], found)] == ["c1", "c2", "c3", "c4"]
    assert [r.client_id for r in rows_for(recipients[1], found)] == ["c2", "c3"]


def test_client_contacts_never_get_a_digest_and_each_partner_user_gets_one():
    facts = [
        fact("r1", "c1", owner=override("c1", owner="hubspot", notify_user=person("ANNA", "Anna@Northwind.Agency"))),
        fact("r2", "c2", owner=override("c2", notify_user=JONAS)),
        fact("r3", "c3", owner=override("c3", notify_user=person("Jonas B", "JONAS@northwind.agency"))),
    ]
    recipients = digest_recipients(partner(), served(facts))
    addresses = [r.person.email.casefold() for r in recipients]
    assert addresses == ["anna@northwind.agency", "jonas@northwind.agency"]
    contacts = {"jane@acme.com", "billing@acme.com", "bob@acme.com"}
    assert not contacts & set(addresses)
    assert recipients[1].client_ids == frozenset({"c2", "c3"})


def test_a_partner_without_a_notify_user_sends_only_to_override_users():
    facts = [fact("r1", "c1"), fact("r2", "c2", owner=override("c2", notify_user=JONAS))]
    recipients = digest_recipients(partner(notify_user=None), served(facts))
    assert recipients == (DigestRecipient(Person(**JONAS), frozenset({"c2"})),)


def test_totals_are_per_currency_never_mixed():
    found = rows(
        [
            fact("r1", "c1"),
            fact("r2", "c2", currency="USD", current_mrr="100.00", renewal_mrr="90.00"),
            fact("r3", "c3"),
        ]
    )
    totals = {t.currency: (t.renewals, t.current_mrr, t.renewal_mrr, t.mrr_change) for t in currency_totals(found)}
    assert totals == {
        "EUR": (2, Decimal("1600.00"), Decimal("1800.00"), Decimal("200.00")),
        "USD": (1, Decimal("100.00"), Decimal("90.00"), Decimal("-10.00")),
    }


def test_a_long_list_is_cut_with_a_count_of_the_rest_and_totals_over_all_of_it():
    facts = [fact(f"r{i:02d}", f"c{i:02d}", deadline=TODAY + timedelta(days=i % 60)) for i in range(70)]
    found = rows(facts)
    digest = build_digest(DigestRecipient(Person(**ANNA), None), found, max_rows=50)
    assert len(digest.rows) == 50
    assert digest.hidden_count == 20
    assert digest.total_count == 70
    assert digest.totals[0].renewals == 70
    assert digest.first_deadline == TODAY
    assert list(digest.rows) == found[:50]


def test_an_empty_digest_has_no_first_deadline():
    digest = build_digest(DigestRecipient(Person(**ANNA), None), [])
    assert (digest.total_count, digest.hidden_count, digest.first_deadline, digest.totals) == (0, 0, None, ())
