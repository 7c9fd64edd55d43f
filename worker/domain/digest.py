"""The partner digest "Renewals requiring action": who gets one, and its rows and totals (pure, no I/O).

The same functions serve the digest email, ``renewals requiring-action`` and the tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Literal

from .events import ClientData, Owner, OwnerData, PartnerData, Person, RenewalData
from .routing import effective_owner

__all__ = [
    "DIGEST_MAX_ROWS",
    "CurrencyTotal",
    "Digest",
    "DigestRecipient",
    "DigestRow",
    "RenewalFacts",
    "SentReminder",
    "build_digest",
    "currency_totals",
    "digest_recipients",
    "may_require_action",
    "requiring_action",
    "rows_for",
]

# Rows shown in one email: enough for a week's work, small enough for every mail client (some clip
# HTML beyond about 100 kB); the rest are counted ("and N more") and exported by the CLI.
DIGEST_MAX_ROWS = 50
Audience = Literal["client", "partner"]


@dataclass(frozen=True)
class SentReminder:
    """A reminder the ledger records as sent for a renewal, and to which addresses."""

    reminder_id: str
    sent_at: datetime
    to: tuple[str, ...] = ()


@dataclass(frozen=True)
class RenewalFacts:
    """What is known of one renewal of a partner when the digest is made."""

    renewal: RenewalData
    removed: bool
    client: ClientData | None
    override: OwnerData | None
    services_ended: bool
    sent: tuple[SentReminder, ...] = ()


@dataclass(frozen=True)
class DigestRecipient:
    """A partner user and the clients their digest covers (``None``: every client of the partner)."""

    person: Person
    client_ids: frozenset[str] | None


@dataclass(frozen=True)
class DigestRow:
    """One renewal requiring action, as the partner dashboard's table shows it."""

    client_id: str
    client_domain: str | None
    client_name: str | None
    renewal_id: str
    owner: Owner
    products: tuple[str, ...]
    deadline: date
    days_left: int
    currency: str
    current_mrr: Decimal
    renewal_mrr: Decimal
    reminders_sent: tuple[tuple[str, date, Audience], ...] = ()

    @property
    def mrr_change(self) -> Decimal:
        return self.renewal_mrr - self.current_mrr


@dataclass(frozen=True)
class CurrencyTotal:
    currency: str
    renewals: int
    current_mrr: Decimal
    renewal_mrr: Decimal

    @property
    def mrr_change(self) -> Decimal:
        return self.renewal_mrr - self.current_mrr


@dataclass(frozen=True)
class Digest:
    """One partner user's digest: the rows shown, how many more were cut, and totals over them all."""

    recipient: DigestRecipient
    rows: tuple[DigestRow, ...]
    total_count: int
    totals: tuple[CurrencyTotal, ...]
    first_deadline: date | None

    @property
    def hidden_count(self) -> int:
        return self.total_count - len(self.rows)


def digest_recipients(partner: PartnerData | None, overrides: Iterable[OwnerData]) -> tuple[DigestRecipient, ...]:
    """The partner's default notify user (every client), then each user named in a client override (those
    clients), each address once. Client contacts are never among them. ``overrides`` are those of the
    clients still served: a client whose services ended brings nobody in."""
    default = partner.notify_user if partner is not None else None
    named: dict[str, tuple[Person, set[str]]] = {}
    for override in overrides:
        if override.notify_user is None:
            continue
        key = override.notify_user.email.casefold()
        if default is not None and key == default.email.casefold():
            continue
        named.setdefault(key, (override.notify_user, set()))[1].add(override.client_id)
    out = [DigestRecipient(default, None)] if default is not None else []
    out += [DigestRecipient(person, frozenset(ids)) for _, (person, ids) in sorted(named.items())]
    return tuple(out)


def may_require_action(
    status: str, start_date: date, *, removed: bool, today: date, horizon_days: int, deadline_days_before_start: int
) -> bool:
    """What the renewal alone says: pending, not removed, deadline from ``today`` to ``horizon_days`` ahead.

    Takes plain fields so that the store can filter a large partner's renewals before it builds the
    models, and reads the client and ledger of these renewals only.
    """
    if removed or status != "pending":
        return False
    deadline = start_date - timedelta(days=deadline_days_before_start)
    return today <= deadline <= today + timedelta(days=horizon_days)


def _audience(sent: SentReminder, client: ClientData | None) -> Audience:
    """Whether a sent reminder went to the client's contacts or to the partner (the owner may have changed since)."""
    if client is not None:
        contacts = {p.email.casefold() for p in (client.contacts.primary, client.contacts.billing) if p is not None}
        if client.contacts.decision_maker is not None:
            contacts.add(client.contacts.decision_maker.email.casefold())
        if any(address.casefold() in contacts for address in sent.to):
            return "client"
    return "partner"


def requiring_action(
    facts: Iterable[RenewalFacts],
    *,
    partner: PartnerData | None,
    deadline_days_before_start: int,
    today: date,
    horizon_days: int,
) -> list[DigestRow]:
    """The renewals that need a decision: pending, services not ended, not removed, and a deadline from
    ``today`` (the partner's local date) to ``horizon_days`` ahead; sorted by deadline, then client."""
    rows = []
    for fact in facts:
        renewal = fact.renewal
        if fact.services_ended or not may_require_action(
            renewal.status,
            renewal.start_date,
            removed=fact.removed,
            today=today,
            horizon_days=horizon_days,
            deadline_days_before_start=deadline_days_before_start,
        ):
            continue
        deadline = renewal.start_date - timedelta(days=deadline_days_before_start)
        client = fact.client
        sent = tuple(
            (s.reminder_id, s.sent_at.date(), _audience(s, client)) for s in sorted(fact.sent, key=lambda s: s.sent_at)
        )
        rows.append(
            DigestRow(
                client_id=renewal.client_id,
                client_domain=client.domain if client is not None else None,
                client_name=client.name if client is not None else None,
                renewal_id=renewal.renewal_id,
                owner=effective_owner(partner, fact.override),
                products=tuple(p.name for p in renewal.products),
                deadline=deadline,
                days_left=(deadline - today).days,
                currency=renewal.currency,
                current_mrr=renewal.current_mrr,
                renewal_mrr=renewal.renewal_mrr,
                reminders_sent=sent,
            )
        )
    rows.sort(key=lambda r: (r.deadline, r.client_domain or r.client_id, r.renewal_id))
    return rows


def rows_for(recipient: DigestRecipient, rows: Iterable[DigestRow]) -> list[DigestRow]:
    """The rows a recipient's digest covers."""
    if recipient.client_ids is None:
        return list(rows)
    return [row for row in rows if row.client_id in recipient.client_ids]


def currency_totals(rows: Iterable[DigestRow]) -> tuple[CurrencyTotal, ...]:
    """MRR summed per currency (amounts in different currencies are never added up), by currency code."""
    sums: dict[str, tuple[int, Decimal, Decimal]] = {}
    for row in rows:
        count, current, renewal = sums.get(row.currency, (0, Decimal(0), Decimal(0)))
        sums[row.currency] = (count + 1, current + row.current_mrr, renewal + row.renewal_mrr)
    return tuple(CurrencyTotal(code, *sums[code]) for code in sorted(sums))


def build_digest(recipient: DigestRecipient, rows: Sequence[DigestRow], *, max_rows: int = DIGEST_MAX_ROWS) -> Digest:
    """A recipient's digest from their rows (sorted): the first ``max_rows`` shown, totals over all of them."""
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")
    return Digest(
        recipient=recipient,
        rows=tuple(rows[:max_rows]),
        total_count=len(rows),
        totals=currency_totals(rows),
        first_deadline=rows[0].deadline if rows else None,
    )
