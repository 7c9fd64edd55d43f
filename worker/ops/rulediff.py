"""`renewals rules diff`: what a candidate rule file would change over the stored renewals, or an events file's."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import fakeredis

from ..domain.errors import InvalidEvent
from ..domain.events import Event, parse_event
from ..domain.rulediff import CHANGE_KINDS, RuleDiff, RuleDiffer
from ..domain.rules import RuleSet
from ..state.facts import stored_plan_facts
from ..state.keys import Keys
from ..state.store import Store

__all__ = [
    "diff_events_file", "diff_json", "diff_store", "events_store", "format_diff", "read_events",
]  # fmt: skip

_BATCH = 1000


def diff_store(
    store: Store,
    old: RuleSet,
    new: RuleSet,
    *,
    now: datetime,
    sample_size: int = 5,
    assume_history: bool = False,
) -> RuleDiff:
    """Diff the plans of every stored renewal under ``old`` and ``new`` at ``now``; the ledger says what is final."""
    differ = RuleDiffer(old, new, now=now, assume_history=assume_history)
    diff = RuleDiff(sample_size=sample_size)
    for partner_id, renewal_id, facts in stored_plan_facts(store, batch=_BATCH):
        diff.add(partner_id, renewal_id, differ.changes(facts))
    return diff


def read_events(path: Path) -> tuple[list[Event], list[str]]:
    """The valid events of a JSON Lines file in file order, and a line for each refused one."""
    events: list[Event] = []
    refused: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(parse_event(line))
        except InvalidEvent as exc:
            refused.append(f"{path.name}:{number}: {exc}")
    return events, refused


def events_store(events: list[Event], *, at: datetime) -> Store:
    """An in-process store holding the events that occurred up to ``at``, applied as the worker applies them."""
    store = Store(fakeredis.FakeRedis(), keys=Keys("preview"), event_id_ttl_s=86_400)
    store.apply_many([event for event in events if event.occurred_at <= at], now=at)
    return store


def diff_events_file(
    path: Path, old: RuleSet, new: RuleSet, *, at: datetime, sample_size: int = 5
) -> tuple[RuleDiff, list[str]]:
    """Diff over the renewals of an events file as stored at ``at``, as if the rules in force had run until then."""
    events, refused = read_events(path)
    diff = diff_store(events_store(events, at=at), old, new, now=at, sample_size=sample_size, assume_history=True)
    return diff, refused


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M} UTC"


def format_diff(diff: RuleDiff, *, old: str, new: str, now: datetime) -> str:
    """The summary table per reminder id, then a sample of each kind of change."""
    lines = [f"rules diff at {now:%Y-%m-%d %H:%M} UTC: {old} -> {new}", ""]
    lines.append(f"{diff.renewals} renewal(s) examined, {diff.changed_renewals} would change")
    lines.append("")
    width = max([len("reminder"), *(len(rid) for rid in diff.counts)])
    header = f"{'reminder':<{width}}  " + "  ".join(f"{kind:>9}" for kind in CHANGE_KINDS)
    lines += [header, "-" * len(header)]
    for rid, per_kind in sorted(diff.counts.items()):
        lines.append(f"{rid:<{width}}  " + "  ".join(f"{per_kind[kind]:>9,}" for kind in CHANGE_KINDS))
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{diff.total(kind):>9,}" for kind in CHANGE_KINDS))
    for kind in CHANGE_KINDS:
        sample = diff.samples[kind]
        if not sample:
            continue
        lines += ["", f"{kind} (first {len(sample)} of {diff.total(kind):,}):"]
        for partner_id, renewal_id, change in sample:
            lines.append(
                f"  {partner_id}/{renewal_id} {change.reminder_id}: {_when(change.old_due)} -> {_when(change.new_due)}"
            )
    return "\n".join(lines)


def diff_json(diff: RuleDiff, *, old: str, new: str, now: datetime, refused: list[str]) -> str:
    return json.dumps({"at": now.isoformat(), "old": old, "new": new, "refused": refused, **diff.to_dict()}, indent=2)
