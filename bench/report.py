"""The targets of issue 5, checked against a run's figures, and the table printed at the end of a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Target", "evaluate_targets", "render_table"]

RSS_LIMIT_MB = 150.0
RSS_GROWTH_MB = 10.0  # or 10 %, whichever is larger: what "not growing with the backlog" allows


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    goal: str
    passed: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return "n/a" if self.passed is None else ("PASS" if self.passed else "FAIL")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "goal": self.goal, "verdict": self.verdict}


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _at_least(value: float | None, goal: float) -> bool | None:
    return None if value is None else value >= goal


def ratios(results: dict[str, Any], processes: int) -> dict[str, float | None]:
    """The end-to-end rate with ``processes`` worker processes over each baseline."""
    rate = _get(results, "e2e", f"burst_p{processes}", "rate_per_s")
    base = results.get("baselines", {})
    raw_same = _get(base, f"raw_aiosmtplib_p{processes}", "rate_per_s") or _get(base, "raw_aiosmtplib_p1", "rate_per_s")
    return {
        "raw_aiosmtplib_same_processes": _ratio(rate, raw_same),
        "raw_aiosmtplib_one_process": _ratio(rate, _get(base, "raw_aiosmtplib_p1", "rate_per_s")),
        "naive": _ratio(rate, _get(base, "naive", "rate_per_s")),
        "noop_drain": _ratio(rate, _get(base, f"noop_p{processes}", "rate_per_s")),
        "smtp_source": _ratio(rate, _get(base, "smtp_source", "rate_per_s")),
        "smtp_source_no_capture": _ratio(rate, _get(base, "smtp_source_no_capture", "rate_per_s")),
    }


def evaluate_targets(results: dict[str, Any]) -> list[Target]:
    rate2 = _get(results, "e2e", "burst_p2", "rate_per_s")
    r2 = ratios(results, 2)
    p99 = _get(results, "e2e", "steady", "latency_s", "p99")
    ingest = _get(results, "ingest", "rate_per_s")
    per_reminder = _get(results, "scale", "redis_memory", "bytes_per_reminder")
    mb_per_million = None if per_reminder is None else round(per_reminder, 1)  # bytes each = MB per million
    scale = results.get("scale", {})
    rss_keys = ("worker_rss_empty", "worker_rss_after_backlog", "worker_rss_started_with_backlog")
    rss_sets = [scale.get(k) for k in rss_keys]
    rss_max = max((s["max_worker_mb"] for s in rss_sets if s and "max_worker_mb" in s), default=None)
    empty = _get(scale, "worker_rss_empty", "max_worker_mb")
    grown = [s["max_worker_mb"] - empty for s in rss_sets[1:] if s and "max_worker_mb" in s and empty is not None]
    growth = max(grown, default=None)
    growth_ok = None if growth is None or empty is None else growth <= max(RSS_GROWTH_MB, 0.1 * empty)
    rss_ok = None if rss_max is None else (rss_max <= RSS_LIMIT_MB and bool(growth_ok))
    steady_ok = None
    if p99 is not None:
        steady_ok = p99 < 2.0 and bool(_get(results, "e2e", "steady", "completed"))
    return [
        Target("end to end, 2 worker processes (reminders/s)", rate2, ">= 1000", _at_least(rate2, 1000)),
        Target(
            "end to end / raw aiosmtplib ceiling (same processes)",
            r2["raw_aiosmtplib_same_processes"],
            ">= 0.6",
            _at_least(r2["raw_aiosmtplib_same_processes"], 0.6),
        ),
        Target("end to end / naive delivery", r2["naive"], ">= 4", _at_least(r2["naive"], 4.0)),
        Target("p99 due -> 250, unsaturated (s)", p99, "< 2", steady_ok),
        Target("ingest (events/s)", ingest, ">= 3000", _at_least(ingest, 3000)),
        Target(
            "Redis MB per 1,000,000 planned reminders",
            mb_per_million,
            "<= 300",
            None if mb_per_million is None else mb_per_million <= 300,
        ),
        Target(
            f"worker RSS per process (MB; growth <= {RSS_GROWTH_MB:.0f} MB or 10%)",
            rss_max,
            f"<= {RSS_LIMIT_MB:.0f}, not growing",
            rss_ok,
        ),
    ]


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.2f}" if abs(value) < 10 else f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.1f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return f"{text}{unit}"


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    e2e = results.get("e2e", {})
    base = results.get("baselines", {})
    for key in sorted(k for k in e2e if k.startswith("burst_p")):
        run = e2e[key]
        lat = run.get("latency_s", {})
        label = (
            f"end to end burst, {_fmt(run.get('processes'))} proc x {_fmt(run.get('threads'))} threads, "
            f"N={_fmt(run.get('renewals'))}"
        )
        flags = "" if run.get("completed") else " (TIMED OUT)"
        flags += "" if run.get("valid", True) else " (planned late)"
        flags += "" if run.get("sink_ok", True) else " (SINK CHECK FAILED)"
        rows.append((label, _fmt(run.get("rate_per_s"), " /s") + flags, ""))
        rows.append(("  due -> 250 p50 / p99", f"{_fmt(lat.get('p50'), ' s')} / {_fmt(lat.get('p99'), ' s')}", ""))
        rows.append(
            (
                "  outcomes; sink messages, duplicate ids",
                f"{run.get('outcomes')}; "
                f"{_fmt(run.get('sink_messages'))}, {_fmt(run.get('sink_duplicate_message_ids'))}",
                "",
            )
        )
        cpu = run.get("cpu_ms_per_reminder") or {}
        rows.append(("  CPU ms per reminder", ", ".join(f"{k} {v}" for k, v in cpu.items()), ""))
        redis_use = run.get("redis") or {}
        if redis_use:
            rows.append(("  Redis commands per reminder (whole server)", _fmt(redis_use.get("commands_per_unit")), ""))
        r = ratios(results, int(key.removeprefix("burst_p")))
        rows.append(
            (
                "  x baselines: raw (same P) / raw P1 / naive / no-op / smtp-source",
                " / ".join(
                    _fmt(r[k])
                    for k in (
                        "raw_aiosmtplib_same_processes",
                        "raw_aiosmtplib_one_process",
                        "naive",
                        "noop_drain",
                        "smtp_source",
                    )
                ),
                "",
            )
        )
    steady = e2e.get("steady")
    if steady:
        lat = steady.get("latency_s", {})
        rows.append(
            (
                f"steady {_fmt(steady.get('rate_per_s_offered'))}/s for {_fmt(steady.get('renewals'))} reminders, "
                f"{_fmt(steady.get('processes'))} proc: p50 / p99",
                f"{_fmt(lat.get('p50'), ' s')} / {_fmt(lat.get('p99'), ' s')}",
                "",
            )
        )
    names = {
        "noop_p1": "no-op actor drain, 1 proc",
        "noop_p2": "no-op actor drain, 2 procs",
        "raw_aiosmtplib_p1": "raw aiosmtplib, 8 persistent connections, 1 proc",
        "raw_aiosmtplib_p2": "raw aiosmtplib, 8 persistent connections x 2 procs",
        "naive": "naive: EmailMessage + aiosmtplib.send() each, 8 at once",
        "smtp_source": "smtp-source -d -s 20 (capturing sink)",
        "smtp_source_no_capture": "smtp-source -d -s 20 (sink without capture)",
    }
    for key, label in names.items():
        if key in base:
            rows.append((label, _fmt(base[key].get("rate_per_s"), " /s"), ""))
    ingest = results.get("ingest")
    if ingest:
        rows.append(
            (
                f"ingest {_fmt(ingest.get('events'))} events (publish_many), "
                f"{_fmt(ingest.get('processes'))} proc x {_fmt(ingest.get('threads'))}",
                _fmt(ingest.get("rate_per_s"), " /s"),
                "",
            )
        )
        rows.append(("  publish_many alone (producer)", _fmt(ingest.get("publish_per_s"), " /s"), ""))
        rows.append(
            (
                "  all planned by the scheduler after (renewals/s)",
                f"{_fmt(ingest.get('planned_s'), ' s')} ({_fmt(ingest.get('planned_renewals_per_s'))})",
                "",
            )
        )
        cpu = ingest.get("cpu_ms_per_event") or {}
        rows.append(("  CPU ms per event", ", ".join(f"{k} {v}" for k, v in cpu.items()), ""))
        if ingest.get("redis"):
            commands = _fmt(ingest["redis"].get("commands_per_unit"))
            rows.append(("  Redis commands per event (whole server)", commands, ""))
    scale = results.get("scale")
    if scale:
        mem = scale.get("redis_memory", {})
        pop = scale.get("population", {})
        who = ""
        if pop:
            who = f" ({pop.get('renewals', 0):,} renewals, {pop.get('clients', 0):,} clients"
            who += f", {pop.get('partners', 0)} partners)"
        rows.append(
            (
                f"planning: {scale.get('planned_reminders', 0):,} reminders{who}, Redis MB total (state + plans)",
                f"{_fmt(mem.get('total_mb'))} ({_fmt(mem.get('state_mb'))} + {_fmt(mem.get('plans_mb'))})",
                "",
            )
        )
        rows.append(
            (
                "  Redis MB per 1,000,000 reminders, total (state + plans)",
                f"{_fmt(mem.get('bytes_per_reminder'))} ({_fmt(mem.get('state_bytes_per_reminder'))}"
                f" + {_fmt(mem.get('plan_bytes_per_reminder'))})",
                "",
            )
        )
        keyed = scale.get("memory_by_key_kind_per_million_reminders")
        if keyed:
            rows.append(
                (
                    "  the same from MEMORY USAGE per kind of key",
                    f"{_fmt(keyed.get('total_mb'))} ({_fmt(keyed.get('state_mb'))} + {_fmt(keyed.get('plans_mb'))})",
                    "",
                )
            )
        for name, row in scale.get("memory_by_key_kind", {}).items():
            if "part" in row:
                value = f"{_fmt(row.get('bytes_each'))} B x {row.get('count', 0):,} = {_fmt(row.get('mb'))} MB"
                rows.append((f"    {name} ({row['part']})", value, ""))
        if "pending_marks_after_ingest_mb" in mem:
            rows.append(
                (
                    "  re-plan marks after ingest, until the scheduler drains them (MB)",
                    _fmt(mem.get("pending_marks_after_ingest_mb")),
                    "",
                )
            )
        replan = scale.get("replan_all", {})
        done = (
            ""
            if replan.get("completed")
            else f" (TIMED OUT at {replan.get('timeout_s')} s, est. total "
            f"{_fmt(replan.get('estimated_total_s'), ' s')})"
        )
        rows.append(("  replan_all after a rule change", f"{_fmt(replan.get('elapsed_s'), ' s')}{done}", ""))
        rows.append(("  replan_all renewals/s", _fmt(replan.get("renewals_per_s")), ""))
        update = scale.get("partner_update", {})
        rows.append(
            (
                f"  partner.updated: its {update.get('renewals_replanned', 0):,} renewals re-planned (scheduler)",
                _fmt(update.get("elapsed_s"), " s"),
                "",
            )
        )
        for key, label in (
            ("worker_rss_empty", "empty"),
            ("worker_rss_after_backlog", "same worker, backlog"),
            ("worker_rss_started_with_backlog", "started with backlog"),
        ):
            rss = scale.get(key)
            if rss:
                value = f"{rss.get('main_mb')} / {rss.get('workers_mb')}"
                rows.append((f"  worker RSS, {label} (main / workers MB)", value, ""))
        if "scheduler_rss_empty_mb" in scale:
            value = f"{scale.get('scheduler_rss_empty_mb')} / {scale.get('scheduler_rss_after_partner_update_mb')}"
            rows.append(("  scheduler RSS, empty / after the partner re-plan (MB)", value, ""))
    return rows


def render_table(results: dict[str, Any], targets: list[Target]) -> str:
    rows = _rows(results)
    width = max([len(r[0]) for r in rows] + [40])
    lines = [f"{'measure':<{width}}  value", "-" * (width + 30)]
    lines += [f"{label:<{width}}  {value}" for label, value, _ in rows]
    lines += ["", f"{'target':<{width}}  {'value':>10}  {'goal':<22} verdict", "-" * (width + 45)]
    lines += [f"{t.name:<{width}}  {_fmt(t.value):>10}  {t.goal:<22} {t.verdict}" for t in targets]
    for name, profile in sorted(results.get("profiles", {}).items()):
        if not name.endswith("-cpu"):
            continue
        lines += ["", f"profile {name} ({profile.get('samples', 0)} samples holding the GIL): self %"]
        lines += [f"  {pct:5.1f}  {fn}" for fn, pct in profile.get("self", [])[:12]]
        lines += ["  inclusive %:"]
        lines += [f"  {pct:5.1f}  {fn}" for fn, pct in profile.get("total", [])[:12]]
    return "\n".join(lines)
