"""Templates and wording edited while the service runs: checked first, swapped in only when valid.

The same way the rule file is watched (``worker.config.rulefile.RulesWatcher``): a typo in a
template or a wording file never stops reminders; it is logged, and the previous ones stay.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection
from pathlib import Path

from ..domain.errors import TemplateError
from .digest_render import DIGEST_TEMPLATE, DigestRenderer
from .render import Renderer

__all__ = ["RendererWatcher", "templates_digest"]

_log = logging.getLogger("worker.templates")


def templates_digest(templates_dir: Path) -> str:
    """SHA-256 over every file's path and bytes: any edit, addition or removal changes it."""
    digest = hashlib.sha256()
    try:
        files = sorted(p for p in templates_dir.rglob("*") if p.is_file())
        for path in files:
            digest.update(path.relative_to(templates_dir).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    except OSError as exc:
        # A file removed between the listing and the read: the next poll sees the folder settled.
        digest.update(f"unreadable: {exc}".encode())
    return digest.hexdigest()


class RendererWatcher:
    """Holds the renderer in force and swaps it only for templates and wording that pass the checks.

    The checks are ``rules check``'s: ``Renderer.check`` for the reminders and, when the folder has
    the partner digest, ``DigestRenderer.check``.

    ``required`` gives the template names something else depends on (the rules in force): an edit
    that removes one of them is refused too.
    """

    def __init__(self, templates_dir: Path, *, required: Callable[[], Collection[str]] = tuple) -> None:
        self.templates_dir = templates_dir
        self._required = required
        self._seen = templates_digest(templates_dir)
        self._renderer = Renderer(templates_dir)

    @property
    def renderer(self) -> Renderer:
        return self._renderer

    def maybe_reload(self) -> bool:
        """Look at the folder again; True when valid new templates or wording replaced the old ones.

        Each bad version is logged once, not on every poll.
        """
        seen = templates_digest(self.templates_dir)
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            candidate = Renderer(self.templates_dir)
            problems = candidate.check()
            if (self.templates_dir / DIGEST_TEMPLATE).is_dir():
                problems += DigestRenderer(candidate).check()
        except TemplateError as exc:
            problems = [str(exc)]
        else:
            missing = sorted(set(self._required()) - candidate.template_names())
            problems += [f"{name}/: the rules in force use this template, and it is gone" for name in missing]
        if problems:
            _log.error(
                "%s: keeping the templates and wording in force, the edit has %d problem(s)",
                self.templates_dir,
                len(problems),
            )
            for problem in problems:
                _log.error("%s", problem)
            return False
        _log.info("%s: new templates and wording in force (digest %s)", self.templates_dir, seen[:12])
        self._renderer = candidate
        return True
