"""Small builders of valid events, so each test states only what it is about."""

from __future__ import annotations

import itertools
from typing import Any

_ids = itertools.count(1)


def person(name: str, email: str) -> dict[str, str]:
    return {"name": name, "email": email}


def event(
    type_: str,
    data: dict[str, Any],
    *,
    partner_id: str = "p1",
    at: str = "2026-11-01T09:00:00+00:00",
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "event_id": event_id or f"evt-{next(_ids)}",
        "type": type_,
        "occurred_at": at,
        "partner_id": partner_id,
        "data": data,
    }


def partner_updated(**over: Any) -> dict[str, Any]:
    data = {
        "name": "Northwind Digital",
        "default_owner": "hubspot",
        "notify_user": person("Anna Reed", "anna@northwind.agency"),
        "locale": "en",
        "timezone": "Europe/London",
    }
    return _with(data, over, "partner.updated")


def client_updated(**over: Any) -> dict[str, Any]:
    data = {
        "client_id": "c1",
        "domain": "acme.com",
        "name": "Acme",
        "locale": "en",
        "timezone": "America/New_York",
        "contacts": {
            "primary": person("Jane Doe", "jane@acme.com"),
            "billing": person("Bill Pay", "billing@acme.com"),
            "decision_maker": person("Bob Stone", "bob@acme.com"),
        },
    }
    return _with(data, over, "client.updated")


def owner_changed(**over: Any) -> dict[str, Any]:
    data = {"client_id": "c1", "owner": "partner", "notify_user": person("Jonas Berg", "jonas@northwind.agency")}
    return _with(data, over, "client.owner_changed")


def services_ended(**over: Any) -> dict[str, Any]:
    return _with({"client_id": "c1"}, over, "client.services_ended")


def renewal_updated(**over: Any) -> dict[str, Any]:
    data = {
        "renewal_id": "r1",
        "client_id": "c1",
        "start_date": "2027-03-15",
        "products": [{"name": "Marketing Hub", "current_mrr": "800.00", "renewal_mrr": "900.00"}],
        "currency": "EUR",
        "current_mrr": "800.00",
        "renewal_mrr": "900.00",
        "status": "pending",
        "renewal_manager": person("Olivia Grant", "olivia@platform.example"),
    }
    return _with(data, over, "renewal.updated")


def renewal_removed(**over: Any) -> dict[str, Any]:
    return _with({"renewal_id": "r1"}, over, "renewal.removed")


_ENVELOPE = ("partner_id", "at", "event_id")


def _with(data: dict[str, Any], over: dict[str, Any], type_: str) -> dict[str, Any]:
    envelope = {k: over.pop(k) for k in _ENVELOPE if k in over}
    data.update(over)
    return event(type_, data, **envelope)
