"""History and steering with the real worker and scheduler processes running, seen through `renewals`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from redis_server import RedisServer
from service_processes import PREFIX, ROOT, Service, arrivals, wait_for
from test_delivery_faults import seed, tags

pytestmark = pytest.mark.integration


def renewals(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": redis_url, "KEY_PREFIX": PREFIX, "USER": "oncall"}
    return subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", *args], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )


def test_outcomes_deferrals_refusals_and_steering_are_visible_while_the_service_runs(
    private_redis: RedisServer, smtp_server, service: Service
) -> None:
    url = private_redis.url()
    n = 4
    seed(url, n)
    smtp_server.refuse("billing@acme.com", "550 5.1.1 Mailbox unavailable")
    smtp_server.reply_next("451 4.3.0 Try again later", at="MAIL", messages=2)
    service.worker()
    service.scheduler()
    wait_for(lambda: {t for t, _, _ in arrivals(smtp_server)} >= tags(n), 60, "every reminder delivered")

    def sent_entries() -> list[dict[str, object]]:
        rows = [
            json.loads(line)
            for line in renewals(url, "history", "--outcome", "sent", "--json").stdout.split("\n")
            if line
        ]
        return rows

    wait_for(lambda: len(sent_entries()) == n, 20, "every outcome in the history")
    deferred = [json.loads(x) for x in renewals(url, "history", "--outcome", "deferred", "--json").stdout.splitlines()]
    assert deferred and all("451" in d["reply"] for d in deferred), service.logs()
    sent = sent_entries()
    assert {s["renewal"] for s in sent} == {f"r{i}" for i in range(n)}
    assert all(s["client"] == "c1" and s["message_id"] and str(s["reply"]).startswith("250") for s in sent)
    assert max(int(str(s["attempt"])) for s in sent) >= 2  # a deferred one went on a later try

    listed = renewals(url, "suppressions", "list")
    assert "billing@acme.com  since" in listed.stdout and "550 5.1.1 Mailbox unavailable" in listed.stdout
    refused_in = [s["renewal"] for s in sent if "refused: billing@acme.com" in str(s["reason"])]
    left_out = [s["renewal"] for s in sent if "suppressed: billing@acme.com" in str(s["reason"])]
    assert refused_in and len(refused_in) + len(left_out) == n
    plan = renewals(url, "plan", "p1", str(refused_in[0]))
    assert plan.returncode == 0, plan.stderr
    assert "billing@acme.com (REFUSED: 550 5.1.1 Mailbox unavailable; suppressed since" in plan.stdout
    if left_out:  # sent once the address was suppressed: the plan says who was left out and why
        later = renewals(url, "plan", "p1", str(left_out[0])).stdout
        assert "not sent to (suppressed): billing@acme.com (refused by the mail server: 550 5.1.1" in later
    assert "showing the rules in force" not in plan.stderr  # the scheduler published the same rules
    worker_logs = "".join(p.read_text(errors="replace") for p in service.tmp_path.glob("worker-*.log"))
    # Logs mask addresses by default (LOG_ADDRESSES=masked): the refusal is there, the address shortened.
    assert "refused and now suppressed: b***@acme.com (550 5.1.1 Mailbox unavailable)" in worker_logs
    assert "billing@acme.com" not in worker_logs

    cancel = renewals(url, "cancel", "p1", "r1", "second-notice", "--reason", "client renewed by phone")
    assert cancel.returncode == 0, cancel.stderr
    steering = renewals(url, "history", "--renewal", "r1", "--outcome", "cancel").stdout
    assert "cancel" in steering and "by oncall" in steering and "client renewed by phone" in steering
