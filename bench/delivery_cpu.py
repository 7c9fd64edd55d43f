"""The delivery's own CPU per reminder, in one process: a figure that holds still between runs.

The e2e phase's reminders/s moves with everything else on the machine; what a change to the
delivery costs is better told by the CPU the delivery code spends per reminder. This runs what the
delivery actor runs once dramatiq hands it a message (``deliver_many``, then ``record_deliveries``
for the logs and metrics, with prometheus-client in multiprocess mode as in a
worker process) in this process, against the benchmark's Redis database and Postfix's
``smtp-sink``: ``--concurrency`` batches of ``DELIVERY_BATCH_SIZE`` at a time on one event loop,
as a worker process's threads do. It prints the process's CPU seconds (all threads) per reminder.

    .venv/bin/python -m bench.delivery_cpu [--n 4000] [--repeat 3] [--ablate] [--profile out.prof]

``--ablate`` also runs, interleaved with the full runs, without the history (no XADD), without
the metrics (prometheus-client calls made no-ops) and without the send-time check (each send
trusting its batch's view, the outcomes written when the batch ends: the design it replaced), and
prints what each costs as a share of the full delivery, figures taken in one run.
``--profile`` writes a cProfile of the sends of one extra run (its figures are not the printed ones;
cProfile sees only the event loop's thread).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

from worker.service import delivery, telemetry
from worker.service.delivery import deliver_many
from worker.service.runtime import Runtime
from worker.state.history import History
from worker.state.schedule import epoch_ms

from .context import BenchContext
from .e2e import REMINDER_ID, bench_population, prepare, read_outcomes, write_bench_rules
from .seed import plan_refs
from .sink import SmtpSink

__all__ = ["main", "measure", "without"]


async def _deliver_all(rt: Runtime, refs: list[tuple[str, str, str]], *, batch: int, concurrency: int) -> None:
    batches = [refs[i : i + batch] for i in range(0, len(refs), batch)]
    queue: asyncio.Queue[list[tuple[str, str, str]]] = asyncio.Queue()
    for item in batches:
        queue.put_nowait(item)
    due_ms = epoch_ms(datetime.now(UTC))

    async def lane() -> None:
        while not queue.empty():
            refs = queue.get_nowait()
            results = await deliver_many(rt, refs, last_try=False)
            telemetry.record_deliveries(rt, [[*ref, due_ms] for ref in refs], results)
            bad = [r for r in results if r != "sent"]
            if bad:
                raise RuntimeError(f"not sent: {bad[:3]}")

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    await rt.mailer.close()


def measure(
    ctx: BenchContext,
    rules_path: Path,
    *,
    n: int,
    concurrency: int,
    tag: str,
    profiler: cProfile.Profile | None = None,
) -> tuple[float, float]:
    """(CPU ms per reminder, reminders/s) of one run of ``n`` reminders due now.

    ``profiler`` runs during the sends only.
    """
    ctx.flush()
    rt = ctx.runtime(rules_path)
    population = bench_population(n, tag)
    prepare(rt, population)
    pairs = population.refs()
    plan_refs(rt, pairs, rt.rules(), datetime.now(UTC))
    refs = [(pid, rid, REMINDER_ID) for pid, rid in pairs]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    asyncio.run(_deliver_all(rt, refs, batch=rt.settings.delivery_batch_size, concurrency=concurrency))
    if profiler is not None:
        profiler.disable()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    outcomes = read_outcomes(rt, pairs)
    if any(o is None or o.kind != "sent" for o in outcomes):
        raise RuntimeError("a reminder was not recorded sent")
    return 1000 * cpu / n, n / wall


class _NoMetric:
    """Stands for any prometheus-client metric: every call does nothing."""

    def labels(self, *_: Any) -> _NoMetric:
        return self

    def __getattr__(self, _: str) -> Any:
        return lambda *_, **__: None


class _NoMetrics:
    def __getattr__(self, _: str) -> _NoMetric:
        return _NoMetric()


@contextlib.contextmanager
def without(part: str) -> Iterator[None]:
    """The delivery without its history, its metrics, or its send-time check (``full``: as it is)."""
    if part == "history":
        with mock.patch.object(History, "queue", lambda self, pipe, entries: 0):
            yield
    elif part == "send-time check":
        # As before the check at send time: the batch's view trusted until the end of the batch,
        # and its outcomes written once, when the batch ends (what issues 10 and 11 replaced).
        def trusted(self: Any, recorders: Any, asked: list[Any]) -> list[tuple[list[bool], Any]]:
            return [([False] * len(emails), view) for _, view, _, emails, _ in asked]

        with (
            mock.patch.object(delivery._Checks, "_read", trusted),
            mock.patch.object(delivery._Checks, "kick", lambda self, recorder: None),
        ):
            yield
    elif part == "metrics":
        with mock.patch.object(telemetry, "metrics", _NoMetrics):
            yield
    else:
        yield


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="reminders per run (default 4000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median is printed (default 3)")
    parser.add_argument("--concurrency", type=int, default=8, help="batches at once, as a worker's threads (8)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13", help="a database of the benchmark's own")
    parser.add_argument("--ablate", action="store_true", help="also measure without the history, the metrics")
    parser.add_argument("--profile", type=Path, help="also write a cProfile of one more run here")
    args = parser.parse_args()
    parts = ["full", "history", "metrics", "send-time check"] if args.ablate else ["full"]
    figures: dict[str, list[tuple[float, float]]] = {part: [] for part in parts}
    with tempfile.TemporaryDirectory(prefix="bench-delivery-cpu-") as tmp:
        # As in a worker process (``exposition.prepare_multiprocess_dir``): each metric is a mapped file.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(Path(tmp, "metrics"))
        Path(tmp, "metrics").mkdir()
        sink = SmtpSink(Path(tmp), capture=False).start()
        ctx = BenchContext(args.redis_url, Path(tmp), smtp=sink)
        try:
            rules_path = write_bench_rules(ctx)
            measure(ctx, rules_path, n=min(args.n, 500), concurrency=args.concurrency, tag="warm")
            for i in range(args.repeat):
                for part in parts:
                    with without(part):
                        run = measure(ctx, rules_path, n=args.n, concurrency=args.concurrency, tag=f"{part}{i}")
                    figures[part].append(run)
            if args.profile is not None:
                profiler = cProfile.Profile()
                measure(ctx, rules_path, n=args.n, concurrency=args.concurrency, tag="prof", profiler=profiler)
                profiler.dump_stats(args.profile)
        finally:
            ctx.flush()
            sink.stop()
    runs = figures["full"]
    cpu = statistics.median(r[0] for r in runs)
    rate = statistics.median(r[1] for r in runs)
    print(
        f"delivery CPU per reminder: {cpu:.3f} ms (runs: {', '.join(f'{r[0]:.3f}' for r in runs)}); "
        f"{rate:,.0f} reminders/s in one process"
    )
    for part in parts[1:]:
        ablated = statistics.median(r[0] for r in figures[part])
        print(
            f"  without the {part}: {ablated:.3f} ms (runs: {', '.join(f'{r[0]:.3f}' for r in figures[part])}); "
            f"the {part} costs {cpu - ablated:.3f} ms, {100 * (cpu - ablated) / cpu:.1f} % of the delivery's CPU"
        )


if __name__ == "__main__":
    main()
