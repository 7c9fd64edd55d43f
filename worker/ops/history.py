"""`renewals history`: every outcome, deferral and steering command, newest first, filtered."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Iterable
from datetime import UTC
from itertools import islice
from typing import TYPE_CHECKING, TextIO

from ..state.history import History, HistoryEntry, HistoryFilter
from .args import positive_int, timestamp

if TYPE_CHECKING:
    from ..service.runtime import Runtime

__all__ = ["CSV_COLUMNS", "format_entry", "register", "write_entries"]

CSV_COLUMNS = (
    "id",
    "at",
    "kind",
    "outcome",
    "reason",
    "partner",
    "client",
    "renewal",
    "reminder",
    "to",
    "cc",
    "message_id",
    "reply",
    "attempt",
    "by",
)

# What ``--outcome`` takes: the ledger's outcomes, deferrals, and the steering commands' names.
HISTORY_OUTCOMES = (
    "sent",
    "skipped",
    "suppressed",
    "failed",
    "deferred",
    "retry",
    "cancel",
    "suppressions add",
    "suppressions remove",
    "dead-letters replay",
    "dead-letters purge",
)


def format_entry(entry: HistoryEntry) -> str:
    """One line a entry: when, what, which reminder, then the details that are there."""
    where = "/".join(p for p in (entry.partner, entry.client, entry.renewal, entry.reminder) if p)
    parts = [f"{entry.at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z", f"{entry.outcome:<10}", where or "-"]
    if entry.attempt:
        parts.append(f"attempt {entry.attempt}")
    if entry.reason:
        parts.append(entry.reason)
    if entry.to:
        parts.append("to " + ", ".join(entry.to))
    if entry.cc:
        parts.append("cc " + ", ".join(entry.cc))
    if entry.message_id:
        parts.append(entry.message_id)
    if entry.reply:
        parts.append(f"reply: {entry.reply}")
    if entry.by:
        parts.append(f"by {entry.by}")
    return "  ".join(parts)


def write_entries(entries: Iterable[HistoryEntry], out: TextIO, *, fmt: str) -> int:
    """Write entries as text, JSON Lines or CSV (with a header); returns how many."""
    count = 0
    writer = None
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
    for entry in entries:
        count += 1
        if fmt == "json":
            out.write(json.dumps(entry.as_dict(), ensure_ascii=False) + "\n")
        elif writer is not None:
            row = entry.as_dict()
            writer.writerow([" ".join(v) if isinstance(v, list) else v for v in (row[c] for c in CSV_COLUMNS)])
        else:
            out.write(format_entry(entry) + "\n")
    return count


def _cmd_history(args: argparse.Namespace, runtime: Callable[[], Runtime]) -> int:
    rt = runtime()
    history = History(rt.redis, rt.keys, days=rt.settings.history_days)
    query = HistoryFilter(
        partner=args.partner or "",
        client=args.client or "",
        renewal=args.renewal or "",
        outcome=args.outcome or "",
        since=args.since,
    )
    fmt = "json" if args.json else "csv" if args.csv else "text"
    count = write_entries(islice(history.entries(query), args.limit), sys.stdout, fmt=fmt)
    if count == 0 and fmt == "text":
        print("no history entries match", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction, runtime: Callable[[], Runtime]) -> None:  # type: ignore[type-arg]
    """Add `renewals history` to the command's subparsers; ``runtime`` gives the inspection runtime."""
    p = sub.add_parser(
        "history",
        help="every outcome, deferral and steering command, newest first",
        description="Every final outcome, deferral (SMTP 4xx, lost connection, lease expiry) and steering "
        "command, newest first, kept HISTORY_DAYS days.",
    )
    p.add_argument("--partner", help="only this partner id")
    p.add_argument("--client", help="only this client id")
    p.add_argument("--renewal", help="only this renewal id")
    p.add_argument(
        "--outcome",
        choices=HISTORY_OUTCOMES,
        metavar="KIND",
        help="only this outcome: sent, skipped, suppressed, failed, deferred, or a steering command "
        "(retry, cancel, 'suppressions add', 'suppressions remove', 'dead-letters replay', 'dead-letters purge')",
    )
    p.add_argument(
        "--since", type=timestamp, help="only entries at or after this ISO 8601 date or time (UTC if no offset)"
    )
    p.add_argument("--limit", type=positive_int, default=50, help="at most this many entries")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object a line")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header line")
    p.set_defaults(handler=lambda args: _cmd_history(args, runtime))
