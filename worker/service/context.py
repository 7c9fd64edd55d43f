"""What the actors and the delivery need from a process, as an interface: the runtime provides it.

Declared apart from ``runtime`` so that the actors, which the runtime builds, never import it back.
"""

from __future__ import annotations

from typing import Protocol

from ..config.settings import Settings
from ..domain.rules import RuleSet
from ..mail.render import Renderer
from ..mail.transport import Mailer
from ..state.connection import RedisOutage
from ..state.ledger import Ledger
from ..state.planning import Planning
from ..state.schedule import DueIndex
from ..state.store import Store
from .clock import Clock

__all__ = ["Context"]


class Context(Protocol):
    """The components of one process (settings, state, clock, mail), built once by the runtime."""

    @property
    def settings(self) -> Settings: ...

    @property
    def store(self) -> Store: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def redis_outage(self) -> RedisOutage: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def due_index(self) -> DueIndex: ...

    @property
    def planning(self) -> Planning: ...

    @property
    def renderer(self) -> Renderer: ...

    @property
    def mailer(self) -> Mailer: ...

    def rules(self) -> RuleSet:
        """The rules in force."""
        ...
