"""Redis's own counters around a phase: commands by name and bytes received, per unit of work.

The counters are the whole server's, so anything else using the same Redis at the same time is
counted too; the benchmark's database is its own, the server may not be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

__all__ = ["RedisCounters"]


@dataclass(frozen=True)
class RedisCounters:
    calls: dict[str, int]
    commands_processed: int
    net_input_bytes: int

    @classmethod
    def read(cls, client: redis.Redis) -> RedisCounters:
        stats = client.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        general = client.info("stats")
        return cls(calls, int(general["total_commands_processed"]), int(general["total_net_input_bytes"]))

    def since(self, before: RedisCounters, *, per: int, top: int = 8) -> dict[str, Any]:
        """Per unit of work (``per`` events, reminders...): commands processed and the most called ones."""
        if per <= 0:
            return {}
        calls = {name: n - before.calls.get(name, 0) for name, n in self.calls.items()}
        busiest = sorted(calls.items(), key=lambda item: -item[1])[:top]
        return {
            # Every command, pipelined ones and those run inside scripts (evalsha) included.
            "commands_per_unit": round((self.commands_processed - before.commands_processed) / per, 2),
            "calls_per_unit": {name: round(n / per, 2) for name, n in busiest if n > 0},
            "net_input_bytes_per_unit": round((self.net_input_bytes - before.net_input_bytes) / per, 1),
        }
