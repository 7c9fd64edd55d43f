"""The rule file on disk: read it, check it, and watch it for edits while the service runs.

The rules themselves (parsing, checking, the RuleSet) are pure and live in ``worker.domain.rules``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection
from pathlib import Path

from ..domain.errors import RulesError
from ..domain.rules import RuleProblem, RuleSet, parse_rules

__all__ = ["RulesWatcher", "check_rules", "load_rules"]

_log = logging.getLogger("worker.rules")


def _read(path: Path) -> bytes | RuleProblem:
    try:
        return path.read_bytes()
    except OSError as exc:
        return RuleProblem(str(path), None, "", f"cannot read the file: {exc.strerror or exc}")


def _digest(raw: bytes | RuleProblem) -> str:
    return str(raw) if isinstance(raw, RuleProblem) else hashlib.sha256(raw).hexdigest()


def check_rules(path: Path, *, known_templates: Collection[str] | None = None) -> list[RuleProblem]:
    """Every problem in the rule file at ``path`` (empty when it is valid), for ``renewals check`` and the watcher."""
    return parse_rules(_read(path), str(path), known_templates)[0]


def load_rules(path: Path, *, known_templates: Collection[str] | None = None) -> RuleSet:
    """The rules in the file at ``path``; raises RulesError listing every problem."""
    problems, rules = parse_rules(_read(path), str(path), known_templates)
    if rules is None:
        raise RulesError(list(problems))
    return rules


class RulesWatcher:
    """Holds the rules in force for one file and swaps them only for a valid edit, so a typo never stops reminders."""

    def __init__(self, path: Path, *, known_templates: Collection[str] | None = None) -> None:
        self.path = path
        self._known_templates = known_templates
        raw = _read(path)
        problems, rules = parse_rules(raw, str(path), known_templates)
        if rules is None:
            raise RulesError(list(problems))
        self._rules = rules
        self._text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else ""
        self._seen = _digest(raw)

    @property
    def rules(self) -> RuleSet:
        return self._rules

    @property
    def text(self) -> str:
        """The file's text as it was when the rules in force were read from it."""
        return self._text

    def maybe_reload(self) -> bool:
        """Re-read the file; True when valid new rules replaced the old ones.

        The bytes are compared rather than the mtime alone: the file is small, and mtimes are coarse
        (a few ms on Linux) so a quick second save could go unnoticed. Each bad version is logged
        once, not on every poll. An edit that changes only comments or layout is not a switch.
        """
        raw = _read(self.path)
        if _digest(raw) == self._seen:
            return False
        self._seen = _digest(raw)
        problems, rules = parse_rules(raw, str(self.path), self._known_templates)
        if rules is None:
            _log.error("%s: keeping the rules in force, the changed file has %d problem(s)", self.path, len(problems))
            for problem in problems:
                _log.error("%s", problem)
            return False
        if rules.fingerprint == self._rules.fingerprint and rules.digest == self._rules.digest:
            return False
        _log.info("%s: new rules in force (fingerprint %s)", self.path, rules.fingerprint[:12])
        self._rules = rules
        self._text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else ""
        return True
