"""`renewals requiring-action`: the digest's table for a person (aligned text) or a spreadsheet (CSV, JSON)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from ..domain.digest import DigestRow, currency_totals, digest_recipients, requiring_action, rows_for
from ..domain.errors import RenewalsError
from ..domain.rules import RuleSet
from ..service.digests import partner_timezone, read_partner
from ..state.digests import DigestState

__all__ = ["COLUMNS", "OutputFormat", "format_rows", "partner_rows"]

OutputFormat = Literal["table", "csv", "json"]
COLUMNS: tuple[str, ...] = (
    "client_domain", "client_name", "client_id", "renewal_id", "owner", "products", "deadline", "days_left",
    "currency", "current_mrr", "renewal_mrr", "mrr_change", "reminders_sent",
)  # fmt: skip


def partner_rows(
    digests: DigestState, partner_id: str, rules: RuleSet, now: datetime, *, user: str | None = None
) -> tuple[date, list[DigestRow]]:
    """The partner's local date and its renewals requiring action, or those of one user's digest."""
    today = now.astimezone(partner_timezone(digests.store.partner(partner_id))).date()
    state = read_partner(digests, partner_id, rules, today)
    rows = requiring_action(
        state.facts,
        partner=state.partner,
        deadline_days_before_start=rules.deadline_days_before_start,
        today=today,
        horizon_days=rules.digest.horizon_days,
    )
    if user is None:
        return today, rows
    recipients = {r.person.email.casefold(): r for r in digest_recipients(state.partner, state.overrides)}
    recipient = recipients.get(user.casefold())
    if recipient is None:
        known = ", ".join(sorted(recipients)) or "none"
        raise RenewalsError(f"{user} gets no digest of partner {state.partner_id} (partner users who do: {known})")
    return today, rows_for(recipient, rows)


def _values(row: DigestRow) -> dict[str, str | int]:
    return {
        "client_domain": row.client_domain or "",
        "client_name": row.client_name or "",
        "client_id": row.client_id,
        "renewal_id": row.renewal_id,
        "owner": row.owner,
        "products": "; ".join(row.products),
        "deadline": row.deadline.isoformat(),
        "days_left": row.days_left,
        "currency": row.currency,
        "current_mrr": str(row.current_mrr),
        "renewal_mrr": str(row.renewal_mrr),
        "mrr_change": str(row.mrr_change),
        "reminders_sent": "; ".join(f"{rid} to {who} on {day.isoformat()}" for rid, day, who in row.reminders_sent),
    }


_TABLE = (
    "client_domain",
    "renewal_id",
    "owner",
    "deadline",
    "days_left",
    "currency",
    "current_mrr",
    "renewal_mrr",
    "mrr_change",
)


def format_rows(rows: Sequence[DigestRow], output: OutputFormat, *, horizon_days: int) -> str:
    """The rows as text: an aligned table with totals per currency, CSV with a header, or a JSON array."""
    values = [_values(row) for row in rows]
    if output == "json":
        return json.dumps(values, indent=2, ensure_ascii=False) + "\n"
    if output == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(values)
        return buffer.getvalue()
    if not rows:
        return f"no renewal requires action in the next {horizon_days} days\n"
    for v in values:
        v["client_domain"] = v["client_domain"] or v["client_id"]  # details not received yet: the id names it
        v["mrr_change"] = f"{Decimal(str(v['mrr_change'])):+}"  # signed, as the totals are
    table = [list(_TABLE)] + [[str(v[c]) for c in _TABLE] for v in values]
    widths = [max(len(line[i]) for line in table) for i in range(len(_TABLE))]
    right = {"days_left", "current_mrr", "renewal_mrr", "mrr_change"}
    lines = []
    for line in table:
        cells = [c.rjust(w) if n in right else c.ljust(w) for c, w, n in zip(line, widths, _TABLE, strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    for total in currency_totals(rows):
        lines.append(
            f"{total.currency}: {total.renewals} renewal(s), current MRR {total.current_mrr}, "
            f"renewal MRR {total.renewal_mrr}, change {total.mrr_change:+}"
        )
    return "\n".join(lines) + "\n"
