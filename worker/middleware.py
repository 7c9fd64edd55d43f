"""dramatiq middleware of the worker's own: closing the SMTP pool cleanly when a worker stops."""

from __future__ import annotations

import logging
from typing import Any

from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import Middleware

__all__ = ["CloseMailer"]

_log = logging.getLogger("worker.middleware")


class CloseMailer(Middleware):
    """QUITs the process's SMTP connections on the event loop they were opened on, before it stops.

    Must be added after dramatiq's AsyncIO middleware, whose shutdown hook stops that loop.
    """

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        from .runtime import get_runtime

        loop_thread = get_event_loop_thread()
        if loop_thread is None:
            return
        try:
            loop_thread.run_coroutine(get_runtime().close_mailer())
        except Exception:  # a failing QUIT must not keep the worker from stopping
            _log.exception("closing the SMTP connections failed")
