"""Renewals whose partner (or client) has not arrived wait, are counted for ops, and go out once it arrives.

A real dramatiq worker on the real Redis, events through the queue, an SMTP server on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from factories import client_updated, partner_updated, person, renewal_updated
from test_delivery_integration import FIRST_DUE, fire_due, outcome, pipeline, wait_for

from worker import publish_many
from worker.state.waiting import count_waiting_renewals

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
__all__ = ["pipeline"]  # the fixture, shared with the delivery tests


def applied(rt, count: int) -> bool:
    return rt.store.event_stats().get("applied", 0) >= count


def waiting(rt) -> dict[str, int]:
    return {c.waits_for: c.count for c in count_waiting_renewals(rt.redis, rt.keys)}


def cli_waiting(redis_url: str) -> dict:
    env = {**os.environ, "REDIS_URL": redis_url, "KEY_PREFIX": "dl"}
    command = [str(Path(sys.executable).with_name("renewals")), "waiting", "--json"]
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(proc.stdout)


def test_a_renewal_and_client_before_their_partner_wait_and_go_to_the_partner_once_it_arrives(pipeline, redis_url):
    rt, clock, server = pipeline
    # The client and its renewal arrive; their partner, which owns its clients' mail, has not.
    publish_many(
        [
            client_updated(at="2026-12-01T10:00:00Z"),
            renewal_updated(start_date="2027-03-15", at="2026-12-01T10:00:00Z"),
        ],
        runtime=rt,
    )
    wait_for(lambda: applied(rt, 2))
    # The first notice's time passes: nothing goes out, nothing is recorded, the renewal waits.
    assert fire_due(rt, clock, FIRST_DUE + timedelta(hours=1)) == 0
    assert server.messages == [] and outcome(rt) is None
    assert waiting(rt) == {"client": 0, "partner": 1}
    shown = cli_waiting(redis_url)
    assert shown["waiting"]["partner"]["count"] == 1
    assert shown["waiting"]["partner"]["oldest"]["renewal_id"] == "r1"
    assert [(r["renewal_id"], r["waits_for"]) for r in shown["renewals"]] == [("r1", "partner")]

    partner = partner_updated(default_owner="partner", notify_user=person("Anna Reed", "anna@agency.example"))
    publish_many([{**partner, "occurred_at": "2026-12-30T14:30:00Z"}], runtime=rt)
    wait_for(lambda: applied(rt, 3))
    # Planned with the partner's settings and caught up at once: to the partner's point of contact only.
    assert fire_due(rt, clock, FIRST_DUE + timedelta(hours=1, seconds=1)) == 1
    wait_for(lambda: outcome(rt) is not None)
    assert outcome(rt).kind == "sent"
    (received,) = server.messages
    assert list(received.rcpt_tos) == ["anna@agency.example"]
    msg = message_from_bytes(received.content, policy=policy.default)
    assert msg["Cc"] is None
    assert waiting(rt) == {"client": 0, "partner": 0}


def test_a_renewal_before_its_client_is_counted_as_waiting_for_its_client(pipeline):
    rt, clock, _ = pipeline
    publish_many([partner_updated(at="2026-12-01T09:00:00Z"), renewal_updated(at="2026-12-01T10:00:00Z")], runtime=rt)
    wait_for(lambda: applied(rt, 2))
    fire_due(rt, clock, datetime(2026, 12, 2, tzinfo=UTC))
    (for_client, for_partner) = count_waiting_renewals(rt.redis, rt.keys)
    assert (for_client.waits_for, for_client.count, for_partner.count) == ("client", 1, 0)
    assert for_client.oldest is not None and for_client.oldest.renewal_id == "r1"
    assert for_client.oldest.since == datetime(2026, 12, 2, tzinfo=UTC)
    publish_many([client_updated(at="2026-12-01T11:00:00Z")], runtime=rt)
    wait_for(lambda: applied(rt, 3))
    fire_due(rt, clock, datetime(2026, 12, 2, 0, 0, 1, tzinfo=UTC))
    assert waiting(rt) == {"client": 0, "partner": 0}
