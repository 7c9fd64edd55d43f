"""renewal-worker: contract-renewal reminder emails for a reseller (partner) program."""

from __future__ import annotations

from .domain.errors import InvalidEvent, RenewalsError
from .domain.events import CONTRACT_VERSION, parse_event
from .service.publish import publish, publish_many

__all__ = ["CONTRACT_VERSION", "InvalidEvent", "RenewalsError", "parse_event", "publish", "publish_many"]
