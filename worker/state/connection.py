"""Connections to Redis, and waiting out an outage: retried with capped backoff, logged once and at its end."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from ..config.settings import Settings
from ..domain.errors import RedisUnavailable

__all__ = ["REDIS_ERRORS", "RedisOutage", "is_redis_outage", "redis_client"]

_T = TypeVar("_T")
_log = logging.getLogger("worker.redis")

# What Redis being away looks like to redis-py: refused or dropped connections, timeouts, and a
# restarted server still loading its data (BusyLoadingError is a ConnectionError).
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)

# A few quick retries inside one command ride out a dropped idle connection or a failover; a
# longer outage is waited out by RedisOutage, which logs it, rather than command by command.
_COMMAND_RETRIES = 2


def redis_client(settings: Settings, *, command_retries: int = _COMMAND_RETRIES) -> redis.Redis:
    """A client of ``REDIS_URL`` with the configured timeouts and health checks.

    ``command_retries=0`` for the broker: a fetch retried by redis-py after its reply was lost runs
    twice, and the entries the first run took would go unnoticed; failing instead lets the consumer
    put them back.
    """
    if settings.redis_url is None:
        raise ValueError("REDIS_URL is not set")
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        health_check_interval=settings.redis_health_check_interval_s,
        retry=Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), command_retries),
        retry_on_error=list(REDIS_ERRORS),
    )


def is_redis_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis is away (worth waiting for), not that a command was wrong.

    Also when a Redis error is the cause: the store translates them into TransientError.
    """
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, RedisUnavailable):
            return False  # a wait already given up: not to be waited for again
        if isinstance(current, REDIS_ERRORS):
            return True
        current, seen = current.__cause__, seen + 1
    return False


class RedisOutage:
    """One process's view of Redis being away, shared by its consumers, actors and scheduler.

    ``call`` runs an operation until Redis answers, sleeping between attempts with jittered
    exponential backoff capped at ``max_backoff_s``. The first failure logs that Redis is away and the
    first success after it logs how long it was, whatever the number of threads and attempts: a dead
    Redis must not write a line per attempt. An outage that starts within ``relog_after_s`` of the
    last logged one is not logged (Redis flapping, or failing some commands only). ``stop`` ends
    every wait (the process is stopping); the waiting calls then raise RedisUnavailable.
    """

    def __init__(
        self,
        *,
        max_backoff_s: float = 5.0,
        min_backoff_s: float = 0.1,
        sleep: Callable[[float], object] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        logger: logging.Logger = _log,
        relog_after_s: float = 30.0,
    ) -> None:
        if min_backoff_s <= 0 or max_backoff_s < min_backoff_s:
            raise ValueError("need 0 < min_backoff_s <= max_backoff_s")
        self.max_backoff_s = max_backoff_s
        self.min_backoff_s = min_backoff_s
        self._stopping = threading.Event()
        self._sleep = sleep
        self._monotonic = monotonic
        self._log = logger
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._failures = 0
        self._logged = False
        self._logged_at: float | None = None
        self.relog_after_s = relog_after_s

    @property
    def down(self) -> bool:
        return self._down_since is not None

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """End every wait now and from now on: the process is shutting down."""
        self._stopping.set()

    def resume(self) -> None:
        """Wait for Redis again (a worker started anew in this process)."""
        self._stopping.clear()

    def failed(self, exc: BaseException) -> None:
        """Note a failed attempt; only the first of an outage is logged (see ``relog_after_s``)."""
        with self._lock:
            self._failures += 1
            if self._down_since is not None:
                return
            now = self._monotonic()
            self._down_since = now
            # Redis answering some commands and failing others (a script timing out) must not write
            # two lines per attempt either: an outage starting soon after the last logged one is quiet.
            self._logged = self._logged_at is None or now - self._logged_at >= self.relog_after_s
            if self._logged:
                self._logged_at = now
        if self._logged:
            self._log.warning(
                "Redis unavailable (%s: %s); waiting for it, retrying with backoff up to %.1fs",
                type(exc).__name__,
                exc,
                self.max_backoff_s,
            )

    def recovered(self) -> None:
        """Note a successful operation; the first after a logged outage logs its end."""
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None:
                return
            down_s = self._monotonic() - self._down_since
            failures, self._down_since, self._failures = self._failures, None, 0
            logged = self._logged
        if logged:
            self._log.warning("Redis available again after %.1fs (%d failed attempt(s))", down_s, failures)

    def backoff_s(self, attempt: int) -> float:
        """How long to wait before attempt ``attempt + 1``: exponential, capped, with jitter."""
        ceiling = min(self.max_backoff_s, self.min_backoff_s * 2 ** min(attempt, 30))
        return float(random.uniform(ceiling / 2, ceiling))

    def pause(self, attempt: int) -> bool:
        """Wait before the next attempt; False when the process is stopping (stop trying)."""
        delay = self.backoff_s(attempt)
        if self._sleep is not None:
            self._sleep(delay)
            return not self.stopping
        return not self._stopping.wait(delay)

    def call(self, operation: Callable[[], _T]) -> _T:
        """``operation()``, tried again after each Redis error until it succeeds.

        Raises RedisUnavailable (from the last Redis error) only when ``stop`` was called while
        Redis was away; any other error is the caller's.
        """
        attempt = 0
        while True:
            try:
                result = operation()
            except Exception as exc:
                if not is_redis_outage(exc):
                    raise
                self.failed(exc)
                if self.stopping or not self.pause(attempt):
                    raise RedisUnavailable(f"Redis unavailable and the process is stopping: {exc}") from exc
                attempt += 1
                continue
            self.recovered()
            return result
