"""What `dramatiq worker.entrypoint` imports: the production runtime and its actors, from the environment."""

from __future__ import annotations

from .config.settings import load_settings
from .service.exposition import in_dramatiq_cli, prepare_multiprocess_dir
from .service.logs import configure_logging

__all__ = ["broker", "runtime"]

_settings = load_settings()
configure_logging(_settings)
if _settings.metrics_enabled and in_dramatiq_cli():
    # Before the first metric exists: the CLI's worker processes share one folder, served by its fork.
    prepare_multiprocess_dir(_settings)

from .service.processes import log_start  # noqa: E402
from .service.runtime import build_runtime, set_runtime  # noqa: E402

runtime = build_runtime(_settings)
set_runtime(runtime)
log_start(runtime, "worker")
# Refuse to start on an invalid rule file or templates, rather than fail at the first reminder.
runtime.rules()
broker = runtime.broker
