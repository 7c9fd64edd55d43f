"""Reminder rules: the YAML file operations staff edit to decide when reminders go out.

Every problem in a file is reported at once, each with its file, line and field.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import time
from functools import cached_property
from types import MappingProxyType
from typing import Literal, get_args

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .digest_schedule import DIGEST_OFF, DigestRule, check_digest
from .events import RenewalStatus

__all__ = [
    "ANCHORS", "DEFAULT_DEADLINE_DAYS_BEFORE_START", "RENEWAL_STATUSES", "Anchor", "ReminderRule",
    "RuleProblem", "RuleSet", "parse_rules", "rules_from_json",
]  # fmt: skip

Anchor = Literal["deadline", "start"]
ANCHORS: tuple[str, ...] = get_args(Anchor)
RENEWAL_STATUSES: frozenset[str] = frozenset(get_args(RenewalStatus))
DEFAULT_DEADLINE_DAYS_BEFORE_START = 45

# Ids and template names end up in store keys and template file names, so they are kept to
# plain names: no spaces, no dots, no slashes.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
_CLOCK = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")
_DECIMAL = re.compile(r"^[-+]?[0-9]+$")
_NULL_TAG = "tag:yaml.org,2002:null"
_TOP_KEYS = frozenset({"deadline_days_before_start", "reminders", "digest"})
_REMINDER_KEYS = frozenset({"id", "anchor", "offset_days", "send_time", "template", "statuses"})
# Day counts are bounded so that a typo cannot push date arithmetic out of range for every renewal.
_MAX_DAYS = 3660


def _offset_problem(anchor: str, offset_days: int, deadline_days: int | None) -> str | None:
    # The deadline is a day: a reminder due after it could no longer change anything.
    if abs(offset_days) > _MAX_DAYS:
        return f"{offset_days} days is more than ten years away: surely a typo"
    if anchor == "deadline" and offset_days > 0:
        return f"{offset_days} days after the deadline is too late: use 0 (the deadline day) or less"
    if anchor == "start" and deadline_days is not None and offset_days > -deadline_days:
        return (
            f"{offset_days} days from the start falls after the deadline ({deadline_days} days before the start): "
            f"use -{deadline_days} or less"
        )
    return None


def _json_value(value: object) -> object:
    return sorted(value) if isinstance(value, frozenset) else str(value)


@dataclass(frozen=True)
class ReminderRule:
    """One reminder, due ``offset_days`` from its anchor date at ``send_time`` in the recipients' time zone."""

    id: str
    anchor: Anchor
    offset_days: int
    send_time: time
    template: str
    statuses: frozenset[str] = frozenset({"pending"})

    def __post_init__(self) -> None:
        if self.anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, not {self.anchor!r}")
        if not self.statuses or not self.statuses <= RENEWAL_STATUSES:
            raise ValueError(f"statuses must be a non-empty subset of {sorted(RENEWAL_STATUSES)}")
        if self.send_time.tzinfo is not None:
            raise ValueError("send_time is the recipients' local time and must not carry a time zone")


@dataclass(frozen=True)
class RuleSet:
    """The reminders in force; constructing one by hand applies the same limits as the file check.

    ``digest`` is the partner digest's schedule (off unless the file has a ``digest:`` block).
    """

    deadline_days_before_start: int
    reminders: tuple[ReminderRule, ...]
    source: str = "<memory>"
    digest: DigestRule = DIGEST_OFF

    def __post_init__(self) -> None:
        if not 1 <= self.deadline_days_before_start <= _MAX_DAYS:
            raise ValueError(f"deadline_days_before_start must be from 1 to {_MAX_DAYS}")
        if not self.reminders:
            raise ValueError("at least one reminder is needed")
        ids = [rule.id for rule in self.reminders]
        if len(set(ids)) != len(ids):
            raise ValueError(f"reminder ids must be unique: {ids}")
        for rule in self.reminders:
            problem = _offset_problem(rule.anchor, rule.offset_days, self.deadline_days_before_start)
            if problem is not None:
                raise ValueError(f"reminder {rule.id!r}: {problem}")

    @cached_property
    def by_id(self) -> Mapping[str, ReminderRule]:
        """Each reminder by its id, read-only."""
        return MappingProxyType({rule.id: rule for rule in self.reminders})

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of what the reminder rules mean: a comment or layout edit keeps it, any change in meaning
        changes it. The digest's schedule is left out: changing it must not re-plan every renewal."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def to_json(self) -> str:
        """What the reminder rules mean, as canonical JSON (``rules_from_json`` reads it back): kept in
        Redis so that every process can tell what a rule edit changed."""
        content = [self.deadline_days_before_start, [asdict(rule) for rule in self.reminders]]
        return json.dumps(content, sort_keys=True, default=_json_value)


def rules_from_json(text: str | bytes, source: str = "<stored>") -> RuleSet:
    """The rules ``RuleSet.to_json`` wrote; raises ``ValueError`` on anything else."""
    try:
        deadline_days, reminders = json.loads(text)
        return RuleSet(
            int(deadline_days),
            tuple(
                ReminderRule(
                    id=str(item["id"]),
                    anchor=item["anchor"],
                    offset_days=int(item["offset_days"]),
                    send_time=time.fromisoformat(item["send_time"]),
                    template=str(item["template"]),
                    statuses=frozenset(item["statuses"]),
                )
                for item in reminders
            ),
            source,
        )
    except (TypeError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"not stored rules: {exc}") from None


@dataclass(frozen=True)
class RuleProblem:
    """One problem in a rule file; ``line`` is 1-based and ``field`` a path such as ``reminders[0].send_time``."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return repr(node.value)


class _Checker:
    """Walks the composed YAML nodes rather than loaded values so that every problem keeps its line."""

    def __init__(self, source: str, known_templates: Collection[str] | None) -> None:
        self.source = source
        self.known_templates = known_templates
        self.problems: list[RuleProblem] = []
        self.id_lines: dict[str, int] = {}

    def add(self, node: Node | None, field: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        self.problems.append(RuleProblem(self.source, line, field, message))

    def mapping(self, node: Node, field: str, allowed: frozenset[str], optional: frozenset[str]) -> dict[str, Node]:
        if not isinstance(node, MappingNode):
            self.add(node, field, f"expected a mapping of keys, got {_describe(node)}")
            return {}
        found: dict[str, Node] = {}
        keys: dict[str, Node] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, ScalarNode) else ""
            path = f"{field}.{name}" if field else name
            if name not in allowed:
                self.add(key, path or field, f"unknown key; expected one of: {', '.join(sorted(allowed))}")
            elif name in found:
                self.add(key, path, f"duplicate key (first at line {keys[name].start_mark.line + 1})")
            else:
                found[name], keys[name] = value, key
        for name in sorted(allowed - optional - found.keys()):
            self.add(node, f"{field}.{name}" if field else name, "missing")
        return found

    def text(self, node: Node | None, field: str) -> str | None:
        # Plain scalars are read as written, so `10:30`, `2024` or `yes` never turn into numbers or booleans.
        if node is None:
            return None
        if not isinstance(node, ScalarNode):
            self.add(node, field, f"expected a single value, got {_describe(node)}")
            return None
        if node.tag == _NULL_TAG:
            self.add(node, field, "empty value")
            return None
        return str(node.value)

    def name(self, node: Node | None, field: str, known: Collection[str] | None = None, what: str = "") -> str | None:
        value = self.text(node, field)
        if value is not None and not _NAME.match(value):
            self.add(node, field, f"{value!r} is not a plain name (letters, digits, '-' and '_')")
        elif value is not None and known is not None and value not in known:
            self.add(node, field, f"unknown {what} {value!r}; expected one of: {', '.join(sorted(known))}")
        else:
            return value
        return None

    def integer(self, node: Node | None, field: str) -> int | None:
        # Decimal only: YAML 1.1 would read `-010` as octal and `1:30` as 90.
        if node is None:
            return None
        if not isinstance(node, ScalarNode) or node.style is not None or not _DECIMAL.match(node.value):
            self.add(node, field, f"expected a whole number without quotes, got {_describe(node)}")
            return None
        return int(node.value)

    def clock_time(self, node: Node | None, field: str) -> time | None:
        value = self.text(node, field)
        match = _CLOCK.match(value) if value is not None else None
        if value is not None and match is None:
            self.add(node, field, f'{value!r} is not a time of day such as "09:00" (24-hour HH:MM)')
        return time(int(match[1]), int(match[2])) if match else None

    def statuses(self, node: Node | None, field: str) -> frozenset[str] | None:
        if node is None:
            return frozenset({"pending"})
        if not isinstance(node, SequenceNode) or not node.value:
            self.add(node, field, f"expected a non-empty list such as [pending], got {_describe(node)}")
            return None
        found = [self.name(item, f"{field}[{i}]", RENEWAL_STATUSES, "status") for i, item in enumerate(node.value)]
        return None if None in found else frozenset(s for s in found if s is not None)

    def reminder(self, node: Node, field: str, deadline_days: int | None) -> ReminderRule | None:
        fields = self.mapping(node, field, _REMINDER_KEYS, optional=frozenset({"statuses"}))
        at = {key: (fields.get(key), f"{field}.{key}") for key in _REMINDER_KEYS}
        rule_id = self.name(*at["id"])
        if rule_id is not None and rule_id in self.id_lines:
            self.add(*at["id"], f"duplicate id {rule_id!r} (first at line {self.id_lines[rule_id]})")
        elif rule_id is not None:
            self.id_lines[rule_id] = fields["id"].start_mark.line + 1
        anchor_name = self.name(*at["anchor"], ANCHORS, "anchor")
        anchor: Anchor | None = "deadline" if anchor_name == "deadline" else "start" if anchor_name == "start" else None
        offset_days = self.integer(*at["offset_days"])
        send_time = self.clock_time(*at["send_time"])
        template = self.name(*at["template"], self.known_templates, "template")
        statuses = self.statuses(*at["statuses"])
        problem = _offset_problem(anchor, offset_days, deadline_days) if anchor and offset_days is not None else None
        if problem is not None:
            self.add(*at["offset_days"], problem)
        if rule_id and anchor and offset_days is not None and send_time and template and statuses and not problem:
            return ReminderRule(rule_id, anchor, offset_days, send_time, template, statuses)
        return None

    def rule_set(self, root: Node) -> RuleSet | None:
        top = self.mapping(root, "", _TOP_KEYS, optional=frozenset({"deadline_days_before_start", "digest"}))
        deadline_days: int | None = DEFAULT_DEADLINE_DAYS_BEFORE_START
        if "deadline_days_before_start" in top:
            deadline_days = self.integer(top["deadline_days_before_start"], "deadline_days_before_start")
            if deadline_days is not None and not 1 <= deadline_days <= _MAX_DAYS:
                self.add(
                    top["deadline_days_before_start"], "deadline_days_before_start", f"must be from 1 to {_MAX_DAYS}"
                )
                deadline_days = None
        reminders = top.get("reminders")
        rules: list[ReminderRule | None] = []
        if isinstance(reminders, SequenceNode) and not reminders.value:
            self.add(reminders, "reminders", "empty: at least one reminder is needed")
        elif isinstance(reminders, SequenceNode):
            rules = [self.reminder(item, f"reminders[{i}]", deadline_days) for i, item in enumerate(reminders.value)]
        elif reminders is not None:
            self.add(reminders, "reminders", f"expected a list of reminders, got {_describe(reminders)}")
        digest = check_digest(self, top["digest"]) if "digest" in top else DIGEST_OFF
        if self.problems or deadline_days is None or digest is None:
            return None
        return RuleSet(deadline_days, tuple(r for r in rules if r is not None), self.source, digest)


def parse_rules(
    raw: bytes | RuleProblem, source: str, known_templates: Collection[str] | None = None
) -> tuple[list[RuleProblem], RuleSet | None]:
    """Every problem in a rule file's bytes (sorted by line), and its rules when there is none.

    ``raw`` may already be the problem met reading the file, so that callers report it the same way.
    """
    if isinstance(raw, RuleProblem):
        return [raw], None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [RuleProblem(source, None, "", f"not UTF-8 text (bad byte at offset {exc.start})")], None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = f"not valid YAML: {exc.problem or exc.context}"
        if exc.problem and exc.context and exc.context_mark is not None:
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        return [RuleProblem(source, line, "", message)], None
    except yaml.YAMLError as exc:
        return [RuleProblem(source, None, "", f"not valid YAML: {exc}")], None
    if root is None:
        return [RuleProblem(source, None, "", "the file is empty; expected a reminders list")], None
    checker = _Checker(source, known_templates)
    rules = checker.rule_set(root)
    # Sorted by line so that a reader can walk down the file; the sort is stable within a line.
    return sorted(checker.problems, key=lambda p: (p.line is None, p.line or 0)), rules
