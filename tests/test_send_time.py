"""What goes out matches the state when its SMTP transaction starts, not when its batch was read."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from factories import client_updated, owner_changed, partner_updated, person, renewal_updated, services_ended
from test_delivery_integration import FIRST_DUE, fire_due, ingest, running_pipeline, wait_for

from worker.domain.events import parse_event
from worker.service.clock import VirtualClock
from worker.service.runtime import Runtime

pytestmark = pytest.mark.integration

# Between the pre-send read and MAIL FROM there is only the rendering of that one message.
RENDER_GRACE_S = 0.05


@pytest.fixture
def slow_pipeline(smtp_server, redis_url) -> Iterator[tuple[Runtime, VirtualClock, object]]:
    with running_pipeline(smtp_server, redis_url, smtp_pool_size=2, delivery_batch_size=20) as running:
        yield running


def seed_clients(rt: Runtime, renewals_per_client: dict[str, int]) -> None:
    ingest(rt, partner_updated(notify_user=person("Anna Reed", "anna@agency.example")))
    for client_id, count in renewals_per_client.items():
        contacts = {"primary": person(f"Primary {client_id}", f"primary@{client_id}.example")}
        ingest(rt, client_updated(client_id=client_id, domain=f"{client_id}.example", contacts=contacts))
        for n in range(count):
            ingest(
                rt,
                renewal_updated(
                    renewal_id=f"{client_id}-r{n}",
                    client_id=client_id,
                    start_date="2027-03-15",
                    at="2026-12-01T10:00:00Z",
                ),
            )


def outcomes(rt: Runtime, client_id: str, count: int) -> list:
    return [rt.ledger.outcome("p1", f"{client_id}-r{n}", "first-notice") for n in range(count)]


def test_ending_services_mid_batch_stops_every_message_to_that_client_not_yet_started(slow_pipeline):
    rt, clock, server = slow_pipeline
    seed_clients(rt, {"c1": 20, "c2": 10})
    server.slow_down(0.1)
    assert fire_due(rt, clock, FIRST_DUE) == 30
    wait_for(lambda: sum("primary@c1.example" in m.rcpt_tos for m in server.messages) >= 3)
    rt.store.apply(parse_event(services_ended(client_id="c1", at="2026-12-29T00:00:00Z")))
    ended_at = time.time()
    wait_for(lambda: None not in outcomes(rt, "c1", 20) + outcomes(rt, "c2", 10), timeout_s=30)

    to_c1 = [m for m in server.messages if "primary@c1.example" in m.rcpt_tos]
    late = [m.mail_at - ended_at for m in to_c1 if m.mail_at > ended_at + RENDER_GRACE_S]
    assert late == [], f"messages to c1 started {late} s after its services ended"
    kinds = [(o.kind, o.reason) for o in outcomes(rt, "c1", 20)]
    assert kinds.count(("sent", None)) == len(to_c1)
    # The event landed in the middle of the batches: the rest of c1's reminders were skipped for it.
    assert kinds.count(("skipped", "services_ended")) == 20 - len(to_c1) > 0
    assert [o.kind for o in outcomes(rt, "c2", 10)] == ["sent"] * 10


def test_an_owner_change_mid_batch_reroutes_the_messages_not_yet_started(slow_pipeline):
    rt, clock, server = slow_pipeline
    seed_clients(rt, {"c1": 12})
    server.slow_down(0.1)
    assert fire_due(rt, clock, FIRST_DUE) == 12
    wait_for(lambda: len(server.messages) >= 3)
    rt.store.apply(parse_event(owner_changed(client_id="c1", at="2026-12-29T00:00:00Z")))
    changed_at = time.time()
    wait_for(lambda: None not in outcomes(rt, "c1", 12), timeout_s=30)

    later = [m for m in server.messages if m.mail_at > changed_at + RENDER_GRACE_S]
    assert later, "the change should land before the batch ends"
    # Partner-owned from then on: only the partner's point of contact, never the client's contacts.
    assert all(m.rcpt_tos == ("jonas@northwind.agency",) for m in later)
    recorded = [o for o in outcomes(rt, "c1", 12) if o.to == ("jonas@northwind.agency",)]
    assert len(recorded) == sum(m.rcpt_tos == ("jonas@northwind.agency",) for m in server.messages) >= len(later)


def test_a_client_changed_mid_batch_is_still_mailed_each_message_rendered_from_the_state_at_its_start(slow_pipeline):
    # A change that leaves the routing as it was: the send reads the renewal again and goes ahead.
    rt, clock, server = slow_pipeline
    seed_clients(rt, {"c1": 12})
    server.slow_down(0.1)
    assert fire_due(rt, clock, FIRST_DUE) == 12
    wait_for(lambda: len(server.messages) >= 3)
    contacts = {"primary": person("Primary c1", "primary@c1.example")}
    renamed = client_updated(client_id="c1", domain="renamed-c1.example", contacts=contacts)
    rt.store.apply(parse_event({**renamed, "occurred_at": "2026-12-29T00:00:00Z"}))
    renamed_at = time.time()
    wait_for(lambda: None not in outcomes(rt, "c1", 12), timeout_s=30)

    assert [o.kind for o in outcomes(rt, "c1", 12)] == ["sent"] * 12
    later = [m for m in server.messages if m.mail_at > renamed_at + RENDER_GRACE_S]
    assert later, "the change should land before the batch ends"
    assert all(b"renamed-c1.example" in m.content for m in later)
    assert b"renamed-c1.example" not in server.messages[0].content
