"""Wires settings, Redis, the broker, the store and the clock into one object per process."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO

from .clock import Clock, SystemClock
from .keys import Keys
from .settings import Settings, load_settings
from .store import Store

if TYPE_CHECKING:
    from .actors import Actors

__all__ = ["Runtime", "build_runtime", "get_runtime", "set_runtime"]


@dataclass
class Runtime:
    """Everything an actor, the scheduler or the CLI needs; built once from the settings."""

    settings: Settings
    redis: redis.Redis
    broker: RedisBroker
    store: Store
    clock: Clock
    keys: Keys
    actors: Actors
    extras: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        self.broker.close()
        self.redis.close()


def _redis_client(settings: Settings) -> redis.Redis:
    if settings.redis_url is None:
        # The embedded default: the very broker and store code of production, on an in-process Redis.
        import fakeredis

        return fakeredis.FakeRedis()
    return redis.Redis.from_url(settings.redis_url, health_check_interval=30)


def build_runtime(
    settings: Settings | None = None, *, clock: Clock | None = None, redis_client: redis.Redis | None = None
) -> Runtime:
    """Build a runtime and make its broker the global dramatiq broker of this process."""
    import dramatiq

    from .actors import Actors

    settings = settings or load_settings()
    client = redis_client or _redis_client(settings)
    broker = RedisBroker(client=client, namespace=f"{settings.key_prefix}-queue")
    broker.add_middleware(AsyncIO())
    dramatiq.set_broker(broker)
    keys = Keys(settings.key_prefix)
    store = Store(
        client,
        keys=keys,
        event_id_ttl_s=settings.event_id_ttl_days * 86_400,
        dead_letter_max=settings.dead_letter_max,
    )
    return Runtime(
        settings=settings,
        redis=client,
        broker=broker,
        store=store,
        clock=clock or SystemClock(),
        keys=keys,
        actors=Actors(broker),
    )


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime() -> Runtime:
    """The process's runtime, built from the environment on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = build_runtime()
        return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    global _runtime
    with _lock:
        _runtime = runtime
