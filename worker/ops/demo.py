"""`renewals demo`: the bundled example events through the whole pipeline on the embedded default."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ..config.settings import default_data_path
from .simulate import print_report, simulate

__all__ = ["run_demo"]

_BUNDLED_NOTE = """\
The bundled examples hold three events that are wrong on purpose, to show what the worker does with each:
  - one line breaks the contract: it is refused before it reaches the queue, and the "rejected:" line
    below names its line number and every bad field;
  - one event is sent twice (same event_id): the repeat is counted as a duplicate and changes nothing;
  - one event is older than the state it would replace: it is counted as stale and ignored.
"""


def run_demo(examples: Path, outbox: Path, *, until: datetime) -> int:
    """Simulate every example file into ``outbox`` and print the timeline of who got what, when."""
    files = sorted(examples.glob("*.jsonl"))
    if not files:
        print(f"no example events (*.jsonl) in {examples}")
        return 1
    rules = examples / "rules.yaml"  # the demo's rules: the default reminders and a weekly digest
    if examples == default_data_path("examples"):
        print(_BUNDLED_NOTE)
    for path in files:
        print(f"== {path.name}: simulating up to {until.isoformat()}")
        report = simulate(path, until=until, outbox=outbox, rules_path=rules if rules.is_file() else None)
        print_report(report, outbox)
    return 0
