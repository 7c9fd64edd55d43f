"""dramatiq middleware of the worker's own: closing the SMTP pool cleanly when a worker stops."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from dramatiq.asyncio import EventLoopThread, get_event_loop_thread, set_event_loop_thread
from dramatiq.middleware import AsyncIO, Middleware

__all__ = ["CloseMailer", "DaemonAsyncIO"]

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
