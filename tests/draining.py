"""Running the events queue to empty with a real dramatiq worker, for the ingest tests."""

from __future__ import annotations

import dramatiq

from worker.service.actors import EVENTS_QUEUE
from worker.service.runtime import Runtime


def drain(rt: Runtime) -> None:
    worker = dramatiq.Worker(rt.broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        rt.broker.join(EVENTS_QUEUE, timeout=30_000)
        worker.join()
    finally:
        worker.stop()
