"""The `renewals` command: run the worker, feed it events, and let ops inspect what it would do."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import ConfigError, InvalidEvent, RenewalsError
from .settings import PROJECT_ROOT

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]


def _cmd_enqueue(args: argparse.Namespace) -> int:
    from .events import parse_event
    from .runtime import get_runtime

    stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    rt = get_runtime()
    good = bad = 0
    with stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                event = parse_event(line)
            except InvalidEvent as exc:
                bad += 1
                for field, message in exc.errors:
                    print(f"{args.file}:{number}: {field or '(event)'}: {message}", file=sys.stderr)
                continue
            rt.actors.ingest.send(event.model_dump_json())
            good += 1
    print(f"enqueued {good} event(s), rejected {bad}")
    if rt.settings.embedded:
        print("note: REDIS_URL is not set, so these went to an in-process queue that ends with this command")
    return 1 if bad else 0


def _cmd_dead_letters(args: argparse.Namespace) -> int:
    from .runtime import get_runtime

    letters = get_runtime().store.dead_letters(args.limit)
    if args.json:
        for letter in letters:
            print(json.dumps(letter.__dict__))
        return 0
    if not letters:
        print("no dead letters")
    for letter in letters:
        print(f"{letter.received_at}  {letter.reason}")
        for field, message in letter.errors:
            print(f"    {field or '(event)'}: {message}")
        print(f"    raw: {letter.raw[:500]}")
    return 0


def _cmd_show_client(args: argparse.Namespace) -> int:
    from .inspect import describe_client
    from .runtime import get_runtime

    rt = get_runtime()
    print(describe_client(rt.store, args.partner_id, args.client_id, rt.settings.hubspot_contact_roles))
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from .events import event_json_schema

    text = json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.examples), Path(args.outbox))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="renewals", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the bundled examples on the embedded default and print who gets what")
    p.add_argument("--examples", default=str(PROJECT_ROOT / "examples"), help="folder of example events")
    p.add_argument("--outbox", default="outbox", help="where emails are written as .eml files")
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser("enqueue", help="validate a JSON Lines file of events and enqueue the good ones")
    p.add_argument("file", help="JSON Lines file, or - for standard input")
    p.set_defaults(handler=_cmd_enqueue)

    p = sub.add_parser("dead-letters", help="list rejected events with the reason, newest first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(handler=_cmd_dead_letters)

    show = sub.add_parser("show", help="show stored state").add_subparsers(dest="what", required=True)
    p = show.add_parser("client", help="a client, its effective owner and who a reminder would go to, and why")
    p.add_argument("partner_id")
    p.add_argument("client_id")
    p.set_defaults(handler=_cmd_show_client)

    p = sub.add_parser("schema", help="print the JSON Schema of the event contract")
    p.add_argument("--output", "-o", help="write to this file instead of standard output")
    p.set_defaults(handler=_cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except RenewalsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
