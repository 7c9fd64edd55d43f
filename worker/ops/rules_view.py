"""Which rules the CLI's views use: those the running scheduler plans with (kept in Redis), not the local file."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..domain.errors import RulesError
from ..domain.rules import RuleSet, parse_rules
from ..state.rules_in_force import read_rules_in_force

if TYPE_CHECKING:
    from ..service.runtime import Runtime

__all__ = ["rules_for_views"]


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def rules_for_views(rt: Runtime) -> RuleSet:
    """The rules in force in Redis, saying so on stderr when the local rule file differs from them.

    Without any in Redis (no scheduler ran yet, or the embedded default) the local file is used.
    """
    stored = read_rules_in_force(rt.redis, rt.keys)
    try:
        local: RuleSet | None = rt.rules()
        local_problem = ""
    except RulesError as exc:
        local, local_problem = None, str(exc).splitlines()[0]
    if stored is None:
        if local is None:
            raise RulesError([local_problem])
        return local
    problems, in_force = parse_rules(stored.text.encode(), f"{stored.source} (in Redis)")
    if in_force is None:  # written by another version of the worker: say so, use the file
        _note(f"the rules in Redis cannot be read ({problems[0]}); using {rt.settings.rules_path}")
        if local is None:
            raise RulesError([local_problem])
        return local
    if local is None or local.fingerprint != in_force.fingerprint:
        what = f"has problems ({local_problem})" if local is None else f"differs (fingerprint {local.fingerprint[:12]})"
        _note(
            f"showing the rules in force (fingerprint {in_force.fingerprint[:12]}, loaded by the scheduler "
            f"from {stored.source} at {stored.loaded_at:%Y-%m-%d %H:%M:%S %Z}); the local file "
            f"{rt.settings.rules_path} {what}"
        )
    return in_force
