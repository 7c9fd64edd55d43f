"""bench/rulediff.py in miniature on the real Redis, so the rule-diff benchmark cannot rot unseen."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench/ is not installed with the package

from bench.context import BenchContext  # noqa: E402
from bench.rulediff import run_rule_diff  # noqa: E402


@pytest.mark.integration
def test_the_rule_diff_benchmark_moves_every_stored_reminder(redis_url: str, tmp_path: Path) -> None:
    ctx = BenchContext(redis_url, tmp_path / "bench", key_prefix="bench-rulediff")

    result = run_rule_diff(ctx, renewals=40, seed_processes=1)

    assert (result["renewals"], result["stored_reminders"], result["moved"]) == (40, 120, 120)
    assert result["reminders_per_s"] > 0
