"""Rule files: the shipped default, every kind of mistake named by file, line and field, and live reloads."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import time
from pathlib import Path

import pytest

from worker.config.rulefile import RulesWatcher, check_rules, load_rules
from worker.config.settings import PROJECT_ROOT
from worker.domain.errors import RulesError
from worker.domain.rules import ReminderRule, RuleProblem, RuleSet

DEFAULT_RULES = PROJECT_ROOT / "rules" / "default.yaml"
SAMPLES = Path(__file__).parent / "rules_samples"

VALID = """\
deadline_days_before_start: 45
reminders:
  - id: first-notice
    anchor: deadline
    offset_days: -30
    send_time: "09:00"
    template: first-notice
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


def reminder_yaml(**fields: str) -> str:
    """A one-reminder file; each keyword replaces that field's YAML text, and "DROP" leaves the field out."""
    values = {
        "id": "first-notice",
        "anchor": "deadline",
        "offset_days": "-30",
        "send_time": '"09:00"',
        "template": "first-notice",
    } | fields
    body = "".join(f"    {key}: {value}\n" for key, value in values.items() if value != "DROP")
    return "reminders:\n  - " + body.removeprefix("    ")


def test_default_rules_send_three_notices_before_the_deadline_at_nine() -> None:
    rules = load_rules(DEFAULT_RULES, known_templates={"first-notice", "second-notice", "final-notice"})

    assert rules.deadline_days_before_start == 45
    assert rules.source == str(DEFAULT_RULES)
    assert [(r.id, r.anchor, r.offset_days, r.send_time, r.template, r.statuses) for r in rules.reminders] == [
        ("first-notice", "deadline", -30, time(9), "first-notice", frozenset({"pending"})),
        ("second-notice", "deadline", -7, time(9), "second-notice", frozenset({"pending"})),
        ("final-notice", "deadline", -1, time(9), "final-notice", frozenset({"pending"})),
    ]
    assert rules.by_id["second-notice"].offset_days == -7


def test_default_rules_file_explains_itself_to_operations_staff() -> None:
    comments = [line for line in DEFAULT_RULES.read_text().splitlines() if line.lstrip().startswith("#")]
    assert len(comments) >= 10


def test_a_valid_file_may_count_from_the_start_and_name_other_statuses() -> None:
    rules = load_rules(SAMPLES / "start_anchored.yaml")

    assert rules.deadline_days_before_start == 30
    assert rules.by_id["early"].send_time == time(10, 30)  # unquoted 10:30 is a time, not YAML's 630
    assert rules.by_id["last-call"].statuses == frozenset({"pending", "cancellation_requested"})


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        (VALID + "colour: red\n", 8, "colour", "unknown key"),
        (reminder_yaml(channel="email"), 7, "reminders[0].channel", "unknown key"),
        (reminder_yaml(send_time="DROP"), 2, "reminders[0].send_time", "missing"),
        ("deadline_days_before_start: 45\n", 1, "reminders", "missing"),
        (reminder_yaml(offset_days="thirty"), 4, "reminders[0].offset_days", "whole number"),
        (reminder_yaml(offset_days='"-30"'), 4, "reminders[0].offset_days", "whole number"),
        (reminder_yaml(offset_days="-2.5"), 4, "reminders[0].offset_days", "whole number"),
        (reminder_yaml(id="[a, b]"), 2, "reminders[0].id", "single value"),
        (reminder_yaml(id="first notice"), 2, "reminders[0].id", "plain name"),
        (reminder_yaml(template="../secrets"), 6, "reminders[0].template", "plain name"),
        (
            reminder_yaml(anchor="renewal"),
            3,
            "reminders[0].anchor",
            "unknown anchor 'renewal'; expected one of: deadline, start",
        ),
        (reminder_yaml(send_time='"24:00"'), 5, "reminders[0].send_time", "not a time of day"),
        (reminder_yaml(send_time='"9 am"'), 5, "reminders[0].send_time", "not a time of day"),
        (reminder_yaml(send_time=""), 5, "reminders[0].send_time", "empty value"),
        (reminder_yaml(statuses="[pending, lapsed]"), 7, "reminders[0].statuses[1]", "unknown status 'lapsed'"),
        (reminder_yaml(statuses="pending"), 7, "reminders[0].statuses", "expected a non-empty list"),
        (reminder_yaml(statuses="[]"), 7, "reminders[0].statuses", "expected a non-empty list"),
        (reminder_yaml(offset_days="1"), 4, "reminders[0].offset_days", "after the deadline"),
        (reminder_yaml(anchor="start", offset_days="-44"), 4, "reminders[0].offset_days", "use -45 or less"),
        (VALID.replace("45", "0"), 1, "deadline_days_before_start", "from 1 to 3660"),
        (VALID.replace("45", "-5"), 1, "deadline_days_before_start", "from 1 to 3660"),
        (VALID.replace("45", "45000"), 1, "deadline_days_before_start", "from 1 to 3660"),
        (reminder_yaml(offset_days="-3000000"), 4, "reminders[0].offset_days", "more than ten years"),
        ("reminders: []\n", 1, "reminders", "at least one reminder"),
        ("reminders:\n  first-notice: {}\n", 2, "reminders", "expected a list"),
        ("reminders:\n  - first-notice\n", 2, "reminders[0]", "expected a mapping"),
        ("- reminders\n", 1, "", "expected a mapping"),
        (VALID + "reminders: []\n", 8, "reminders", "duplicate key (first at line 2)"),
        (VALID + VALID.split("reminders:\n")[1], 8, "reminders[1].id", "duplicate id 'first-notice' (first at line 3)"),
        ("reminders:\n  - id: [first\n", 3, "", "not valid YAML"),
        ("reminders:\n\tbad: tab\n", 2, "", "not valid YAML"),
        ("reminders: []\n---\nreminders: []\n", 2, "", "not valid YAML"),
    ],
)
def test_each_kind_of_mistake_is_named_with_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, message: str
) -> None:
    path = write(tmp_path, text)

    problems = check_rules(path)

    assert [(p.file, p.line, p.field) for p in problems] == [(str(path), line, field)], problems
    assert message in problems[0].message


def test_a_template_that_does_not_exist_is_reported_only_when_templates_are_known(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)

    assert check_rules(path) == []
    assert check_rules(path, known_templates={"first-notice"}) == []
    problems = check_rules(path, known_templates={"second-notice"})
    assert [(p.line, p.field, p.message) for p in problems] == [
        (7, "reminders[0].template", "unknown template 'first-notice'; expected one of: second-notice")
    ]


def test_every_problem_in_a_file_is_reported_at_once_in_line_order() -> None:
    path = SAMPLES / "many_problems.yaml"

    problems = check_rules(path, known_templates={"first-notice", "final-notice"})

    assert [(p.line, p.field) for p in problems] == [
        (3, "reminder_count"),
        (8, "reminders[0].send_time"),
        (10, "reminders[1].id"),
        (12, "reminders[1].offset_days"),
        (14, "reminders[1].template"),
        (15, "reminders[1].statuses[1]"),
        (16, "reminders[2].template"),
        (18, "reminders[2].offset_days"),
    ]
    assert {p.file for p in problems} == {str(path)}


def test_invalid_yaml_is_reported_with_its_line_and_where_the_construct_began() -> None:
    problems = check_rules(SAMPLES / "invalid_yaml.yaml")

    assert [(p.line, p.field) for p in problems] == [(7, "")]
    assert "quoted scalar at line 5" in problems[0].message


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"", "the file is empty"), (b"# only a comment\n", "the file is empty"), (b"\xff\xfe", "not UTF-8")],
)
def test_an_empty_or_undecodable_file_is_one_problem_without_a_line(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_bytes(raw)

    [problem] = check_rules(path)

    assert (problem.line, problem.field) == (None, "")
    assert message in problem.message


def test_a_missing_file_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    [problem] = check_rules(tmp_path / "absent.yaml")

    assert "cannot read the file" in problem.message


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        (RuleProblem("r.yaml", 4, "reminders[0].send_time", "bad"), "r.yaml:4: reminders[0].send_time: bad"),
        (RuleProblem("r.yaml", 2, "", "not valid YAML"), "r.yaml:2: not valid YAML"),
        (RuleProblem("r.yaml", None, "", "the file is empty"), "r.yaml: the file is empty"),
    ],
)
def test_a_problem_reads_as_file_line_field_message(problem: RuleProblem, text: str) -> None:
    assert str(problem) == text


def test_load_rules_raises_rules_error_listing_every_problem() -> None:
    with pytest.raises(RulesError) as caught:
        load_rules(SAMPLES / "many_problems.yaml")

    assert len(caught.value.problems) == 7
    assert "many_problems.yaml:8: reminders[0].send_time:" in str(caught.value)


def test_plain_decimal_offsets_are_never_read_as_octal(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, reminder_yaml(offset_days="-010")))

    assert rules.reminders[0].offset_days == -10


def test_fingerprint_follows_meaning_not_layout(tmp_path: Path) -> None:
    original = load_rules(write(tmp_path, VALID))
    relaid = load_rules(write(tmp_path, "# tuned by ops\n" + VALID.replace('"09:00"', "'09:00'  # morning")))
    retimed = load_rules(write(tmp_path, VALID.replace("09:00", "09:30")))

    assert original.fingerprint == relaid.fingerprint
    assert original.fingerprint != retimed.fingerprint
    assert len(original.fingerprint) == 64


def notice(rule_id: str = "n", *, anchor: str = "deadline", offset_days: int = -1) -> ReminderRule:
    return ReminderRule(rule_id, anchor, offset_days, time(9), rule_id)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RuleSet(0, (notice(),)), "from 1 to 3660"),
        (lambda: RuleSet(45, (notice(offset_days=-4000),)), "ten years"),
        (lambda: RuleSet(45, ()), "at least one reminder"),
        (lambda: RuleSet(45, (notice("a"), notice("a"))), "unique"),
        (lambda: RuleSet(45, (notice(offset_days=2),)), "after the deadline"),
        (lambda: RuleSet(45, (notice(anchor="start", offset_days=-30),)), "use -45 or less"),
        (lambda: notice(anchor="middle"), "anchor"),
        (lambda: ReminderRule("n", "deadline", -1, time(9), "n", frozenset({"lapsed"})), "statuses"),
        (lambda: ReminderRule("n", "deadline", -1, time(9), "n", frozenset()), "statuses"),
    ],
)
def test_rules_built_in_code_are_held_to_the_same_limits_as_files(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_watcher_keeps_the_old_rules_and_logs_each_problem_when_an_edit_is_invalid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, VALID)
    watcher = RulesWatcher(path)
    before = watcher.rules

    path.write_text(VALID.replace('"09:00"', '"9 am"').replace("-30", "3"))
    with caplog.at_level(logging.ERROR, logger="worker.rules"):
        switched = watcher.maybe_reload()
        again = watcher.maybe_reload()

    assert (switched, again) == (False, False)
    assert watcher.rules is before
    logged = [r.getMessage() for r in caplog.records if r.name == "worker.rules"]
    assert any("keeping the rules in force" in m for m in logged)
    assert any(f"{path}:5: reminders[0].offset_days:" in m for m in logged)
    assert any(f"{path}:6: reminders[0].send_time:" in m for m in logged)
    assert len(logged) == 3, "a bad version is logged once, not on every poll"


def test_watcher_switches_to_a_valid_edit_and_reports_it_once(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    watcher = RulesWatcher(path)

    path.write_text(VALID.replace("-30", "-14"))

    assert watcher.maybe_reload() is True
    assert watcher.rules.reminders[0].offset_days == -14
    assert watcher.maybe_reload() is False


def test_watcher_recovers_after_a_bad_edit_is_fixed(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    watcher = RulesWatcher(path)

    path.write_text("reminders: [")
    assert watcher.maybe_reload() is False
    path.write_text(VALID.replace("09:00", "10:00"))

    assert watcher.maybe_reload() is True
    assert watcher.rules.reminders[0].send_time == time(10)


def test_watcher_does_not_count_a_comment_edit_as_a_switch(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    watcher = RulesWatcher(path)

    path.write_text("# reviewed by ops\n" + VALID)

    assert watcher.maybe_reload() is False


def test_watcher_keeps_the_rules_while_the_file_is_briefly_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, VALID)
    watcher = RulesWatcher(path)
    path.unlink()

    with caplog.at_level(logging.ERROR, logger="worker.rules"):
        assert watcher.maybe_reload() is False

    assert watcher.rules.by_id["first-notice"].offset_days == -30
    assert any("cannot read the file" in r.getMessage() for r in caplog.records)


def test_watcher_refuses_to_start_on_an_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError):
        RulesWatcher(write(tmp_path, "reminders: []\n"))
