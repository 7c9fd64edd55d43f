"""The benchmark's population: partners, one client per renewal, renewals with three products.

Every client is platform-owned (``hubspot``) with three distinct contacts, and every partner has a
notify user, so each reminder goes to three To addresses and one Cc.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

__all__ = ["Population", "bench_rules_yaml"]


def _person(name: str, email: str) -> dict[str, str]:
    return {"name": name, "email": email}


@dataclass(frozen=True)
class Population:
    """``renewals`` renewals spread round-robin over ``partners`` partners; ids are stable per index."""

    renewals: int
    partners: int = 20
    start_date: date = date(2027, 6, 1)
    tag: str = "bench"
    partner_prefix: str = "bp"

    def partner_id(self, j: int) -> str:
        return f"{self.partner_prefix}{j}"

    def renewal_ref(self, i: int) -> tuple[str, str]:
        """(partner id, renewal id) of renewal ``i``."""
        return self.partner_id(i % self.partners), f"r{i}"

    def refs(self) -> list[tuple[str, str]]:
        return [self.renewal_ref(i) for i in range(self.renewals)]

    def partner_event(self, j: int, *, at: datetime) -> dict[str, Any]:
        return self._event(
            f"{self.tag}-p{j}",
            "partner.updated",
            self.partner_id(j),
            at,
            {
                "name": f"Partner {j}",
                "default_owner": "hubspot",
                "notify_user": _person(f"Partner User {j}", f"owner{j}@partner{j}.example.com"),
                "locale": "en",
                "timezone": "UTC",
            },
        )

    def client_event(self, i: int, *, at: datetime) -> dict[str, Any]:
        domain = f"client{i}.example.com"
        return self._event(
            f"{self.tag}-c{i}",
            "client.updated",
            self.renewal_ref(i)[0],
            at,
            {
                "client_id": f"c{i}",
                "domain": domain,
                "name": f"Client {i} GmbH",
                "locale": "en",
                "timezone": "UTC",
                "contacts": {
                    "primary": _person(f"Primary {i}", f"primary@{domain}"),
                    "billing": _person(f"Billing {i}", f"billing@{domain}"),
                    "decision_maker": _person(f"Decider {i}", f"decider@{domain}"),
                },
            },
        )

    def renewal_event(self, i: int, *, at: datetime) -> dict[str, Any]:
        pid, rid = self.renewal_ref(i)
        products = [
            {"name": "Marketing Hub Professional", "current_mrr": "800.00", "renewal_mrr": "890.00"},
            {"name": "Sales Hub Starter", "current_mrr": "150.00", "renewal_mrr": "165.00"},
            {"name": "Service Hub Enterprise", "current_mrr": "1200.00", "renewal_mrr": "1320.00"},
        ]
        return self._event(
            f"{self.tag}-r{i}",
            "renewal.updated",
            pid,
            at,
            {
                "renewal_id": rid,
                "client_id": f"c{i}",
                "start_date": self.start_date.isoformat(),
                "products": products,
                "currency": "EUR",
                "current_mrr": "2150.00",
                "renewal_mrr": "2375.00",
                "status": "pending",
                "renewal_manager": _person("Olivia Grant", "olivia@platform.example.com"),
            },
        )

    def events(self, *, at: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Partners first, then each client followed by its renewal."""
        at = at or datetime.now(UTC)
        for j in range(min(self.partners, self.renewals)):
            yield self.partner_event(j, at=at)
        for i in range(self.renewals):
            yield self.client_event(i, at=at)
            yield self.renewal_event(i, at=at)

    def event_count(self) -> int:
        return min(self.partners, self.renewals) + 2 * self.renewals

    def _event(self, event_id: str, type_: str, partner_id: str, at: datetime, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "event_id": event_id,
            "type": type_,
            "occurred_at": at.isoformat(),
            "partner_id": partner_id,
            "data": data,
        }


def bench_rules_yaml(*, offset_days: int, send_time: str, deadline_days: int = 45) -> str:
    """A rule file with one reminder, due ``offset_days`` from the start date at ``send_time`` UTC."""
    return (
        "# Written by the benchmark: one reminder, so every renewal falls due at one chosen instant.\n"
        f"deadline_days_before_start: {deadline_days}\n"
        "reminders:\n"
        "  - id: bench-notice\n"
        "    anchor: start\n"
        f"    offset_days: {offset_days}\n"
        f'    send_time: "{send_time}"\n'
        "    template: first-notice\n"
        "    statuses: [pending]\n"
    )
