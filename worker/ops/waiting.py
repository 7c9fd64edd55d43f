"""`renewals waiting`: renewals not planned because their client or partner has not arrived yet."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime

from ..state.waiting import count_waiting_renewals, list_waiting_renewals

__all__ = ["add_waiting_command", "format_waiting"]


def _age(since: datetime, now: datetime) -> str:
    seconds = max(0, int((now - since).total_seconds()))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    return f"{days}d {hours}h" if days else f"{hours}h {rest // 60}m"


def format_waiting(args: argparse.Namespace) -> str:
    """The text or JSON the command prints, from the runtime's Redis."""
    from ..service.runtime import get_runtime

    rt = get_runtime()
    if rt.settings.embedded:
        print("note: REDIS_URL is not set, so this looks at an empty in-process store", file=sys.stderr)
    now = rt.clock.now()
    counts = count_waiting_renewals(rt.redis, rt.keys)
    listed = list_waiting_renewals(rt.redis, rt.keys, limit=args.list)
    if args.json:
        data = {
            "waiting": {
                c.waits_for: {
                    "count": c.count,
                    "oldest": None
                    if c.oldest is None
                    else {
                        "partner_id": c.oldest.partner_id,
                        "renewal_id": c.oldest.renewal_id,
                        "since": c.oldest.since.isoformat(),
                    },
                }
                for c in counts
            },
            "renewals": [
                {"partner_id": r.partner_id, "renewal_id": r.renewal_id, "waits_for": r.waits_for,
                 "since": r.since.isoformat()}
                for r in listed
            ],
        }  # fmt: skip
        return json.dumps(data, indent=2)
    lines = []
    for c in counts:
        line = f"waiting for their {c.waits_for}: {c.count}"
        if c.oldest is not None:
            line += (
                f" (oldest: {c.oldest.partner_id}/{c.oldest.renewal_id}, since"
                f" {c.oldest.since.isoformat(timespec='seconds')}, {_age(c.oldest.since, now)})"
            )
        lines.append(line)
    for r in listed:
        since = r.since.isoformat(timespec="seconds")
        lines.append(f"  {r.partner_id}/{r.renewal_id}  waits for its {r.waits_for} since {since}")
    return "\n".join(lines)


def _cmd_waiting(args: argparse.Namespace) -> int:
    print(format_waiting(args))
    return 0


def add_waiting_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "waiting", help="renewals not planned yet because their client or partner has not arrived, with the oldest"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--list", type=int, default=20, metavar="N", help="also list the N oldest of each kind (default 20)")
    p.set_defaults(handler=_cmd_waiting)
