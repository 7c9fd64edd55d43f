"""Issue 5's benchmark in one command: ``.venv/bin/python -m bench.run [--n 20000] [--quick] [--profile]``.

Runs on this machine's Redis (its own database, flushed before and after) and Postfix's smtp-sink on
a loopback port, prints a table with the targets, and writes every figure to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from .baselines import naive_delivery, noop_drain, raw_aiosmtplib, sample_message, smtp_source
from .context import DEFAULT_REDIS_URL, BenchContext
from .e2e import run_burst, run_steady
from .ingest import run_ingest
from .procs import ROOT, stop_all
from .profiling import PySpy, find_py_spy
from .report import Target, evaluate_targets, render_table
from .scale import changed_rules, run_replan_all, run_scale, seed_for_replan
from .sink import SmtpSink, find_postfix_tool

__all__ = ["Options", "main", "run"]

PHASES = ("baselines", "e2e", "steady", "ingest", "scale")
RESULTS_DIR = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Options:
    n: int = 20_000
    processes: tuple[int, ...] = (1, 2)
    threads: int = 8
    pool_size: int = 8
    events: int = 100_000
    scale_renewals: int = 333_334
    steady_s: float = 20.0
    steady_rate: float | None = None  # None: half the 2-process burst rate, from 20/s to 1,000/s
    naive_messages: int = 2_000
    e2e_timeout_s: float = 600.0
    ingest_timeout_s: float = 900.0
    replan_timeout_s: float = 300.0
    phases: tuple[str, ...] = PHASES
    profile: bool = False
    profile_n: int = 5_000
    profile_events: int = 20_000
    profile_renewals: int = 50_000
    quick: bool = False

    @classmethod
    def quick_run(cls, **overrides: Any) -> Options:
        values: dict[str, Any] = {
            "n": 2_000,
            "events": 10_000,
            "scale_renewals": 20_000,
            "steady_s": 5.0,
            "naive_messages": 300,
            "e2e_timeout_s": 180.0,
            "ingest_timeout_s": 300.0,
            "replan_timeout_s": 60.0,
            "profile_n": 2_000,
            "profile_events": 5_000,
            "profile_renewals": 10_000,
            "quick": True,
        }
        values.update(overrides)
        return cls(**values)


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _machine(ctx: BenchContext) -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    server = ctx.redis.info("server")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        # Others edit worker/ too: say whether the code measured differs from the commit.
        "git_uncommitted": _git("status", "--porcelain", "--", "worker", "bench", "rules", "templates").splitlines(),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "redis_server": server.get("redis_version"),
        "packages": {name: version(name) for name in ("dramatiq", "redis", "aiosmtplib", "pydantic")},
        "smtp_sink": shutil.which("smtp-sink") or "/usr/sbin/smtp-sink",
    }


def _check_database(client: redis.Redis, key_prefix: str, *, force: bool) -> None:
    """Refuse to flush a database that holds keys this benchmark did not write."""
    foreign = [
        key
        for key in client.scan_iter(count=1000)
        if not key.decode(errors="replace").startswith((f"{key_prefix}:", f"{key_prefix}-queue"))
    ]
    if foreign and not force:
        raise SystemExit(
            f"{client.connection_pool.connection_kwargs.get('db')}: the benchmark database holds "
            f"{len(foreign)} key(s) it did not write (e.g. {foreign[0]!r}); pick another with --redis-url "
            "or pass --force-flush"
        )


def _log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def run(
    ctx: BenchContext,
    options: Options,
    *,
    profiler: PySpy | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every phase asked for, in order, against ``ctx.smtp``; each phase cleans up after itself.

    A phase that fails is recorded as ``{"error": ...}`` and the next one runs; ``on_progress``
    gets the results after each phase (``main`` writes them, so a late failure loses nothing).
    The SMTP phases are left out without an SMTP server; smtp-source is left out when Postfix's
    tools are not installed (``main`` installs them; the smoke test does not).
    """
    results: dict[str, Any] = {"baselines": {}, "e2e": {}, "profiles": {}}
    smtp = ctx.smtp is not None

    def phase(section: dict[str, Any], key: str, measure: Callable[[], Any]) -> Any:
        try:
            section[key] = measure()
        except Exception as exc:  # recorded; the other phases still run
            section[key] = {"error": f"{type(exc).__name__}: {exc}"}
            _log(f"  {key} failed: {section[key]['error']}")
        if on_progress is not None:
            on_progress(results)
        return section[key]

    if "baselines" in options.phases and smtp:
        _baselines(ctx, options, results["baselines"], phase)
    if "e2e" in options.phases and smtp:
        for processes in options.processes:
            _log(f"end to end: {options.n:,} reminders, {processes} process(es) x {options.threads} threads ...")
            burst = phase(
                results["e2e"],
                f"burst_p{processes}",
                functools.partial(
                    run_burst,
                    ctx,
                    renewals=options.n,
                    processes=processes,
                    threads=options.threads,
                    timeout_s=options.e2e_timeout_s,
                ),
            )
            lat = burst.get("latency_s", {})
            rate = burst.get("rate_per_s")
            _log(f"  {rate}/s, p50 {lat.get('p50')} s, p99 {lat.get('p99')} s, {burst.get('outcomes')}")
    if "steady" in options.phases and smtp:
        processes = max(options.processes)
        rate = options.steady_rate
        if rate is None:
            measured = results["e2e"].get(f"burst_p{processes}", {}).get("rate_per_s") or 100.0
            rate = max(20.0, min(1000.0, round(measured / 2)))
        _log(f"steady: {rate}/s for {options.steady_s} s, {processes} process(es) ...")
        steady = phase(
            results["e2e"],
            "steady",
            lambda: run_steady(
                ctx, rate_per_s=rate, duration_s=options.steady_s, processes=processes, threads=options.threads
            ),
        )
        _log(f"  p50 {steady.get('latency_s', {}).get('p50')} s, p99 {steady.get('latency_s', {}).get('p99')} s")
    if "ingest" in options.phases:
        processes = max(options.processes)
        _log(f"ingest: {options.events:,} events, {processes} process(es) x {options.threads} threads ...")
        ingest = phase(
            results,
            "ingest",
            lambda: run_ingest(
                ctx,
                events=options.events,
                processes=processes,
                threads=options.threads,
                timeout_s=options.ingest_timeout_s,
            ),
        )
        _log(f"  {ingest.get('rate_per_s')} events/s (publish {ingest.get('publish_per_s')}/s)")
    if "scale" in options.phases:
        _log(f"planning at scale: {options.scale_renewals:,} renewals ...")
        scale = phase(
            results,
            "scale",
            lambda: run_scale(
                ctx,
                renewals=options.scale_renewals,
                threads=options.threads,
                replan_timeout_s=options.replan_timeout_s,
            ),
        )
        _log(f"  {scale.get('redis_memory')}, replan_all {scale.get('replan_all', {}).get('elapsed_s')} s")
    if profiler is not None:
        phase(results, "profiles", lambda: _profiles(ctx, options, profiler))
    return results


def _baselines(ctx: BenchContext, options: Options, base: dict[str, Any], phase: Any) -> None:
    n = options.n
    sample = sample_message(ctx)
    _log(f"baselines: sample reminder {len(sample.content):,} bytes to {len(sample.recipients)} recipients")
    if find_postfix_tool("smtp-source") and find_postfix_tool("smtp-sink"):
        phase(base, "smtp_source", lambda: smtp_source(ctx, sample, messages=n))

        def without_capture() -> dict[str, Any]:
            with SmtpSink(ctx.workdir, capture=False) as bare:
                bare_ctx = BenchContext(ctx.redis_url, ctx.workdir, smtp=bare, key_prefix=ctx.key_prefix)
                return smtp_source(bare_ctx, sample, messages=n)

        phase(base, "smtp_source_no_capture", without_capture)
        _log(
            f"smtp-source: {base['smtp_source'].get('rate_per_s')}/s, without capture "
            f"{base['smtp_source_no_capture'].get('rate_per_s')}/s"
        )
    for processes in options.processes:
        key = f"raw_aiosmtplib_p{processes}"
        phase(base, key, lambda p=processes: raw_aiosmtplib(ctx, sample, messages=min(n, 10_000), processes=p))
        _log(f"raw aiosmtplib x{processes}: {base[key].get('rate_per_s')}/s")
    phase(base, "naive", lambda: naive_delivery(ctx, sample, messages=min(n, options.naive_messages)))
    _log(f"naive delivery: {base['naive'].get('rate_per_s')}/s")
    for processes in options.processes:
        key = f"noop_p{processes}"
        phase(base, key, lambda p=processes: noop_drain(ctx, messages=n, processes=p, threads=options.threads))
        _log(f"no-op drain x{processes}: {base[key].get('rate_per_s')}/s")


def _profiles(ctx: BenchContext, options: Options, profiler: PySpy) -> dict[str, Any]:
    """Separate, smaller runs with py-spy attached: the figures above are never taken under a profiler."""
    out: dict[str, Any] = {}
    processes = max(options.processes)
    if ctx.smtp is not None:
        _log(f"profile: end to end, {options.profile_n:,} reminders ...")
        burst = run_burst(
            ctx,
            renewals=options.profile_n,
            processes=processes,
            threads=options.threads,
            timeout_s=options.e2e_timeout_s,
            profiler=profiler,
            profile_name="delivery",
        )
        out.update(burst.get("profiles", {}))
    _log(f"profile: ingest, {options.profile_events:,} events ...")
    ingest = run_ingest(
        ctx,
        events=options.profile_events,
        processes=processes,
        threads=options.threads,
        timeout_s=options.ingest_timeout_s,
        profiler=profiler,
    )
    out.update(ingest.get("profiles", {}))
    _log(f"profile: replan_all of {options.profile_renewals:,} renewals ...")
    seed_for_replan(ctx, options.profile_renewals)
    try:
        replan = run_replan_all(
            ctx,
            changed_rules(ctx),
            renewals=options.profile_renewals,
            timeout_s=options.replan_timeout_s,
            profiler=profiler,
        )
    finally:
        ctx.flush()
    out.update(replan.get("profiles", {}))
    return out


def _parse(argv: list[str] | None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--n", type=int, help="reminders in each end-to-end run (default 20,000; --quick 2,000)")
    parser.add_argument("--quick", action="store_true", help="small sizes everywhere: a few minutes")
    parser.add_argument("--profile", action="store_true", help="also profile delivery, ingest and replan (py-spy)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma separated, of: {', '.join(PHASES)}")
    parser.add_argument("--processes", default="1,2", help="worker process counts for the end-to-end runs")
    parser.add_argument("--threads", type=int, default=8, help="dramatiq threads per worker process")
    parser.add_argument("--pool-size", type=int, default=8, help="SMTP_POOL_SIZE of the workers")
    parser.add_argument("--events", type=int, help="events in the ingest phase (default 100,000)")
    parser.add_argument("--scale-renewals", type=int, help="renewals in the planning phase (default 333,334)")
    parser.add_argument("--replan-timeout", type=float, help="seconds replan_all may take (default 300)")
    parser.add_argument("--steady-rate", type=float, help="reminders/s of the unsaturated run (default: half)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="the benchmark's own Redis database")
    parser.add_argument("--key-prefix", default="bench")
    parser.add_argument("--force-flush", action="store_true", help="flush the database even if others' keys are in")
    parser.add_argument("--out", type=Path, help="results file (default bench/results/<date>-<commit>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, raw profiles)")
    args = parser.parse_args(argv)
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    overrides: dict[str, Any] = {
        "phases": phases,
        "profile": args.profile,
        "processes": tuple(int(p) for p in args.processes.split(",")),
        "threads": args.threads,
        "pool_size": args.pool_size,
        "steady_rate": args.steady_rate,
    }
    for name, value in (
        ("n", args.n),
        ("events", args.events),
        ("scale_renewals", args.scale_renewals),
        ("replan_timeout_s", args.replan_timeout),
    ):
        if value is not None:
            overrides[name] = value
    options = Options.quick_run(**overrides) if args.quick else Options(**overrides)
    return options, args


def _write_results(out: Path, meta: dict[str, Any], options: Options, results: dict[str, Any]) -> list[Target]:
    targets = evaluate_targets(results)
    document = {
        "meta": meta,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.__dict__.items()},
        **results,
        "targets": [t.as_dict() for t in targets],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return targets


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    options, args = _parse(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)  # so every finally: block runs and cleans up
    workdir = Path(tempfile.mkdtemp(prefix="renewals-bench-"))
    ctx = BenchContext(args.redis_url, workdir, key_prefix=args.key_prefix, smtp_pool_size=options.pool_size)
    _check_database(ctx.redis, args.key_prefix, force=args.force_flush)
    profiler = None
    if options.profile:
        if find_py_spy() is None:
            raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
        profiler = PySpy(workdir / "profiles")
    started = time.monotonic()
    sink = None
    try:
        ctx.flush()
        meta = _machine(ctx)
        needs_smtp = bool({"baselines", "e2e", "steady"} & set(options.phases)) or options.profile
        if needs_smtp:
            sink = SmtpSink(workdir).start()
            ctx.smtp = sink
            meta["smtp_capture_dir"] = str(sink.capture_dir)
        _log(f"bench on {meta['cpu_count']} CPU(s), commit {meta['git_commit'][:10]}, work folder {workdir}")
        out = args.out or RESULTS_DIR / (
            f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{meta['git_commit'][:8] or 'nogit'}"
            f"{'-quick' if options.quick else ''}.json"
        )

        def write(results: dict[str, Any]) -> None:
            _write_results(out, meta, options, results)

        results = run(ctx, options, profiler=profiler, on_progress=write)
    finally:
        if sink is not None:
            sink.stop()
        stop_all()
        try:
            ctx.flush()
        finally:
            ctx.close()
    meta["load_average_at_end"] = list(os.getloadavg())
    meta["duration_s"] = round(time.monotonic() - started, 1)
    targets = _write_results(out, meta, options, results)
    if profiler is not None:
        kept = out.with_suffix("").with_name(out.stem + "-profiles")
        shutil.copytree(workdir / "profiles", kept, dirs_exist_ok=True)
    print()
    print(render_table(results, targets))
    print(f"\nresults: {out} ({meta['duration_s']:.0f} s)")
    if args.keep:
        print(f"work folder kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
