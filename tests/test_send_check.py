"""The send-time check's script on a real Redis: the batch's view holds until anything it was made from changes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from factories import client_updated, owner_changed, partner_updated, renewal_updated, services_ended

from worker.config.settings import load_settings
from worker.domain.events import parse_event
from worker.service.clock import VirtualClock
from worker.service.runtime import Runtime, build_runtime
from worker.state.ledger import Outcome
from worker.state.planning import RenewalView
from worker.state.rule_change import RulesRecord
from worker.state.send_check import SendCheck, SendCheckResult
from worker.state.suppressions import Suppression

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
EMAILS = ["Anna@Acme.com", "bob@acme.com"]


@pytest.fixture
def rt(redis_url: str) -> Runtime:
    runtime = build_runtime(load_settings(redis_url=redis_url), clock=VirtualClock(NOW))
    for n, raw in enumerate(
        [
            partner_updated(at="2026-01-01T00:00:00Z"),
            client_updated(at="2026-01-01T00:00:00Z"),
            renewal_updated(at="2026-01-01T00:00:00Z"),
        ]
    ):
        runtime.store.apply(parse_event({**raw, "event_id": f"fixture-{n}"}), now=NOW)
    RulesRecord(runtime.redis, runtime.keys).record(runtime.rules(), NOW)
    return runtime


def check(rt: Runtime, view: RenewalView, reminder_id: str = "first-notice") -> SendCheckResult:
    send_check = SendCheck(rt.redis, rt.keys)
    send_check.script.load()
    with rt.redis.pipeline(transaction=False) as pipe:
        send_check.queue(pipe, view, reminder_id, EMAILS)
        (reply,) = pipe.execute()
    return SendCheck.parse(reply)


def apply(rt: Runtime, raw: dict, n: int) -> None:
    at = (NOW - timedelta(minutes=n)).isoformat()  # newer than the fixture's, not in the future
    assert rt.store.apply(parse_event({**raw, "occurred_at": at, "event_id": f"change-{n}"}), now=NOW) == "applied"


def test_an_unchanged_renewal_keeps_the_batch_view_and_reads_the_suppressions(rt):
    view = rt.planning.view("p1", "r1")
    assert len(view.version) == 5  # renewal, partner, client, owner, ended
    assert check(rt, view) == SendCheckResult("same", [False, False])
    rt.ledger.suppressions.add(Suppression("anna@acme.com", NOW, "refused"))
    assert check(rt, view) == SendCheckResult("same", [True, False])  # addresses are compared casefolded


@pytest.mark.parametrize(
    "event",
    [
        renewal_updated(start_date="2027-03-16"),
        partner_updated(default_owner="partner"),
        client_updated(domain="acme.org"),
        owner_changed(),
        services_ended(),
    ],
    ids=["renewal", "partner", "client", "owner", "services ended"],
)
def test_any_record_the_view_was_made_from_changed_makes_the_send_read_it_again(rt, event):
    view = rt.planning.view("p1", "r1")
    rt.ledger.suppressions.add(Suppression("bob@acme.com", NOW, "refused"))
    apply(rt, event, 1)
    assert check(rt, view) == SendCheckResult("changed", [False, True])  # the flags come with any answer


def test_the_reminder_itself_final_stops_the_send(rt):
    view = rt.planning.view("p1", "r1")
    rt.ledger.finish("p1", "r1", "first-notice", Outcome("sent", NOW))
    assert check(rt, view).status == "final"


def test_another_reminder_of_the_renewal_recorded_or_removed_is_a_change(rt):
    view = rt.planning.view("p1", "r1")
    rt.ledger.finish("p1", "r1", "second-notice", Outcome("skipped", NOW, reason="test"))
    assert check(rt, view).status == "changed"
    recorded = rt.planning.view("p1", "r1")
    assert check(rt, recorded).status == "same"
    rt.redis.hdel(rt.keys.ledger("p1", "r1"), "second-notice")  # an operator's retry takes a failure back
    rt.ledger.finish("p1", "r1", "final-notice", Outcome("skipped", NOW, reason="test"))
    assert check(rt, recorded).status == "changed"  # as many entries as before, not the same ones


def test_new_rules_in_force_are_a_change(rt):
    view = rt.planning.view("p1", "r1")
    rules = rt.rules()
    edited = dataclasses.replace(rules, reminders=rules.reminders[:1])
    assert edited.fingerprint != rules.fingerprint
    RulesRecord(rt.redis, rt.keys).record(edited, NOW + timedelta(minutes=1))
    assert check(rt, view).status == "changed"
