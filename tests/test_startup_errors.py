"""A wrong setting stops every kind of process with one line naming the variable, and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

COMMANDS = {
    "renewals run": [str(BIN / "renewals"), "run"],
    "renewals scheduler": [str(BIN / "renewals"), "scheduler"],
    "dramatiq worker.entrypoint": [str(BIN / "dramatiq"), "worker.entrypoint", "--processes", "1", "--threads", "1"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("name", "value"),
    [("SMTP_PORT", "seventy"), ("MAIL_FROM", "not an address"), ("MAIL_FROM", "A <a@example.com>, b@example.com")],
)
def test_a_wrong_setting_stops_the_process_with_one_line_naming_it(redis_url, tmp_path, command, name, value):
    env = {**os.environ, "REDIS_URL": redis_url, "OUTBOX_DIR": str(tmp_path), name: value}
    proc = subprocess.run(COMMANDS[command], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    naming = [line for line in proc.stderr.splitlines() if name in line]
    assert len(naming) == 1, proc.stderr
    assert naming[0].startswith("configuration error: invalid setting " + name), naming[0]
    assert "invalid setting settings" not in proc.stderr
