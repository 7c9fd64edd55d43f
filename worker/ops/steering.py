"""Steering commands: suppressions, dead letters (list, replay, purge), retry and cancel of a reminder.

Each command that changes something is recorded in the history with what, when and by whom
(`--by`, else the OS user).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..config.settings import load_settings
from ..domain.errors import ConfigError, InvalidEvent
from ..state.history import History, HistoryEntry
from ..state.steering import cancel_reminder, dead_letter_rows, remove_dead_letters, retry_failed
from ..state.suppressions import Suppression
from .args import positive_int, timestamp
from .rules_view import rules_for_views

if TYPE_CHECKING:
    from ..service.runtime import Runtime

__all__ = ["register"]

RuntimeGetter = Callable[[], "Runtime"]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "unknown"


def _steering_runtime(runtime: RuntimeGetter) -> Runtime:
    """Steering changes a deployment's Redis: without REDIS_URL there is nothing to change.

    Checked on the settings before the runtime is built, so the refusal is the only thing said.
    """
    if load_settings().embedded:
        raise ConfigError(
            "REDIS_URL is not set: there is no running service to steer (the embedded default lives only "
            "inside `renewals demo` and `renewals simulate`)"
        )
    return runtime()


def _record(rt: Runtime, command: str, by: str, **fields: Any) -> None:
    entry = HistoryEntry("steering", rt.clock.now(), command, by=by, **fields)
    History(rt.redis, rt.keys, days=rt.settings.history_days).append(entry)


# -- suppressions ------------------------------------------------------------------------------


def _cmd_suppressions_list(args: argparse.Namespace, runtime: RuntimeGetter) -> int:
    rt = _steering_runtime(runtime)
    items = rt.ledger.suppressions.all()
    if args.json:
        for s in items:
            print(json.dumps({"address": s.address, **json.loads(s.to_json())}, ensure_ascii=False))
        return 0
    if not items:
        print("no suppressed addresses")
    for s in items:
        when = f"{s.at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z" if s.at else "(unknown time)"
        line = f"{s.address}  since {when}  {s.reason}"
        line += f"  reply: {s.reply}" if s.reply else ""
        line += f"  (sending {s.source})" if s.source else ""
        line += f"  by {s.by}" if s.by else ""
        print(line)
    return 0


def _cmd_suppressions_add(args: argparse.Namespace, runtime: RuntimeGetter) -> int:
    rt = _steering_runtime(runtime)
    address = args.address.strip()
    if "@" not in address:
        print(f"error: not an email address: {address!r}", file=sys.stderr)
        return 1
    added = rt.ledger.suppressions.add(Suppression(address, rt.clock.now(), args.reason, by=args.by))
    if not added:
        print(f"{address.casefold()} was already suppressed (its first reason is kept)")
        return 0
    _record(rt, "suppressions add", args.by, reason=f"{address.casefold()}: {args.reason}")
    print(f"suppressed {address.casefold()}: no reminder goes to it until `renewals suppressions remove`")
    return 0


def _cmd_suppressions_remove(args: argparse.Namespace, runtime: RuntimeGetter) -> int:
    rt = _steering_runtime(runtime)
    removed = rt.ledger.suppressions.remove(args.address.strip())
    if removed is None:
        print(f"error: {args.address.strip().casefold()} is not suppressed", file=sys.stderr)
        return 1
    _record(rt, "suppressions remove", args.by, reason=f"{removed.address} (was: {removed.reason})")
    print(f"{removed.address} receives later reminders again (it was suppressed: {removed.reason})")
    return 0


# -- dead letters ------------------------------------------------------------------------------


def _cmd_dead_letters(args: argparse.Namespace, runtime: RuntimeGetter) -> int:
    rt = runtime()
    rows = dead_letter_rows(rt.redis, rt.keys, None if args.all else args.limit)
    if args.json:
        for row in rows:
            print(json.dumps({"id": row.id, **row.letter.__dict__}))
        return 0
    if not rows:
        print("no dead letters")
    for row in rows:
        print(f"{row.id}  {row.letter.received_at}  {row.letter.reason}")
        for field, message in row.letter.errors:
            print(f"    {field or '(event)'}: {message}")
        print(f"    raw: {row.letter.raw[:500]}")
    return 0


def _cmd_dead_letters_replay(args: argparse.Namespace, runtime: RuntimeGetter) -> int:
    from ..service.actors import screen_event
    from ..service.publish import send_batches

    if bool(args.ids) == bool(args.all):
        print("error: name dead letters by id, or give --all (not both)", file=sys.stderr)
        return 2
    rt = _steering_runtime(runtime)
    rows = dead_letter_rows(rt.redis, rt.keys)
    if not args.all:
        wanted = set(args.ids)
        rows = [r for r in rows if r.id in wanted]
        missing = wanted - {r.id for r in rows}
        for dead_id in sorted(missing):
            print(f"{dead_id}: no such dead letter", file=sys.stderr)
    now = rt.clock.now()
    valid, texts, messages = [], [], []
    will = "would be enqueued" if args.dry_run else "enqueued"
    for row in reversed(rows):  # oldest first: events go back on the queue in the order they came
        if row.letter.reason in _QUEUE_ENTRY_REASONS:
            message, why = _queue_message(rt, row)
            if message is None:
                print(f"{row.id}: {why}, kept")
                continue
            valid.append(row)
            messages.append(message)
            print(f"{row.id}: {message.actor_name} is known now, {will} on {message.queue_name}")
            continue
        try:
            event = screen_event(row.letter.raw, now=now, max_future_s=rt.settings.event_max_future_s)
        except InvalidEvent as exc:
            print(f"{row.id}: still invalid, kept: {exc}")
            continue
        valid.append(row)
        texts.append(row.letter.raw)
        print(f"{row.id}: valid ({event.type} {event.event_id}), {will}")
    if args.dry_run:
        print(f"dry run: {len(valid)} of {len(rows)} would be enqueued; nothing changed")
        return 1 if _not_all_replayed(args, rows, valid) else 0
    send_batches(rt, texts)
    for message in messages:
        rt.broker.enqueue(message)
    remove_dead_letters(rt.redis, rt.keys, valid)
    if valid:
        ids = ", ".join(r.id for r in valid)
        _record(rt, "dead-letters replay", args.by, reason=f"{len(valid)} enqueued: {ids}")
    print(f"enqueued {len(valid)} of {len(rows)}; the rest stay in the dead letters")
    return 1 if _not_all_replayed(args, rows, valid) else 0


# Dead letters that are whole queue entries rather than events (see ``service.broker``).
_QUEUE_ENTRY_REASONS = ("unknown_actor", "undecodable_message", "malformed_message")


def _queue_message(rt: Runtime, row: Any) -> tuple[Any, str]:
    """The dramatiq message a kept queue entry can be enqueued as again, or None and why not.

    An entry for an actor this version now has (a producer was deployed before its worker) goes
    back as it was; an entry that is no message, or a message whose arguments are no events,
    cannot: purge it once seen.
    """
    from dramatiq import Message

    from ..service.broker import read_entry

    if row.letter.reason != "unknown_actor":
        return None, f"a queue entry that cannot be run ({row.letter.reason}); nothing to replay, purge it"
    try:
        fields = read_entry(row.letter.raw.encode("utf-8"))
    except ValueError as exc:
        return None, f"not a message: {exc}"
    if fields["actor_name"] not in rt.broker.actors:
        return None, f"still no actor {fields['actor_name']!r} in this version"
    fields["args"] = tuple(fields["args"])
    return Message(**fields), ""


def _not_all_replayed(args: argparse.Namespace, rows: list[Any], valid: list[Any]) -> bool:
    """Exit 1 when anything named was not replayed (unknown id, or still invalid)."""
    return len(valid) < len(rows) or (not args.all and len(rows) < len(set(args.ids)))


def _cmd_dead_letters_purge(args: argparse.Namespace, runtime: RuntimeGetter) -> int:
    rt = _steering_runtime(runtime)
    old = [r for r in dead_letter_rows(rt.redis, rt.keys) if datetime.fromisoformat(r.letter.received_at) < args.before]
    if args.dry_run:
        print(f"dry run: {len(old)} dead letter(s) received before {args.before.isoformat()} would be removed")
        return 0
    removed = remove_dead_letters(rt.redis, rt.keys, old)
    if removed:
        _record(rt, "dead-letters purge", args.by, reason=f"{removed} received before {args.before.isoformat()}")
    print(f"removed {removed} dead letter(s) received before {args.before.isoformat()}")
    return 0


# -- one reminder ------------------------------------------------------------------------------


def _cmd_retry(args: argparse.Namespace, runtime: RuntimeGetter) -> int:
    rt = _steering_runtime(runtime)
    ref = (args.partner_id, args.renewal_id, args.reminder_id)
    status, previous = retry_failed(rt.redis, rt.keys, *ref, now=rt.clock.now())
    where = "/".join(ref)
    if status == "no_outcome":
        print(f"error: {where} has no recorded outcome: nothing to retry (see `renewals plan`)", file=sys.stderr)
        return 1
    if status == "not_failed":
        kind = previous.kind if previous else "?"
        print(f"error: {where} is recorded {kind}, not failed: only a failed reminder goes again", file=sys.stderr)
        return 1
    reason = f"was failed ({previous.reason if previous else '?'}): {previous.reply if previous else ''}".strip()
    _record(rt, "retry", args.by, partner=ref[0], renewal=ref[1], reminder=ref[2], reason=reason)
    print(
        f"{where}: failed outcome cleared; the scheduler plans it again and the delivery checks it again "
        "(ended services, deadline, status) before sending. Follow it with `renewals plan` or `renewals history`."
    )
    return 0


def _cmd_cancel(args: argparse.Namespace, runtime: RuntimeGetter) -> int:
    rt = _steering_runtime(runtime)
    ref = (args.partner_id, args.renewal_id, args.reminder_id)
    where = "/".join(ref)
    if rt.store.renewal_state(args.partner_id, args.renewal_id).updated_at is None:
        print(f"error: no events received for renewal {args.renewal_id} of partner {args.partner_id}", file=sys.stderr)
        return 1
    rule_ids = [rule.id for rule in rules_for_views(rt).reminders]
    if args.reminder_id not in rule_ids:
        # A typo would record a reminder that does not exist and leave the real one planned.
        print(
            f"error: no reminder {args.reminder_id!r} in the rules in force (reminders: {', '.join(rule_ids)})",
            file=sys.stderr,
        )
        return 1
    status, outcome = cancel_reminder(rt.ledger, *ref, reason=args.reason, by=args.by, now=rt.clock.now())
    if status == "in_flight":
        print(f"error: {where} is being sent right now; try again in a moment", file=sys.stderr)
        return 1
    if status == "already_final":
        kind = outcome.kind if outcome else "?"
        print(f"error: {where} is already final ({kind}): nothing to cancel", file=sys.stderr)
        return 1
    _record(rt, "cancel", args.by, partner=ref[0], renewal=ref[1], reminder=ref[2], reason=args.reason)
    print(f"{where}: recorded skipped (cancelled by an operator: {args.reason}); it will not be sent")
    return 0


# -- the parsers -------------------------------------------------------------------------------


def _by(p: argparse.ArgumentParser) -> None:
    p.add_argument("--by", default=_user(), help="who did it, for the history")


def register(sub: argparse._SubParsersAction, runtime: RuntimeGetter) -> None:  # type: ignore[type-arg]
    """Add the steering commands (and `dead-letters`) to the command's subparsers."""

    def bind(p: argparse.ArgumentParser, handler: Callable[[argparse.Namespace, RuntimeGetter], int]) -> None:
        p.set_defaults(handler=lambda args: handler(args, runtime))

    sup = sub.add_parser(
        "suppressions",
        help="addresses no reminder goes to: list, add, remove",
        description="Addresses no reminder goes to, with when and why each was suppressed.",
    )
    sup_sub = sup.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sup_sub.add_parser("list", help="every suppressed address, newest first, with why")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    bind(p, _cmd_suppressions_list)
    p = sup_sub.add_parser("add", help="suppress an address")
    p.add_argument("address", help="the email address")
    p.add_argument("--reason", required=True, help="why, for whoever reads the list later")
    _by(p)
    bind(p, _cmd_suppressions_add)
    p = sup_sub.add_parser("remove", help="lift a suppression: later reminders reach the address again")
    p.add_argument("address", help="the email address")
    _by(p)
    bind(p, _cmd_suppressions_remove)

    dl = sub.add_parser(
        "dead-letters",
        help="rejected events, newest first; replay or purge them",
        description="Rejected events with the reason and raw body, newest first. Without an action: list them.",
    )
    dl.add_argument("--limit", type=positive_int, default=50, help="list at most this many")
    dl.add_argument("--all", action="store_true", help="list every one")
    dl.add_argument("--json", action="store_true", help="one JSON object a line")
    bind(dl, _cmd_dead_letters)
    dl_sub = dl.add_subparsers(dest="action", required=False, metavar="ACTION")
    p = dl_sub.add_parser(
        "replay", help="validate kept events again and enqueue the valid ones (removed from the list)"
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="dead letter ids, as listed")
    p.add_argument("--all", action="store_true", help="every dead letter")
    p.add_argument("--dry-run", action="store_true", help="say what would be enqueued, change nothing")
    _by(p)
    bind(p, _cmd_dead_letters_replay)
    p = dl_sub.add_parser("purge", help="remove dead letters received before a date")
    p.add_argument("--before", required=True, type=timestamp, help="ISO 8601 date or time (UTC if no offset)")
    p.add_argument("--dry-run", action="store_true", help="say how many would go, change nothing")
    _by(p)
    bind(p, _cmd_dead_letters_purge)

    p = sub.add_parser(
        "retry", help="send a failed reminder again, through every send-time check (a sent one never goes again)"
    )
    p.add_argument("partner_id", help="the partner's id")
    p.add_argument("renewal_id", help="the renewal's id")
    p.add_argument("reminder_id", help="the reminder's id in the rules (see `renewals plan`)")
    _by(p)
    bind(p, _cmd_retry)

    p = sub.add_parser("cancel", help="record a planned reminder skipped (cancelled by an operator)")
    p.add_argument("partner_id", help="the partner's id")
    p.add_argument("renewal_id", help="the renewal's id")
    p.add_argument("reminder_id", help="the reminder's id in the rules (see `renewals plan`)")
    p.add_argument("--reason", required=True, help="why, recorded in the ledger and the history")
    _by(p)
    bind(p, _cmd_cancel)
