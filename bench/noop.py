"""A no-op actor on the production broker: what the queue alone costs per message, for comparison."""

from __future__ import annotations

from collections.abc import Awaitable

import dramatiq
from dramatiq.brokers.redis import RedisBroker

__all__ = ["NOOP_QUEUE", "declare_noop", "noop_delivery"]

NOOP_QUEUE = "bench-noop"


async def noop_delivery(partner_id: str, renewal_id: str, reminder_id: str, due_ms: int) -> None:
    """Takes what ``deliver_reminder`` takes and does nothing: an async actor, so it crosses the same event loop."""


def declare_noop(broker: RedisBroker) -> dramatiq.Actor[[str, str, str, int], Awaitable[None]]:
    declare = dramatiq.actor(broker=broker, actor_name="bench_noop", queue_name=NOOP_QUEUE, max_retries=0)
    return declare(noop_delivery)
