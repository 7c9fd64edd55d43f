"""The benchmark (bench/) in miniature on the real Redis and an in-test SMTP server, so it cannot rot unseen.

Each test calls the very phase functions ``python -m bench.run`` calls, with a handful of items.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import pytest
from smtp_fixtures import SmtpServer

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench/ is not installed with the package

from bench.baselines import naive_delivery, noop_drain, raw_aiosmtplib, sample_message, smtp_source  # noqa: E402
from bench.context import BenchContext  # noqa: E402
from bench.delivery_cpu import measure, without  # noqa: E402
from bench.e2e import run_burst, write_bench_rules  # noqa: E402
from bench.ingest import run_ingest  # noqa: E402
from bench.procs import stop_all  # noqa: E402
from bench.profiling import summarize  # noqa: E402
from bench.report import evaluate_targets, render_table  # noqa: E402
from bench.run import Options, run  # noqa: E402
from bench.scale import run_scale  # noqa: E402
from bench.sink import Sample, SinkBatch, find_postfix_tool, parse_capture_file  # noqa: E402

KEY_PREFIX = "bench-smoke"


class _RecordedTarget:
    """The aiosmtpd test server seen as the benchmark's SMTP target: what arrived since the last take."""

    def __init__(self, server: SmtpServer) -> None:
        self.server = server
        self.host = server.host
        self.port = server.port
        self._taken = 0

    def take(self) -> SinkBatch:
        received = self.server.messages[self._taken :]
        self._taken += len(received)
        ids: Counter[str] = Counter()
        for message in received:
            message_id = BytesHeaderParser().parsebytes(message.content)["Message-ID"]
            if message_id:
                ids[str(message_id).strip()] += 1
        sample = None
        if received:
            first = received[0]
            content = first.content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            sample = Sample(first.mail_from, tuple(first.rcpt_tos), content)
        return SinkBatch(len(received), ids, sample)


@pytest.fixture
def bench(redis_url: str, smtp_server: SmtpServer, tmp_path: Path) -> Iterator[BenchContext]:
    ctx = BenchContext(redis_url, tmp_path / "bench", smtp=_RecordedTarget(smtp_server), key_prefix=KEY_PREFIX)
    ctx.smtp_pool_size = 2
    yield ctx
    stop_all()
    ctx.flush()
    ctx.close()


@pytest.mark.integration
def test_bench_end_to_end_sends_each_reminder_once_through_the_real_scheduler_and_workers(bench: BenchContext) -> None:
    options = Options(n=30, processes=(1,), threads=4, phases=("e2e", "steady"), steady_rate=20, steady_s=1.0)
    results = run(bench, options)

    burst = results["e2e"]["burst_p1"]
    assert burst["completed"] and burst["valid"], burst
    assert burst["outcomes"] == {"sent": 30}
    assert burst["sink_ok"], burst
    assert burst["rate_per_s"] > 0
    assert 0 <= burst["latency_s"]["p50"] <= burst["latency_s"]["p99"] <= burst["latency_s"]["max"]
    assert burst["exit_codes"] == {"workers": 0, "scheduler": 0}
    steady = results["e2e"]["steady"]
    assert steady["completed"] and steady["outcomes"] == {"sent": 20} and steady["sink_ok"], steady
    assert bench.redis.dbsize() == 0  # every phase flushes its database


@pytest.mark.integration
def test_bench_delivery_cpu_measures_each_variant_and_every_reminder_is_sent(bench: BenchContext) -> None:
    rules_path = write_bench_rules(bench)
    for part in ("full", "history", "metrics", "send-time check"):
        with without(part):
            cpu_ms, rate = measure(bench, rules_path, n=12, concurrency=2, tag=part.replace(" ", "-"))
        assert cpu_ms > 0 and rate > 0  # measure raises unless every reminder was recorded sent
    received = bench.smtp.take()
    assert received.messages == 48 and len(received.message_ids) == 12  # the same 12 reminders, once a run


@pytest.mark.integration
def test_bench_e2e_runs_with_the_ablated_workers_too(bench: BenchContext) -> None:
    burst = run_burst(bench, renewals=10, processes=1, threads=2, worker_module="bench.ablated_entrypoint")
    assert burst["completed"] and burst["outcomes"] == {"sent": 10} and burst["sink_ok"], burst


@pytest.mark.integration
def test_bench_baselines_send_a_real_reminder_through_each_client(bench: BenchContext) -> None:
    sample = sample_message(bench)
    assert len(sample.recipients) == 4  # three To, one Cc
    assert b"Message-ID:" in sample.content

    raw = raw_aiosmtplib(bench, sample, messages=40, connections=4)
    assert raw["sink_messages"] == 40 and raw["rate_per_s"] > 0
    naive = naive_delivery(bench, sample, messages=10, concurrency=2)
    assert naive["sink_messages"] == 10 and naive["rate_per_s"] > 0
    drain = noop_drain(bench, messages=50, processes=1, threads=2)
    assert drain["rate_per_s"] > 0 and drain["exit_code"] == 0
    if find_postfix_tool("smtp-source"):
        source = smtp_source(bench, sample, messages=20, sessions=2)
        assert source["sink_messages"] == 20


@pytest.mark.integration
def test_bench_ingest_stores_and_plans_every_published_event(bench: BenchContext) -> None:
    result = run_ingest(bench, events=200, processes=1, threads=4, timeout_s=60)

    assert result["events"] == 200
    assert result["dead_letters"] == 0
    assert result["planned_reminders"] == 3 * 90  # 90 renewals, three default reminders each
    assert result["rate_per_s"] > 0 and result["exit_code"] == 0


@pytest.mark.integration
def test_bench_planning_scale_measures_memory_replan_and_worker_memory(bench: BenchContext) -> None:
    result = run_scale(bench, renewals=200, threads=2, replan_timeout_s=60, event_timeout_s=60)

    assert result["planned_reminders"] >= 600
    # INFO used_memory is the whole server's: on a shared Redis it moves with other clients, so
    # only the figure from MEMORY USAGE per kind of key is checked.
    assert set(result["redis_memory"]) >= {"total_mb", "state_mb", "plans_mb", "bytes_per_reminder"}
    assert set(result["memory_by_key_kind"]) >= {"due index (sorted set)", "renewal record"}
    by_kind = result["memory_by_key_kind_per_million_reminders"]
    assert by_kind["plans_mb"] > 0 and by_kind["state_mb"] > 0
    assert by_kind["total_mb"] == pytest.approx(by_kind["plans_mb"] + by_kind["state_mb"], abs=0.2)
    population = result["population"]
    assert (population["partners"], population["clients"], population["renewals"]) == (20, 200, 200)
    replan = result["replan_all"]
    assert replan["completed"] and replan["moved_to_new_time"], replan
    assert replan["due_index_size_after"] >= 200  # each renewal's next reminder
    for key in ("worker_rss_empty", "worker_rss_after_backlog", "worker_rss_started_with_backlog"):
        assert result[key]["max_worker_mb"] > 0
    assert result["partner_update"]["renewals_replanned"] == 10


def test_smtp_sink_capture_files_give_back_the_envelope_and_the_message() -> None:
    capture = (
        b"X-Client-Addr: 127.0.0.1\nX-Client-Proto: ESMTP\nX-Mail-Args: <from@example.com> SIZE=40\n"
        b"X-Rcpt-Args: <a@example.com>\nX-Rcpt-Args: <b@example.com>\nReceived: from x ([127.0.0.1])\n"
        b"\tby smtp-sink (smtp-sink) with ESMTP id 1;\n\tMon, 23 Nov 2026 18:54:33 +0000 (UTC)\n"
        b"Message-ID: <1@example.com>\nSubject: hi\n\nbody\n\n"
    )
    sample = parse_capture_file(capture)
    assert sample.sender == "from@example.com"
    assert sample.recipients == ("a@example.com", "b@example.com")
    assert sample.content == b"Message-ID: <1@example.com>\r\nSubject: hi\r\n\r\nbody\r\n"


def test_profile_summary_counts_self_and_inclusive_time_per_function(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        'process 1:"python";main (app.py:1);send (mail.py:10);encode (mail.py:20) 6\n'
        'process 1:"python";main (app.py:1);send (mail.py:12) 3\n'
        'process 2:"python";main (app.py:1);plan (plan.py:5) 1\n'
    )
    summary: dict[str, Any] = summarize(raw)
    assert summary["samples"] == 10
    assert summary["self"][0] == ["encode (mail.py)", 60.0]
    assert ["send (mail.py)", 90.0] in summary["total"]  # lines 10 and 12 are one function
    assert all(name != "main (app.py)" for name, _ in summary["total"])  # on every stack: left out


def test_targets_pass_and_fail_on_the_issue_thresholds() -> None:
    results: dict[str, Any] = {
        "e2e": {
            "burst_p2": {"rate_per_s": 1200.0, "processes": 2, "threads": 8, "renewals": 10, "outcomes": {}},
            "steady": {"latency_s": {"p99": 2.5}, "completed": True},
        },
        "baselines": {"raw_aiosmtplib_p2": {"rate_per_s": 1500.0}, "naive": {"rate_per_s": 400.0}},
        "ingest": {"rate_per_s": 2999.0},
        "scale": {
            "redis_memory": {"bytes_per_reminder": 280.0},
            "worker_rss_empty": {"max_worker_mb": 60.0},
            "worker_rss_after_backlog": {"max_worker_mb": 95.0},
        },
    }
    verdicts = {t.name: t.verdict for t in evaluate_targets(results)}

    assert list(verdicts.values()) == ["PASS", "PASS", "FAIL", "FAIL", "FAIL", "PASS", "FAIL"]
    assert "FAIL" in render_table(results, evaluate_targets(results))
