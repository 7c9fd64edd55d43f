"""dramatiq middleware of the worker's own: retries that survive a Redis outage, and a clean stop."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from dramatiq.asyncio import EventLoopThread, get_event_loop_thread, set_event_loop_thread
from dramatiq.middleware import AsyncIO, Middleware, Retries, default_middleware

from ..domain.errors import RedisUnavailable
from ..state.connection import RedisOutage
from .broker import leave_unacknowledged

__all__ = ["CloseMailer", "DaemonAsyncIO", "DurableRetries", "StopWaitingForRedis", "broker_middleware"]

_log = logging.getLogger("worker.middleware")


class DaemonAsyncIO(AsyncIO):
    """dramatiq's AsyncIO middleware, with its event loop in a daemon thread.

    When a whole process group gets SIGTERM (timeout, systemd, container stops), a dramatiq
    worker process receives it twice and exits mid-shutdown; a non-daemon loop thread then keeps
    the interpreter waiting forever. The graceful path still stops and joins the loop.
    """

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        thread = EventLoopThread(self.logger)
        thread.daemon = True
        thread.start(timeout=1.0)
        set_event_loop_thread(thread)


class CloseMailer(Middleware):
    """QUITs the process's SMTP connections on the event loop they were opened on, before it stops.

    Must be added after dramatiq's AsyncIO middleware, whose shutdown hook stops that loop.
    """

    def __init__(self, close_mailer: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._close_mailer = close_mailer

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        loop_thread = get_event_loop_thread()
        if loop_thread is None:
            return
        try:
            loop_thread.run_coroutine(self._close_mailer())
        except Exception:  # a failing QUIT must not keep the worker from stopping
            _log.exception("closing the SMTP connections failed")


class DurableRetries(Retries):
    """dramatiq's Retries, whose retry is never lost to a Redis outage.

    dramatiq enqueues a failed message's retry, logs it when that fails (Redis away), then acks
    the message all the same once Redis is back: the message is gone. Here the retry's enqueue
    waits for Redis like everything else; should the worker stop first, or the actor have given up
    waiting (RedisUnavailable), the message is left unacknowledged, for another worker to run.
    """

    def __init__(self, outage: RedisOutage, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._outage = outage

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if isinstance(exception, RedisUnavailable):
            leave_unacknowledged(message)
            return
        try:
            super().after_process_message(
                _WaitingEnqueue(broker, self._outage), message, result=result, exception=exception
            )
        except RedisUnavailable:
            leave_unacknowledged(message)


class _WaitingEnqueue:
    """The broker as Retries sees it: ``enqueue`` waits for Redis; the rest is the broker's own."""

    def __init__(self, broker: Any, outage: RedisOutage) -> None:
        self._broker = broker
        self._outage = outage

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        return self._outage.call(lambda: self._broker.enqueue(message, delay=delay))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)


class StopWaitingForRedis(Middleware):
    """When the worker stops, waits for Redis end, so that a dead Redis cannot hold the shutdown."""

    def __init__(self, outage: RedisOutage) -> None:
        self._outage = outage

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        self._outage.resume()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._outage.stop()


def broker_middleware(outage: RedisOutage) -> list[Middleware]:
    """dramatiq's default middleware, with Retries replaced by DurableRetries, and StopWaitingForRedis."""
    middleware: list[Middleware] = [DurableRetries(outage) if m is Retries else m() for m in default_middleware]
    return [*middleware, StopWaitingForRedis(outage)]
