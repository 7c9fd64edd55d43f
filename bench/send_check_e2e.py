"""End to end with and without the send-time check, back to back: issue 10's bound on its cost.

Runs the e2e burst (N reminders due at once, a scheduler and ``dramatiq`` workers, 2 processes x 8
threads, Postfix's ``smtp-sink``) alternately with the production workers and with
``bench.ablated_entrypoint`` (each send trusting its batch's view, outcomes written at the batch's
end: the design the check replaced), with raw aiosmtplib measured before each pair, and prints
each run's rate, its ratio to raw aiosmtplib and the workers' CPU per reminder, then the median
fall of the ratio.

    .venv/bin/python -m bench.send_check_e2e [--n 6000] [--pairs 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from .baselines import raw_aiosmtplib, sample_message
from .context import BenchContext
from .e2e import run_burst
from .sink import SmtpSink

__all__ = ["main"]

_VARIANTS = (("without the check", "bench.ablated_entrypoint"), ("with the check", "worker.entrypoint"))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.send_check_e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6000, help="reminders per run (default 6000)")
    parser.add_argument("--pairs", type=int, default=2, help="pairs of runs (default 2)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13", help="a database of the benchmark's own")
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {label: [] for label, _ in _VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench-send-check-") as tmp, SmtpSink(Path(tmp)) as sink:
        ctx = BenchContext(args.redis_url, Path(tmp), smtp=sink)
        try:
            sample = sample_message(ctx)
            for pair in range(args.pairs):
                raw = raw_aiosmtplib(ctx, sample, messages=min(args.n, 10_000), processes=2)["rate_per_s"]
                print(f"pair {pair + 1}: raw aiosmtplib x2 {raw:,.0f}/s", flush=True)
                for label, module in _VARIANTS:
                    burst = run_burst(ctx, renewals=args.n, processes=2, threads=8, worker_module=module)
                    rate = burst["rate_per_s"]
                    cpu_ms = 1000 * burst["cpu_s"]["workers"] / args.n
                    ratios[label].append(rate / raw)
                    print(
                        f"  {label:18} {rate:8,.0f}/s  ratio {rate / raw:.3f}  workers {cpu_ms:.3f} ms/reminder"
                        f"  {burst.get('outcomes')}",
                        flush=True,
                    )
        finally:
            ctx.flush()
    before = statistics.median(ratios[_VARIANTS[0][0]])
    after = statistics.median(ratios[_VARIANTS[1][0]])
    fall = 100 * (1 - after / before)
    print(f"ratio to raw aiosmtplib: {before:.3f} without, {after:.3f} with: falls by {fall:.1f} %")


if __name__ == "__main__":
    main()
