"""bench/digest.py in miniature on the real Redis, so that it cannot rot unseen."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench/ is not installed with the package

from bench.context import BenchContext  # noqa: E402
from bench.digest import report, run  # noqa: E402

pytestmark = pytest.mark.integration


def test_the_digest_bench_measures_a_partners_digest_and_the_schedulers_look(redis_url, tmp_path):
    ctx = BenchContext(redis_url=redis_url, workdir=tmp_path, key_prefix="bench-smoke")
    try:
        digest, scheduler = run(ctx, renewals=90, partners=30, repeat=1)
    finally:
        ctx.close()
    # Deadlines one a day from 5 days ago: 61 from today to 60 days ahead, of which 6 decided (every tenth).
    assert digest.renewals == 90
    assert digest.rows == 55
    assert digest.message_bytes > 10_000
    assert scheduler == scheduler | {"partners": 30, "enqueued": 30, "enqueued_again": 0}
    text = report(digest, scheduler)
    assert "digest of one partner with 90 renewals (55 requiring action)" in text
