"""What `dramatiq worker.entrypoint` imports: the production runtime and its actors, from the environment."""

from __future__ import annotations

import logging

from .service.processes import log_start
from .service.runtime import build_runtime, set_runtime

__all__ = ["broker", "runtime"]

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
runtime = build_runtime()
set_runtime(runtime)
log_start(runtime)
# Refuse to start on an invalid rule file or templates, rather than fail at the first reminder.
runtime.rules()
broker = runtime.broker
