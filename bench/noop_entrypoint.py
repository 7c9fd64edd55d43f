"""What `dramatiq bench.noop_entrypoint` imports: the production runtime (broker, middleware) plus the no-op actor."""

from __future__ import annotations

from worker.entrypoint import broker

from .noop import declare_noop

__all__ = ["broker", "noop"]

noop = declare_noop(broker)
