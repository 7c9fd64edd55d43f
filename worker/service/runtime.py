"""Wires settings, Redis, the broker, the store and the clock into one object per process."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from ..config.settings import Settings, load_settings
from ..state.alarms import SmtpAlarm
from ..state.connection import RedisOutage
from ..state.connection import redis_client as _connect
from ..state.history import History
from ..state.keys import Keys
from ..state.layout import check_layout
from ..state.ledger import Ledger
from ..state.planning import Planning
from ..state.schedule import DueIndex
from ..state.store import Store
from .actors import Actors
from .broker import QueueBroker
from .clock import Clock, SystemClock
from .exposition import Telemetry
from .middleware import CloseMailer, DaemonAsyncIO, broker_middleware
from .telemetry import InstrumentedMailer, record_rule_reload

if TYPE_CHECKING:
    from ..config.rulefile import RulesWatcher
    from ..domain.rules import RuleSet
    from ..mail.mailer import Mailer
    from ..mail.reload import RendererWatcher
    from ..mail.render import Renderer

__all__ = ["Runtime", "build_runtime", "get_runtime", "set_runtime"]


@dataclass
class Runtime:
    """Everything an actor, the scheduler or the CLI needs; built once from the settings."""

    settings: Settings
    redis: redis.Redis
    broker: RedisBroker
    redis_outage: RedisOutage
    store: Store
    clock: Clock
    keys: Keys
    ledger: Ledger
    due_index: DueIndex
    planning: Planning
    actors: Actors = field(init=False)
    _rules_checked_at: float = field(default=0.0, init=False)
    _rules_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _templates_checked_at: float = field(default=0.0, init=False)
    _templates_lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    @cached_property
    def renderer_watcher(self) -> RendererWatcher:
        from ..mail.reload import RendererWatcher

        return RendererWatcher(self.settings.templates_dir, required=self._templates_in_use)

    @property
    def renderer(self) -> Renderer:
        """The templates and wording in force, looking for a valid edit at most every RULES_RELOAD_S."""
        watcher = self.renderer_watcher
        now = time.monotonic()
        if now - self._templates_checked_at >= self.settings.rules_reload_s:
            with self._templates_lock:
                if now - self._templates_checked_at >= self.settings.rules_reload_s:
                    self._templates_checked_at = now
                    watcher.maybe_reload()
        return watcher.renderer

    def _templates_in_use(self) -> set[str]:
        watcher = self.__dict__.get("rules_watcher")
        return set() if watcher is None else {rule.template for rule in watcher.rules.reminders}

    @cached_property
    def rules_watcher(self) -> RulesWatcher:
        from ..config.rulefile import RulesWatcher

        # The names of the templates in force now, not at start-up: a rule may name a template added since.
        return RulesWatcher(
            self.settings.rules_path, known_templates=_TemplateNames(self), on_reload=record_rule_reload
        )

    def rules(self) -> RuleSet:
        """The rules in force, looking for a valid edit of the file at most every RULES_RELOAD_S."""
        watcher = self.rules_watcher
        now = time.monotonic()
        if now - self._rules_checked_at >= self.settings.rules_reload_s:
            with self._rules_lock:
                if now - self._rules_checked_at >= self.settings.rules_reload_s:
                    self._rules_checked_at = now
                    watcher.maybe_reload()
        return watcher.rules

    @cached_property
    def mailer(self) -> Mailer:
        from ..mail.mailer import build_mailer

        alarm = SmtpAlarm(self.redis, self.keys)
        return InstrumentedMailer(build_mailer(self.settings), alarm=alarm, clock=self.clock)

    async def close_mailer(self) -> None:
        """Close the SMTP connections; the next send opens new ones (on the caller's event loop)."""
        mailer = self.__dict__.pop("mailer", None)
        if mailer is not None:
            await mailer.close()

    def close(self) -> None:
        self.broker.close()
        if self.broker.client is not self.redis:
            self.broker.client.close()
        self.redis.close()


class _TemplateNames(Collection[str]):
    """The template names of the renderer in force, looked up on each use."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def _names(self) -> frozenset[str]:
        return self._runtime.renderer_watcher.renderer.template_names()

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


def _redis_client(settings: Settings, *, command_retries: int | None = None) -> redis.Redis:
    if settings.redis_url is None:
        # The embedded default: the very broker and store code of production, on an in-process Redis.
        import fakeredis

        return fakeredis.FakeRedis()
    if command_retries is None:
        return _connect(settings)
    return _connect(settings, command_retries=command_retries)


def build_runtime(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    redis_client: redis.Redis | None = None,
    check_store_layout: bool = True,
) -> Runtime:
    """Build a runtime and make its broker the global dramatiq broker of this process.

    A store laid out for another version of the worker stops it here (StoreLayoutError, naming
    what to do), unless ``check_store_layout`` is off: only `renewals migrate` turns it off.
    """
    import dramatiq

    settings = settings or load_settings()
    client = redis_client or _redis_client(settings)
    if check_store_layout:
        check_layout(client, Keys(settings.key_prefix))
    # One outage per process: its consumers, actors and scheduler wait for Redis together, and log it once.
    outage = RedisOutage(
        max_backoff_s=settings.redis_max_backoff_s, min_backoff_s=min(0.1, settings.redis_max_backoff_s)
    )
    # The broker has a client of its own, without redis-py's retries (see redis_client), unless the
    # caller brought one or the process runs embedded (one in-process Redis for everything).
    broker_client = client if redis_client or settings.embedded else _redis_client(settings, command_retries=0)
    broker = QueueBroker(
        client=broker_client,
        namespace=f"{settings.key_prefix}-queue",
        outage=outage,
        middleware=broker_middleware(outage),
    )
    broker.add_middleware(DaemonAsyncIO())
    broker.add_middleware(CurrentMessage())
    dramatiq.set_broker(broker)
    keys = Keys(settings.key_prefix)
    store = Store(
        client,
        keys=keys,
        event_id_ttl_s=settings.event_id_ttl_days * 86_400,
        dead_letter_max=settings.dead_letter_max,
    )
    runtime = Runtime(
        settings=settings,
        redis=client,
        broker=broker,
        redis_outage=outage,
        store=store,
        clock=clock or SystemClock(),
        keys=keys,
        ledger=Ledger(client, keys, lease_ms=settings.send_lease_ms, history_days=settings.history_days),
        due_index=DueIndex(client, keys, history=History(client, keys, days=settings.history_days)),
        planning=Planning(client, store, keys),
    )
    broker.add_middleware(CloseMailer(runtime.close_mailer))
    broker.add_middleware(Telemetry(settings, client, keys, runtime.clock))
    runtime.actors = Actors(broker, runtime)
    return runtime


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
