"""`renewals demo`: the bundled example events through the embedded default, and who would get what."""

from __future__ import annotations

from pathlib import Path

import dramatiq

from .actors import EVENTS_QUEUE
from .errors import InvalidEvent
from .events import parse_event
from .inspect import format_person
from .routing import route
from .runtime import build_runtime, set_runtime
from .settings import load_settings

__all__ = ["run_demo"]


def run_demo(examples: Path, outbox: Path) -> int:
    settings = load_settings(redis_url=None, smtp_host=None, outbox_dir=outbox)
    rt = build_runtime(settings)
    set_runtime(rt)
    sent = 0
    for path in sorted(examples.glob("*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                parse_event(line)
            except InvalidEvent as exc:
                print(f"{path.name}:{number}: rejected, dead-lettered: {exc}")
            # Bad lines are enqueued too, to show the worker dead-lettering them without stopping.
            rt.actors.ingest.send(line)
            sent += 1
    worker = dramatiq.Worker(rt.broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        rt.broker.join(EVENTS_QUEUE)
        worker.join()
    finally:
        worker.stop()
    print(f"\ningested {sent} event(s); {len(rt.store.dead_letters())} dead-lettered\n")
    roles = settings.hubspot_contact_roles
    for partner_id in rt.store.partner_ids():
        partner = rt.store.partner(partner_id)
        print(f"partner {partner_id} ({partner.name if partner else 'unknown'})")
        for client_id in rt.store.client_ids(partner_id):
            state = rt.store.client_state(partner_id, client_id)
            domain = state.client.domain if state.client else "?"
            routing = route(state.client, partner, state.override, contact_roles=roles)
            print(f"  {client_id} {domain}: owner {routing.owner}")
            if state.services_ended:
                print("    services ended: no email")
                continue
            if not routing.sendable:
                print(f"    no email: {routing.no_recipient_reason}")
            print("    To: " + ", ".join(format_person(r.person) for r in routing.to))
            print("    Cc: " + (", ".join(format_person(r.person) for r in routing.cc) or "-"))
    return 0
