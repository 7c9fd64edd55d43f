"""Lua scripts run by EVALSHA, also inside pipelines, without redis-py's per-pipeline SCRIPT EXISTS."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

__all__ = ["LuaScript", "run_pipeline"]


class LuaScript:
    """One script; redis-py's own Script costs a SCRIPT EXISTS round trip on every pipeline it is in."""

    def __init__(self, client: redis.Redis, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def load(self) -> None:
        self.client.script_load(self.source)

    def __call__(self, *, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return self.client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted or flushed Redis forgot it
            self.load()
            return self.client.evalsha(self.sha, len(keys), *keys, *args)

    def queue(self, pipe: redis.client.Pipeline, *, keys: Sequence[Any], args: Sequence[Any]) -> None:
        pipe.evalsha(self.sha, len(keys), *keys, *args)


def run_pipeline(
    client: redis.Redis, build: Callable[[redis.client.Pipeline], None], scripts: Sequence[LuaScript]
) -> list[Any]:
    """Build and run a non-transactional pipeline, loading its scripts and running it again on NOSCRIPT.

    Running it again is safe only because a script that Redis did not know did not run; callers
    put nothing but reads beside their scripts.
    """
    for attempt in (1, 2):
        with client.pipeline(transaction=False) as pipe:
            build(pipe)
            try:
                return pipe.execute()
            except NoScriptError:
                if attempt == 2:
                    raise
                for script in scripts:
                    script.load()
    raise AssertionError("unreachable")  # pragma: no cover
