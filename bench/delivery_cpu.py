"""The delivery's own CPU per reminder, in one process: a figure that holds still between runs.

The e2e phase's reminders/s moves with everything else on the machine; what a change to the
delivery costs is better told by the CPU the delivery code spends per reminder. This runs the real
``deliver_many`` (the worker's path after dramatiq hands it a message) in this process against the
benchmark's Redis database and Postfix's ``smtp-sink``, ``--concurrency`` batches of
``DELIVERY_BATCH_SIZE`` at a time on one event loop (as a worker process's threads do), and
prints the process's CPU seconds (all threads) per reminder, and the wall rate.

    .venv/bin/python -m bench.delivery_cpu [--n 4000] [--repeat 3] [--profile out.prof]

``--profile`` writes a cProfile of one extra run (its figures are not the printed ones).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from worker.service.delivery import deliver_many
from worker.service.runtime import Runtime

from .context import BenchContext
from .e2e import REMINDER_ID, bench_population, prepare, read_outcomes, write_bench_rules
from .seed import plan_refs
from .sink import SmtpSink

__all__ = ["main", "measure"]


async def _deliver_all(rt: Runtime, refs: list[tuple[str, str, str]], *, batch: int, concurrency: int) -> None:
    batches = [refs[i : i + batch] for i in range(0, len(refs), batch)]
    queue: asyncio.Queue[list[tuple[str, str, str]]] = asyncio.Queue()
    for item in batches:
        queue.put_nowait(item)

    async def lane() -> None:
        while not queue.empty():
            results = await deliver_many(rt, queue.get_nowait(), last_try=False)
            bad = [r for r in results if r != "sent"]
            if bad:
                raise RuntimeError(f"not sent: {bad[:3]}")

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    await rt.mailer.close()


def measure(ctx: BenchContext, rules_path: Path, *, n: int, concurrency: int, tag: str) -> tuple[float, float]:
    """(CPU ms per reminder, reminders/s) of one run of ``n`` reminders due now."""
    ctx.flush()
    rt = ctx.runtime(rules_path)
    population = bench_population(n, tag)
    prepare(rt, population)
    pairs = population.refs()
    plan_refs(rt, pairs, rt.rules(), datetime.now(UTC))
    refs = [(pid, rid, REMINDER_ID) for pid, rid in pairs]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    asyncio.run(_deliver_all(rt, refs, batch=rt.settings.delivery_batch_size, concurrency=concurrency))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    outcomes = read_outcomes(rt, pairs)
    if any(o is None or o.kind != "sent" for o in outcomes):
        raise RuntimeError("a reminder was not recorded sent")
    return 1000 * cpu / n, n / wall


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="reminders per run (default 4000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median is printed (default 3)")
    parser.add_argument("--concurrency", type=int, default=8, help="batches at once, as a worker's threads (8)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13", help="a database of the benchmark's own")
    parser.add_argument("--profile", type=Path, help="also write a cProfile of one more run here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-delivery-cpu-") as tmp:
        sink = SmtpSink(Path(tmp), capture=False).start()
        ctx = BenchContext(args.redis_url, Path(tmp), smtp=sink)
        try:
            rules_path = write_bench_rules(ctx)
            measure(ctx, rules_path, n=min(args.n, 500), concurrency=args.concurrency, tag="warm")
            runs = [
                measure(ctx, rules_path, n=args.n, concurrency=args.concurrency, tag=f"run{i}")
                for i in range(args.repeat)
            ]
            if args.profile is not None:
                profiler = cProfile.Profile()
                profiler.enable()
                measure(ctx, rules_path, n=args.n, concurrency=args.concurrency, tag="prof")
                profiler.disable()
                profiler.dump_stats(args.profile)
        finally:
            ctx.flush()
            sink.stop()
    cpu = statistics.median(r[0] for r in runs)
    rate = statistics.median(r[1] for r in runs)
    print(
        f"delivery CPU per reminder: {cpu:.3f} ms (runs: {', '.join(f'{r[0]:.3f}' for r in runs)}); "
        f"{rate:,.0f} reminders/s in one process"
    )


if __name__ == "__main__":
    main()
