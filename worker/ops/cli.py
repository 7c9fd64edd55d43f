"""The `renewals` command: run the worker, feed it events, and let ops inspect what it would do."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from ..config.settings import default_data_path
from ..domain.errors import ConfigError, InvalidEvent, RenewalsError
from .args import timestamp
from .status import add_status_parser

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]

if TYPE_CHECKING:
    from ..service.runtime import Runtime
    from .preview import Preview
    from .preview_server import PreviewSource


def _cmd_enqueue(args: argparse.Namespace) -> int:
    from ..domain.events import parse_event_json
    from ..service.actors import refuse_far_future
    from ..service.publish import send_batches
    from ..service.runtime import get_runtime

    rt = get_runtime()
    if rt.settings.embedded:
        print(
            "error: REDIS_URL is not set, so enqueued events would go nowhere (an in-process queue that ends "
            "with this command). Set REDIS_URL to the service's Redis, or play the file with "
            "`renewals simulate --events FILE --until TIME --outbox DIR`.",
            file=sys.stderr,
        )
        return 2
    stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    good = bad = 0
    pending: list[str] = []
    with stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                event, text = parse_event_json(line.strip())
                # The worker's own check, here too: it would dead-letter an event dated too far ahead.
                refuse_far_future(event, now=rt.clock.now(), max_future_s=rt.settings.event_max_future_s)
            except InvalidEvent as exc:
                bad += 1
                for field, message in exc.errors:
                    print(f"{args.file}:{number}: {field or '(event)'}: {message}", file=sys.stderr)
                continue
            pending.append(text)
            good += 1
            if len(pending) >= rt.settings.ingest_batch_size:
                send_batches(rt, pending)
                pending.clear()
    send_batches(rt, pending)
    print(f"enqueued {good} event(s), rejected {bad}")
    return 1 if bad else 0


def _serving_runtime() -> Runtime:
    """The runtime of `run` and `scheduler`, saying plainly when no one else can reach it."""
    from ..service.runtime import get_runtime

    rt = get_runtime()
    if rt.settings.embedded:
        print(
            "warning: REDIS_URL is not set: this runs on an in-process store and queue that nothing outside this "
            "process can reach (no `renewals enqueue`, no producer, no CLI view). To see the pipeline work, use "
            "`renewals demo` or `renewals simulate`; to serve, set REDIS_URL.",
            file=sys.stderr,
        )
    return rt


def _inspection_runtime() -> Runtime:
    """The runtime, warning when it is the empty in-process store rather than a deployment's Redis."""
    from ..service.runtime import get_runtime

    rt = get_runtime()
    if rt.settings.embedded:
        print("note: REDIS_URL is not set, so this looks at an empty in-process store", file=sys.stderr)
    return rt


def _cmd_show_client(args: argparse.Namespace) -> int:
    from .inspect import describe_client
    from .rules_view import rules_for_views

    rt = _inspection_runtime()
    state = rt.store.client_state(args.partner_id, args.client_id)
    if state.client is None and state.override is None and not state.services_ended:
        print(f"no events received for client {args.client_id} of partner {args.partner_id}", file=sys.stderr)
        return 1
    print(describe_client(rt, args.partner_id, args.client_id, rules=rules_for_views(rt)))
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from ..domain.events import event_json_schema

    text = json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _log_info() -> None:
    """Long-running commands say what they do (start-up, re-plans, each reminder's outcome), as LOG_* say."""
    from ..config.settings import load_settings
    from ..service.logs import configure_logging

    configure_logging(load_settings())


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.examples), Path(args.outbox), until=args.until)


def _cmd_rules_check(args: argparse.Namespace) -> int:
    from ..config.rulefile import check_rules
    from ..config.settings import load_settings
    from ..mail.digest_render import DigestRenderer
    from ..mail.render import Renderer

    settings = load_settings()
    path = Path(args.path) if args.path else settings.rules_path
    renderer = Renderer(settings.templates_dir)
    problems: list[str] = [str(p) for p in check_rules(path, known_templates=renderer.template_names())]
    problems.extend(f"{settings.templates_dir}: {p}" for p in renderer.check())
    problems.extend(f"{settings.templates_dir}: {p}" for p in DigestRenderer(renderer).check())
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{path}: ok")
    return 0


def _cmd_rules_diff(args: argparse.Namespace) -> int:
    from ..config.rulefile import load_rules
    from ..config.settings import load_settings
    from ..mail.render import Renderer
    from .rulediff import diff_events_file, diff_json, diff_store, format_diff

    if args.at is not None and args.events is None:
        print("error: --at goes with --events", file=sys.stderr)
        return 2
    settings = load_settings()
    known = Renderer(settings.templates_dir).template_names()
    old_path = Path(args.rules) if args.rules else settings.rules_path
    new = load_rules(Path(args.new), known_templates=known)
    shown = str(old_path.relative_to(Path.cwd())) if old_path.is_relative_to(Path.cwd()) else str(old_path)
    refused: list[str] = []
    if args.events is not None:
        old = load_rules(old_path, known_templates=known)
        now = args.at or datetime.now(UTC)
        diff, refused = diff_events_file(Path(args.events), old, new, at=now, sample_size=args.samples)
    else:
        from .rules_view import rules_for_views

        rt = _inspection_runtime()
        if args.rules:
            old = load_rules(old_path, known_templates=known)
        else:
            # The rules the scheduler plans with (in Redis), as `plan` shows; the local file otherwise.
            old = rules_for_views(rt)
            if old.source.endswith("(in Redis)"):
                shown = old.source
        now = rt.clock.now()
        diff = diff_store(rt.store, old, new, now=now, sample_size=args.samples)
    if args.json:
        print(diff_json(diff, old=shown, new=args.new, now=now, refused=refused))
    else:
        for line in refused:
            print(f"refused: {line}", file=sys.stderr)
        print(format_diff(diff, old=shown, new=args.new, now=now))
    immediate = diff.total("immediate")
    if args.max_immediate is not None and immediate > args.max_immediate:
        limit = args.max_immediate
        print(
            f"{immediate} reminder(s) would go out at once when deployed, over --max-immediate {limit}",
            file=sys.stderr,
        )
        return 2
    return 0


def _preview_source(args: argparse.Namespace) -> PreviewSource:
    """Where the previews come from: the built-in samples, an events file at a time, or one stored renewal."""
    from ..config.rulefile import load_rules
    from ..config.settings import load_settings
    from ..mail.render import Renderer
    from ..state.planning import Planning
    from .preview import view_previews
    from .preview_samples import sample_previews
    from .preview_server import PreviewSource, fresh_renderer
    from .rulediff import events_store, read_events

    settings = load_settings()
    roles = settings.hubspot_contact_roles
    renderer = fresh_renderer(settings.templates_dir)

    if args.events is not None:
        events_path, at = Path(args.events), args.at or datetime.now(UTC)

        def from_events(r: Renderer) -> list[Preview]:
            events, refused = read_events(events_path)
            for line in refused:
                print(f"refused: {line}", file=sys.stderr)
            store = events_store(events, at=at)
            planning = Planning(store.redis, store, store.keys)
            pairs = [(pid, rid) for pid in store.partner_ids() for rid in store.renewal_ids(pid)]
            rules = load_rules(settings.rules_path, known_templates=r.template_names())
            return view_previews(planning.views(pairs), rules, now=at, roles=roles)

        return PreviewSource(renderer, from_events, settings.mail_from, f"{events_path.name} at {at.isoformat()}")
    if args.renewal is not None:
        partner_id, renewal_id = args.renewal
        rt = _inspection_runtime()

        def from_store(r: Renderer) -> list[Preview]:
            state = rt.store.renewal_state(partner_id, renewal_id)
            if state.updated_at is None:
                raise RenewalsError(f"no events received for renewal {renewal_id} of partner {partner_id}")
            return view_previews(
                [rt.planning.view(partner_id, renewal_id)], rt.rules(), now=rt.clock.now(), roles=roles
            )

        return PreviewSource(renderer, from_store, settings.mail_from, f"stored renewal {partner_id}/{renewal_id}")

    def from_samples(r: Renderer) -> list[Preview]:
        return sample_previews(r, roles=roles)

    return PreviewSource(renderer, from_samples, settings.mail_from, "built-in samples")


def _cmd_preview(args: argparse.Namespace) -> int:
    from .gallery import build_gallery, write_gallery
    from .preview_server import make_server

    if args.at is not None and args.events is None:
        print("error: --at goes with --events", file=sys.stderr)
        return 2
    if (args.out is None) == (not args.serve):
        print("error: give one of --out DIR or --serve", file=sys.stderr)
        return 2
    source = _preview_source(args)
    if args.serve:
        server = make_server(source, port=args.port)
        port = server.server_address[1]
        print(f"serving {source.description} at http://127.0.0.1:{port}/ (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return 0
    renderer = source.renderer()
    gallery = build_gallery(renderer, source.previews(renderer), mail_from=source.mail_from, source=source.description)
    out = Path(args.out)
    written = write_gallery(gallery, out)
    warnings = len(gallery.general) + sum(len(page.warnings) for page in gallery.pages)
    print(
        f"wrote {len(gallery.pages)} page(s) ({len(written)} files) to {out}/: open index.html; {warnings} warning(s)"
    )
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from .inspect import describe_plan
    from .rules_view import rules_for_views

    rt = _inspection_runtime()
    state = rt.store.renewal_state(args.partner_id, args.renewal_id)
    if state.updated_at is None:
        print(f"no events received for renewal {args.renewal_id} of partner {args.partner_id}", file=sys.stderr)
        return 1
    print(describe_plan(rt, args.partner_id, args.renewal_id, rules=rules_for_views(rt)))
    return 0


def _cmd_requiring_action(args: argparse.Namespace) -> int:
    from ..state.digests import DigestState
    from .requiring_action import format_rows, partner_rows

    rt = _inspection_runtime()
    if rt.store.partner(args.partner_id) is None and not rt.store.renewal_ids(args.partner_id):
        print(f"no events received for partner {args.partner_id}", file=sys.stderr)
        return 1
    rules = rt.rules()
    _, rows = partner_rows(DigestState(rt.store), args.partner_id, rules, rt.clock.now(), user=args.user)
    sys.stdout.write(format_rows(rows, args.format, horizon_days=rules.digest.horizon_days))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ..service.processes import run_service

    _log_info()
    rt = _serving_runtime()
    rt.rules()
    run_service(rt, threads=args.threads)
    return 0


def _cmd_scheduler(args: argparse.Namespace) -> int:
    from ..service.processes import run_scheduler

    _log_info()
    rt = _serving_runtime()
    rt.rules()
    run_scheduler(rt)
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import print_report, simulate

    report = simulate(
        Path(args.events),
        until=args.until,
        outbox=Path(args.outbox),
        start=args.start,
        rules_path=Path(args.rules) if args.rules else None,
    )
    print_report(report, Path(args.outbox))
    return 0


class _HelpFormatter(argparse.HelpFormatter):
    """Each option's help names its default, when it has one worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, False, argparse.SUPPRESS) or isinstance(default, list):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Every parser and subparser of the command shows defaults and describes itself by its help line."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def _describe(parser: argparse.ArgumentParser) -> None:
    """A subcommand's description, when not given, is its one-line help (argparse leaves it empty)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                if not child.description and helps.get(name):
                    child.description = helps[name]
                _describe(child)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("renewal-worker")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _build_parser() -> argparse.ArgumentParser:
    from . import history, steering
    from .migrate import add_migrate_command
    from .waiting import add_waiting_command

    parser = _Parser(prog="renewals", description=__doc__)
    parser.add_argument("--version", action="version", version=f"renewals {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the bundled examples on the embedded default and print who gets what")
    p.add_argument("--examples", default=str(default_data_path("examples")), help="folder of example events")
    p.add_argument("--outbox", default="outbox", help="where emails are written as .eml files")
    p.add_argument(
        "--until", default="2027-06-01T00:00:00+00:00", type=timestamp, help="run the virtual clock up to here"
    )
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser("run", help="run a worker and a scheduler in this process (until Ctrl-C)")
    p.add_argument("--threads", type=int, default=8, help="worker threads")
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser("scheduler", help="run the scheduler loop: claims due reminders and enqueues deliveries")
    p.set_defaults(handler=_cmd_scheduler)

    p = sub.add_parser("simulate", help="run events through the whole pipeline on a virtual clock")
    p.add_argument("--events", required=True, help="JSON Lines file of events, applied in file order")
    p.add_argument("--until", required=True, type=timestamp, help="move the virtual clock up to this timestamp")
    p.add_argument("--outbox", required=True, help="folder for the .eml files")
    p.add_argument("--start", type=timestamp, help="virtual start time (default: the first event's)")
    p.add_argument("--rules", help="rule file (default: RULES_PATH)")
    p.set_defaults(handler=_cmd_simulate)

    p = sub.add_parser("plan", help="a renewal's reminders: due times, state and recipients now")
    p.add_argument("partner_id", help="the partner's id")
    p.add_argument("renewal_id", help="the renewal's id (unique within the partner)")
    p.set_defaults(handler=_cmd_plan)

    p = sub.add_parser(
        "requiring-action", help="a partner's renewals requiring action (the digest's table), or one user's"
    )
    p.add_argument("partner_id", help="the partner whose renewals to list")
    p.add_argument("--user", help="only the renewals in this partner user's digest (email)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    p.set_defaults(handler=_cmd_requiring_action)

    rules = sub.add_parser("rules", help="rule files").add_subparsers(dest="what", required=True)
    p = rules.add_parser("check", help="validate a rule file (and the templates it names); exit 1 on any problem")
    p.add_argument("path", nargs="?", help="rule file (default: RULES_PATH)")
    p.set_defaults(handler=_cmd_rules_check)

    p = rules.add_parser("diff", help="what a candidate rule file would add, move, remove or send at once")
    p.add_argument("new", metavar="NEW.yaml", help="the candidate rule file")
    p.add_argument("--rules", help="the rules in force (default: RULES_PATH)")
    p.add_argument("--events", help="diff over the renewals of this JSON Lines file instead of the stored ones")
    p.add_argument("--at", type=timestamp, help="with --events: the moment to diff at (default: now)")
    p.add_argument("--json", action="store_true", help="the whole result as JSON")
    p.add_argument("--samples", type=int, default=5, help="changes shown of each kind (default 5)")
    p.add_argument("--max-immediate", type=int, help="exit 2 when more than N reminders would go out at once")
    p.set_defaults(handler=_cmd_rules_diff)

    p = sub.add_parser("preview", help="every email in every locale as it would be sent: a static gallery or a server")
    p.add_argument("--out", help="write the gallery into this folder (index.html)")
    p.add_argument("--serve", action="store_true", help="serve the gallery on 127.0.0.1, rendered on each request")
    p.add_argument("--port", type=int, default=8025, help="with --serve (default 8025; 0: any free port)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--events", help="preview the renewals of this JSON Lines file (default: built-in samples)")
    data.add_argument("--renewal", nargs=2, metavar=("PARTNER", "RENEWAL"), help="one stored renewal (REDIS_URL)")
    p.add_argument("--at", type=timestamp, help="with --events: the state and plans at this moment (default: now)")
    p.set_defaults(handler=_cmd_preview)

    p = sub.add_parser("enqueue", help="validate a JSON Lines file of events and enqueue the good ones")
    p.add_argument("file", help="JSON Lines file, or - for standard input")
    p.set_defaults(handler=_cmd_enqueue)

    show = sub.add_parser("show", help="show stored state").add_subparsers(dest="what", required=True)
    p = show.add_parser("client", help="a client, its effective owner and who a reminder would go to, and why")
    p.add_argument("partner_id", help="the partner's id")
    p.add_argument("client_id", help="the client's id (unique within the partner)")
    p.set_defaults(handler=_cmd_show_client)

    add_status_parser(sub)
    add_waiting_command(sub)
    add_migrate_command(sub)

    p = sub.add_parser("schema", help="print the JSON Schema of the event contract")
    p.add_argument("--output", "-o", help="write to this file instead of standard output")
    p.set_defaults(handler=_cmd_schema)
    history.register(sub, _inspection_runtime)
    steering.register(sub, _inspection_runtime)
    _describe(parser)
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
    except redis.ConnectionError as exc:
        print(f"error: cannot reach Redis (REDIS_URL): {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
