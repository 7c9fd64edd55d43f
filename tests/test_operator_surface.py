"""What a new operator meets first: help and version, refusals that say what to do, a loadable env file."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from factories import partner_updated, person

from worker.domain.errors import InvalidEvent
from worker.domain.events import parse_event
from worker.ops.cli import _build_parser, main

ROOT = Path(__file__).resolve().parent.parent


def _without_redis() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "ENV_FILE")}


def _all_parsers(parser: argparse.ArgumentParser, path: str = "renewals") -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.extend(_all_parsers(child, f"{path} {name}"))
    return found


def test_every_subcommand_has_a_description_and_every_argument_a_help():
    parsers = _all_parsers(_build_parser())
    assert len(parsers) > 20
    for path, parser in parsers[1:]:
        assert parser.description, f"{path} has no description"
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{path}: {action.dest} has no help"


def test_help_names_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["history", "--help"])
    assert "at most this many entries (default: 50)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "(default: 8)" in capsys.readouterr().out


def test_version_is_printed(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("renewals ")


def test_enqueue_without_redis_url_is_refused_and_points_at_simulate(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(partner_updated()) + "\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "enqueue", str(events)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_without_redis(),
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "REDIS_URL is not set" in proc.stderr and "renewals simulate" in proc.stderr


def test_run_without_redis_url_says_nothing_can_reach_it_and_points_at_demo_and_simulate():
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.ops.cli", "run", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_without_redis(),
        cwd=ROOT,
    )
    try:
        line = proc.stderr.readline() if proc.stderr else ""
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert "nothing outside this process can reach" in line
    assert "renewals demo" in line and "renewals simulate" in line


def test_the_example_env_file_loads_in_a_shell_and_as_env_file():
    script = (
        "set -a; . config/example.env; set +a; "
        f'{sys.executable} -c "from worker.config.settings import load_settings; '
        's = load_settings(); print(s.mail_from); print(s.rules_reload_s)"'
    )
    shell = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"]}, cwd=ROOT
    )
    assert shell.returncode == 0, shell.stderr
    # RULES_RELOAD_S is the file's last line: a line that stopped the shell would have dropped it.
    assert shell.stdout.splitlines() == ["Partner Renewals <renewals@example.com>", "5.0"]
    env = {"PATH": os.environ["PATH"], "ENV_FILE": "config/example.env"}
    code = "from worker.config.settings import load_settings; print(load_settings().mail_from)"
    direct = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert direct.stdout.strip() == "Partner Renewals <renewals@example.com>", direct.stderr


@pytest.mark.parametrize("domain", ["acme.test", "acme.invalid", "mail.localhost"])
def test_a_reserved_test_domain_is_refused_saying_why_and_what_to_use(domain):
    with pytest.raises(InvalidEvent) as exc:
        parse_event(partner_updated(notify_user=person("Anna", f"anna@{domain}")))
    message = str(exc.value)
    assert f"{domain} is a reserved domain" in message and "example.com" in message


def test_the_demo_says_first_that_the_examples_hold_a_bad_line_a_duplicate_and_a_stale_event(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "demo", "--outbox", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_without_redis(),
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    opening = proc.stdout[: proc.stdout.index("\nrejected:")]
    for said in ("wrong on purpose", "breaks the contract", "duplicate", "stale"):
        assert said in opening
