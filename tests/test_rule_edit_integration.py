"""A rule edit under a running worker never mails at once (real `renewals run`, Redis, SMTP on loopback)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from factories import client_updated, partner_updated, renewal_updated
from test_delivery_integration import MAIL_FROM, wait_for

from worker import publish_many
from worker.config.settings import load_settings
from worker.service.runtime import build_runtime

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
REMINDER = '  - {{id: {id}, anchor: deadline, offset_days: {days}, send_time: "00:00", template: first-notice}}\n'
HEADER = "deadline_days_before_start: 45\nreminders:\n"


def test_a_reminder_added_with_its_time_passed_is_skipped_as_rule_change_and_never_sent(
    smtp_server, redis_url, tmp_path
):
    rules = tmp_path / "rules.yaml"
    rules.write_text(HEADER + REMINDER.format(id="first-notice", days=-30), encoding="utf-8")
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "KEY_PREFIX": "re",
        "SMTP_HOST": smtp_server.host,
        "SMTP_PORT": str(smtp_server.port),
        "SMTP_SECURITY": "none",
        "MAIL_FROM": MAIL_FROM,
        "RULES_PATH": str(rules),
        "RULES_RELOAD_S": "0.1",
        "SCHEDULER_POLL_S": "0.1",
    }
    rt = build_runtime(load_settings(redis_url=redis_url, key_prefix="re", rules_path=rules))
    # The first notice (deadline - 30 days, 00:00 UTC) was due yesterday; the reminder the edit adds
    # (deadline - 29 days) fell due today at 00:00: both are past. The renewal became known between
    # the two (yesterday noon), so the first notice is caught up and the added one is not late data.
    today = datetime.now(UTC).date()
    start = today + timedelta(days=45 + 29)
    known = datetime.combine(today - timedelta(days=1), datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
    events = [partner_updated(at=known.isoformat()), client_updated(timezone="UTC", at=known.isoformat())]
    events.append(renewal_updated(start_date=start.isoformat(), at=known.isoformat()))
    command = [str(Path(sys.executable).with_name("renewals")), "run", "--threads", "2"]
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        publish_many(events, runtime=rt)
        # The renewal arrived late: its latest missed reminder is caught up, once.
        wait_for(lambda: rt.ledger.outcome("p1", "r1", "first-notice") is not None, timeout_s=40)
        assert rt.ledger.outcome("p1", "r1", "first-notice").kind == "sent"
        assert len(smtp_server.messages) == 1

        rules.write_text(
            HEADER + REMINDER.format(id="first-notice", days=-30) + REMINDER.format(id="day-29", days=-29),
            encoding="utf-8",
        )
        wait_for(lambda: rt.ledger.outcome("p1", "r1", "day-29") is not None, timeout_s=40)
        added = rt.ledger.outcome("p1", "r1", "day-29")
        assert (added.kind, added.reason) == ("skipped", "rule_change")
        time.sleep(1.0)  # several scheduler ticks: nothing else may go out
        assert len(smtp_server.messages) == 1
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
        rt.close()
    assert proc.returncode == 0, stderr.decode()[-2000:]
