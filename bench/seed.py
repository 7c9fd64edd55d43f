"""Fast set-up of state for the phases that do not measure ingestion: the real Store and Planning, pipelined.

Events are validated as the store validates a record it reads back (every check but the e-mail
addresses', the costly one: the ingest phase measures that), then applied with the Store's own
script, queued on a pipeline instead of one round trip each. Planning goes through
``Planning.replan_many``, the path a rule change takes.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.config.settings import load_settings
from worker.domain.events import TRUSTED, ClientUpdated, Event, PartnerUpdated, RenewalUpdated
from worker.domain.rules import RuleSet
from worker.service.runtime import Runtime, build_runtime

from .data import Population

__all__ = [
    "apply_events",
    "forget_marks",
    "pending_marks",
    "plan_marked",
    "plan_refs",
    "planned_reminders",
    "seed_parallel",
    "trusted_event",
]

_MODELS: dict[str, Any] = {
    "partner.updated": PartnerUpdated,
    "client.updated": ClientUpdated,
    "renewal.updated": RenewalUpdated,
}


def trusted_event(raw: dict[str, Any]) -> Event:
    return _MODELS[raw["type"]].model_validate_json(json.dumps(raw), context=TRUSTED)  # type: ignore[no-any-return]


def apply_events(rt: Runtime, events: Iterable[Event], *, chunk: int = 1000) -> int:
    """``Store.apply_many`` every ``chunk`` events (one round trip each); every one must be applied."""
    count = 0
    outcomes: list[str] = []
    batch: list[Event] = []
    for event in events:
        batch.append(event)
        count += 1
        if len(batch) == chunk:
            outcomes += rt.store.apply_many(batch)
            batch = []
    outcomes += rt.store.apply_many(batch)
    refused = [o for o in outcomes if o != "applied"]
    if refused:
        raise RuntimeError(f"{len(refused)} seeded event(s) were not applied: {refused[:3]}")
    return count


def plan_refs(rt: Runtime, refs: Sequence[tuple[str, str]], rules: RuleSet, now: datetime) -> int:
    """Re-plan renewals (partner id, renewal id) as of ``now``, one ``replan_many`` per partner."""
    by_partner: dict[str, list[str]] = {}
    for partner_id, renewal_id in refs:
        by_partner.setdefault(partner_id, []).append(renewal_id)
    for partner_id, renewal_ids in by_partner.items():
        rt.planning.replan_many(partner_id, renewal_ids, rules, now)
    return len(refs)


def pending_marks(rt: Runtime) -> int:
    """Renewals, clients and partners applied events marked for the scheduler to re-plan."""
    return int(rt.redis.zcard(rt.keys.dirty()))


def plan_marked(rt: Runtime, rules: RuleSet, now: datetime) -> int:
    """``Planning.flush`` until nothing is marked: the scheduler's re-plan of ingested changes, as of ``now``."""
    total = 0
    while True:
        count = rt.planning.flush(rules, now)
        total += count
        if count == 0 or pending_marks(rt) == 0:
            return total


def forget_marks(rt: Runtime) -> int:
    """Drop the marks of renewals already planned here (by ``plan_refs``): nothing is left for a scheduler."""
    count = pending_marks(rt)
    rt.redis.delete(rt.keys.dirty())
    return count


def _share_events(pop: Population, share: int, shares: int, at: datetime) -> Iterable[Event]:
    for j in range(min(pop.partners, pop.renewals)):
        if j % shares == share:
            yield trusted_event(pop.partner_event(j, at=at))
    for i in range(pop.renewals):
        if (i % pop.partners) % shares == share:
            yield trusted_event(pop.client_event(i, at=at))
            yield trusted_event(pop.renewal_event(i, at=at))


def _seed_share(
    redis_url: str, key_prefix: str, rules_path: str, pop: Population, share: int, shares: int, stage: str, when: str
) -> tuple[int, float]:
    rt = build_runtime(load_settings(redis_url=redis_url, key_prefix=key_prefix, rules_path=Path(rules_path)))
    try:
        started = time.perf_counter()
        if stage == "store":
            count = apply_events(rt, _share_events(pop, share, shares, datetime.fromisoformat(when)))
        else:
            refs = [ref for i, ref in enumerate(pop.refs()) if (i % pop.partners) % shares == share]
            count = plan_refs(rt, refs, rt.rules(), datetime.fromisoformat(when))
        return count, time.perf_counter() - started
    finally:
        rt.close()


def seed_parallel(
    *,
    redis_url: str,
    key_prefix: str,
    rules_path: Path,
    pop: Population,
    stage: str,
    when: datetime,
    processes: int = 2,
    timeout_s: float = 900.0,
) -> dict[str, float]:
    """One stage from ``processes`` processes, each owning a share of the partners.

    ``stage="store"`` applies the population's events (occurred at ``when``); ``stage="plan"``
    plans every renewal as of ``when`` under the rules at ``rules_path``.
    """
    if stage not in ("store", "plan"):
        raise ValueError(f"stage must be 'store' or 'plan', not {stage!r}")
    started = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        jobs = [
            pool.apply_async(
                _seed_share,
                (redis_url, key_prefix, str(rules_path), pop, share, processes, stage, when.isoformat()),
            )
            for share in range(processes)
        ]
        results = [job.get(timeout=timeout_s) for job in jobs]
    return {"count": sum(r[0] for r in results), "wall_s": round(time.perf_counter() - started, 2)}


def planned_reminders(rt: Runtime, refs: Sequence[tuple[str, str]], *, sample: int = 100) -> tuple[int, int]:
    """(renewals in the due index, reminders planned for them).

    The due index holds each renewal's next reminder only; the others are in its plan, which is
    read for a sample of the renewals and must be as long for each (a benchmark population's
    renewals are all alike), so the count is not an estimate from the rules.
    """
    indexed = rt.due_index.size()
    step = max(1, len(refs) // sample)
    rules, now = rt.rules(), datetime.now(UTC)
    views = rt.planning.views(list(refs[::step][:sample]))
    lengths = {len(view.plan(rules, now).planned) for view in views}
    if len(lengths) != 1:
        raise RuntimeError(f"the sampled renewals have plans of different lengths: {sorted(lengths)}")
    return indexed, indexed * lengths.pop()
