"""`renewals rules diff` at scale: a million stored reminders diffed against a rule file that moves each of them.

The population is the scale phase's (one client per renewal, three reminders each, under the
default rules); the candidate file sends every reminder an hour later, so every reminder is
``moved`` and none is skipped by a cache of equal answers alone: each renewal is still read,
decoded and tallied. Run on its own, it prints its figure:

    python -m bench.rulediff [--renewals 333334] [--redis-url redis://127.0.0.1:6379/14]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.config.rulefile import load_rules
from worker.ops.rulediff import diff_store

from .context import DEFAULT_REDIS_URL, DEFAULT_RULES, BenchContext
from .scale import changed_rules, scale_population
from .seed import seed_parallel

__all__ = ["run_rule_diff"]

_REMINDERS_PER_RENEWAL = 3


def run_rule_diff(ctx: BenchContext, *, renewals: int, seed_processes: int = 2) -> dict[str, Any]:
    """Store ``renewals`` renewals (not planned: the diff reads state and ledgers only), then time the diff."""
    pop = scale_population(renewals, tag="rulediff")
    ctx.flush()
    seeded = seed_parallel(
        redis_url=ctx.redis_url,
        key_prefix=ctx.key_prefix,
        rules_path=DEFAULT_RULES,
        pop=pop,
        stage="store",
        when=datetime.now(UTC),
        processes=seed_processes,
    )
    rt = ctx.runtime()
    try:
        old = load_rules(DEFAULT_RULES)
        new = load_rules(changed_rules(ctx))
        started = time.perf_counter()
        diff = diff_store(rt.store, old, new, now=datetime.now(UTC))
        wall_s = time.perf_counter() - started
    finally:
        ctx.flush()
    reminders = diff.renewals * _REMINDERS_PER_RENEWAL
    return {
        "renewals": diff.renewals,
        "stored_reminders": reminders,
        "moved": diff.total("moved"),
        "seed_s": seeded["wall_s"],
        "diff_s": round(wall_s, 2),
        "reminders_per_s": round(reminders / wall_s),
        "projected_s_per_million": round(wall_s * 1_000_000 / max(reminders, 1), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rulediff", description=__doc__)
    parser.add_argument("--renewals", type=int, default=333_334, help="renewals stored (3 reminders each)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="the benchmark's own database (flushed)")
    parser.add_argument("--key-prefix", default="bench")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-rulediff-") as workdir:
        ctx = BenchContext(redis_url=args.redis_url, workdir=Path(workdir), key_prefix=args.key_prefix)
        result = run_rule_diff(ctx, renewals=args.renewals)
    print(
        f"rules diff over {result['stored_reminders']:,} stored reminders ({result['renewals']:,} renewals): "
        f"{result['diff_s']} s, {result['reminders_per_s']:,} reminders/s "
        f"(a million: {result['projected_s_per_million']} s; goal < 60 s); seeding took {result['seed_s']} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
