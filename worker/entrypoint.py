"""What `dramatiq worker.entrypoint` imports: the production runtime and its actors, from the environment."""

from __future__ import annotations

import logging
import sys

from .domain.errors import ConfigError
from .service.processes import log_start
from .service.runtime import build_runtime, set_runtime

__all__ = ["broker", "runtime"]

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
try:
    runtime = build_runtime()
    set_runtime(runtime)
    log_start(runtime)
    # Refuse to start on an invalid rule file or templates, rather than fail at the first reminder.
    runtime.rules()
except ConfigError as exc:
    # One line naming what to fix, not a traceback: dramatiq imports this module in each worker
    # process, and a SystemExit ends that process quietly with this code.
    print(f"configuration error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
broker = runtime.broker
