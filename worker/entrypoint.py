"""What `dramatiq worker.entrypoint` imports: the production runtime and its actors, from the environment."""

from __future__ import annotations

import sys

from .config.settings import load_settings
from .domain.errors import ConfigError
from .service.exposition import in_dramatiq_cli, prepare_multiprocess_dir
from .service.logs import configure_logging

__all__ = ["broker", "runtime"]


def _refuse(exc: ConfigError) -> SystemExit:
    # One line naming what to fix, not a traceback: dramatiq imports this module in each worker
    # process, and a SystemExit ends that process quietly with this code.
    print(f"configuration error: {exc}", file=sys.stderr, flush=True)
    return SystemExit(2)


try:
    _settings = load_settings()
except ConfigError as exc:
    raise _refuse(exc) from None
configure_logging(_settings)
if _settings.metrics_enabled and in_dramatiq_cli():
    # Before the first metric exists: the CLI's worker processes share one folder, served by its fork.
    prepare_multiprocess_dir(_settings)

from .service.processes import log_start  # noqa: E402
from .service.runtime import build_runtime, set_runtime  # noqa: E402

try:
    runtime = build_runtime(_settings)
    set_runtime(runtime)
    log_start(runtime, "worker")
    # Refuse to start on an invalid rule file or templates, rather than fail at the first reminder.
    runtime.rules()
except ConfigError as exc:
    raise _refuse(exc) from None
broker = runtime.broker
