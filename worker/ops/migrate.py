"""`renewals migrate`: upgrade the Redis store in place to the layout this version reads."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_migrate_command"]


def _cmd_migrate(args: argparse.Namespace) -> int:
    import redis

    from ..config.settings import load_settings
    from ..state.keys import Keys
    from ..state.layout import migrate

    settings = load_settings()
    if settings.redis_url is None:
        print("REDIS_URL is not set: there is no store to migrate", file=sys.stderr)
        return 1
    client = redis.Redis.from_url(settings.redis_url)
    try:
        report = migrate(client, Keys(settings.key_prefix))
    finally:
        client.close()
    origin = "empty" if report.from_version is None else f"layout {report.from_version}"
    print(f"store {settings.key_prefix}: {origin} -> layout {report.to_version}")
    for step in report.steps:
        print(f"  {step}")
    return 0


def add_migrate_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "migrate",
        help="upgrade the Redis store (REDIS_URL, KEY_PREFIX) in place to this version's layout; "
        "stop the processes of the older version first",
    )
    p.set_defaults(handler=_cmd_migrate)
