"""`renewals demo`: the bundled example events through the whole pipeline on the embedded default."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from .simulate import print_report, simulate

__all__ = ["run_demo"]


def run_demo(examples: Path, outbox: Path, *, until: datetime) -> int:
    """Simulate every example file into ``outbox`` and print the timeline of who got what, when."""
    files = sorted(examples.glob("*.jsonl"))
    if not files:
        print(f"no example events (*.jsonl) in {examples}")
        return 1
    rules = examples / "rules.yaml"  # the demo's rules: the default reminders and a weekly digest
    for path in files:
        print(f"== {path.name}: simulating up to {until.isoformat()}")
        report = simulate(path, until=until, outbox=outbox, rules_path=rules if rules.is_file() else None)
        print_report(report, outbox)
    return 0
