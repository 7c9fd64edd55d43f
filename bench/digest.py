"""The partner digest's costs (issue 14): building one partner's digest of 10,000 renewals, and a scheduler
finding the partners due a digest.

    .venv/bin/python -m bench.digest [--redis-url URL] [--renewals 10000] [--partners 10000]

Runs in the benchmark's own Redis database (flushed before and after; refused when it holds keys the
benchmark did not write), in this process, with no SMTP: the message is built, not sent. Prints the
figures. Target: a 10,000-renewal digest in under one second (read, rows, render, MIME).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from worker.domain.digest import build_digest, digest_recipients, requiring_action, rows_for
from worker.mail.digest_render import DigestRenderer
from worker.mail.message import build_message, message_id_for
from worker.service.digests import DigestScheduler, read_partner
from worker.service.runtime import Runtime
from worker.state.digests import DigestState, digest_ledger_id
from worker.state.ledger import Outcome

from .context import DEFAULT_REDIS_URL, MAIL_FROM, BenchContext
from .data import Population
from .run import _check_database
from .seed import apply_events, trusted_event

__all__ = ["DigestFigures", "main", "measure_digest", "measure_scheduler"]

# Monday 1 March 2027 08:00 UTC: the partners' weekly digest time (their time zone is UTC).
NOW = datetime(2027, 3, 1, 8, 0, tzinfo=UTC)
_RULES = """\
deadline_days_before_start: 45
reminders:
  - id: first-notice
    anchor: deadline
    offset_days: -30
    send_time: "09:00"
    template: first-notice
digest:
  every: weekly
  weekday: monday
  send_time: "08:00"
"""


@dataclass
class DigestFigures:
    renewals: int
    rows: int
    read_s: list[float]
    rows_s: list[float]
    render_s: list[float]
    message_s: list[float]
    message_bytes: int

    @property
    def total_s(self) -> list[float]:
        return [sum(parts) for parts in zip(self.read_s, self.rows_s, self.render_s, self.message_s, strict=True)]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def seed_partner(rt: Runtime, renewals: int) -> str:
    """One partner with ``renewals`` renewals (one client each), deadlines spread over 90 days, a third of
    them with a first notice already sent, a tenth decided."""
    population = Population(renewals=renewals, partners=1, tag="digest", partner_prefix="dp")
    first_deadline = NOW.date() - timedelta(days=5)
    at = NOW - timedelta(days=60)
    events = [trusted_event(population.partner_event(0, at=at))]
    for i in range(renewals):
        renewal = population.renewal_event(i, at=at)
        deadline = first_deadline + timedelta(days=i % 90)
        renewal["data"]["start_date"] = (deadline + timedelta(days=45)).isoformat()
        if i % 10 == 9:
            renewal["data"]["status"] = "renewed"
        events += [trusted_event(population.client_event(i, at=at)), trusted_event(renewal)]
    apply_events(rt, events)
    partner_id = population.partner_id(0)
    with rt.redis.pipeline(transaction=False) as pipe:
        for i in range(0, renewals, 3):
            outcome = Outcome("sent", NOW - timedelta(days=20), to=(f"primary@client{i}.example.com",))
            pipe.hsetnx(rt.keys.ledger(partner_id, f"r{i}"), "first-notice", outcome.to_json())
        pipe.execute()
    return partner_id


def measure_digest(rt: Runtime, partner_id: str, *, repeat: int = 3) -> DigestFigures:
    """Each step of the default notify user's digest, as the actor runs it, ``repeat`` times."""
    rules = rt.rules()
    renderer = DigestRenderer(rt.renderer)
    state_reader = DigestState(rt.store)
    figures = DigestFigures(0, 0, [], [], [], [], 0)
    for _ in range(repeat):
        state, read_s = _timed(lambda: read_partner(state_reader, partner_id, rules, NOW.date()))

        def rows(state: Any = state) -> Any:
            all_rows = requiring_action(
                state.facts,
                partner=state.partner,
                deadline_days_before_start=rules.deadline_days_before_start,
                today=NOW.date(),
                horizon_days=rules.digest.horizon_days,
            )
            recipient = digest_recipients(state.partner, state.overrides)[0]
            return build_digest(recipient, rows_for(recipient, all_rows))

        digest, rows_s = _timed(rows)
        rendered, render_s = _timed(
            lambda digest=digest, state=state: renderer.render(
                digest, partner_id=partner_id, partner=state.partner, locale="en", today=NOW.date(), horizon_days=60
            )
        )
        person = digest.recipient.person
        message_id = message_id_for(partner_id, digest_ledger_id(person.email), "digest/2027-W09", domain="x.example")
        data, message_s = _timed(
            lambda rendered=rendered, person=person, message_id=message_id: build_message(
                rendered,
                mail_from=MAIL_FROM,
                to=[person],
                cc=[],
                reply_to=None,
                message_id=message_id,
                reminder_tag=f"{partner_id}/digest/2027-W09",
                sent_at=NOW,
            )
        )
        figures.renewals = len(rt.store.renewal_ids(partner_id))
        figures.rows, figures.message_bytes = digest.total_count, len(data)
        figures.read_s.append(read_s)
        figures.rows_s.append(rows_s)
        figures.render_s.append(render_s)
        figures.message_s.append(message_s)
    return figures


def seed_partners(rt: Runtime, partners: int) -> None:
    population = Population(renewals=partners, partners=partners, tag="digest-p", partner_prefix="sp")
    apply_events(rt, [trusted_event(population.partner_event(j, at=NOW - timedelta(days=1))) for j in range(partners)])


def measure_scheduler(rt: Runtime, *, repeat: int = 3) -> dict[str, Any]:
    """A scheduler's look for partners due: when none is due (every tick but one a week) and when all are."""
    enqueued: list[tuple[str, str]] = []
    scheduler = DigestScheduler(DigestState(rt.store), rt.rules, lambda pid, period: enqueued.append((pid, period)))
    idle = [_timed(lambda: scheduler.run_once(NOW - timedelta(hours=1)))[1] for _ in range(repeat)]
    count, due_s = _timed(lambda: scheduler.run_once(NOW))
    again, again_s = _timed(lambda: scheduler.run_once(NOW + timedelta(minutes=1)))
    partners = len(rt.store.partner_ids())
    return {
        "partners": partners,
        "none_due_s": statistics.median(idle),
        "all_due_s": due_s,
        "enqueued": count,
        "already_enqueued_s": again_s,
        "enqueued_again": again,
    }


def _ms(values: list[float]) -> str:
    return f"{min(values) * 1000:8.1f} ms (median {statistics.median(values) * 1000:.1f})"


def report(digest: DigestFigures, scheduler: dict[str, Any]) -> str:
    total = min(digest.total_s)
    lines = [
        f"digest of one partner with {digest.renewals:,} renewals ({digest.rows:,} requiring action), best of "
        f"{len(digest.read_s)}:",
        f"  read the state              {_ms(digest.read_s)}",
        f"  rows, sort, totals, cut      {_ms(digest.rows_s)}",
        f"  render (text, HTML, inline)  {_ms(digest.render_s)}",
        f"  MIME message                 {_ms(digest.message_s)}  ({digest.message_bytes:,} bytes)",
        f"  total                        {total * 1000:8.1f} ms   target < 1000 ms: {'PASS' if total < 1 else 'FAIL'}",
        "",
        f"finding the partners due a digest, {scheduler['partners']:,} partners (a look every DIGEST_CHECK_S):",
        f"  none due                     {scheduler['none_due_s'] * 1000:8.1f} ms "
        f"({scheduler['none_due_s'] / max(scheduler['partners'], 1) * 1e6:.1f} µs a partner)",
        f"  all due, marked, enqueued    {scheduler['all_due_s'] * 1000:8.1f} ms ({scheduler['enqueued']:,} enqueued)",
        f"  all already enqueued         {scheduler['already_enqueued_s'] * 1000:8.1f} ms "
        f"({scheduler['enqueued_again']} enqueued again)",
    ]
    return "\n".join(lines)


def run(ctx: BenchContext, *, renewals: int, partners: int, repeat: int = 3) -> tuple[DigestFigures, dict[str, Any]]:
    rules_path = ctx.workdir / "digest-rules.yaml"
    rules_path.write_text(_RULES, encoding="utf-8")
    rt = ctx.runtime(rules_path)
    try:
        ctx.flush()
        partner_id = seed_partner(rt, renewals)
        digest = measure_digest(rt, partner_id, repeat=repeat)
        ctx.flush()
        seed_partners(rt, partners)
        scheduler = measure_scheduler(rt, repeat=repeat)
        ctx.flush()
    finally:
        rt.close()
    return digest, scheduler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.digest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--renewals", type=int, default=10_000, help="renewals of the one partner digested")
    parser.add_argument("--partners", type=int, default=10_000, help="partners the scheduler looks through")
    parser.add_argument("--workdir", default="bench/work", help="folder for the rule file")
    args = parser.parse_args(argv)
    ctx = BenchContext(redis_url=args.redis_url, workdir=Path(args.workdir), key_prefix="bench")
    _check_database(ctx.redis, ctx.key_prefix, force=False)
    try:
        digest, scheduler = run(ctx, renewals=args.renewals, partners=args.partners)
    finally:
        ctx.close()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{date.today().isoformat()}  python -m bench.digest --renewals {args.renewals} --partners {args.partners}")
    print(f"{os.cpu_count()} CPUs, load average {load} (at the end)")
    print(report(digest, scheduler))
    return 0


if __name__ == "__main__":
    sys.exit(main())
