"""The check a send makes as its SMTP transaction starts: has anything it was decided from changed?

The batch read every record a reminder is decided from, with their stamps; a send starting
seconds later needs the truth at that moment, but decoding and deciding everything again for each
message would double the delivery's cost. One script compares, in Redis, the stamps of those
records, the ledger's reminder ids and the rules in force with what the batch read, and answers
whether the batch's view still holds, with the recipients' suppression flags in the same reply.
Only when something changed does the send read and decode the renewal again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis

from .keys import Keys
from .planning import RenewalView
from .scripts import LuaScript

__all__ = ["SendCheck", "SendCheckResult"]

# KEYS: the k records of the view (renewal, partner, client, owner, ended), ledger, suppressed
#       addresses, rules in force
# ARGV: k, k expected stamps ('' = absent), reminder id, rules fingerprint ('' = none recorded),
#       m, the m ledger reminder ids the view holds, then the recipients' addresses (casefolded)
# Returns {'final' | 'changed' | 'same', the recipients' suppression flags}.
_CHECK = """
local k = tonumber(ARGV[1])
local ledger = KEYS[k + 1]
local m = tonumber(ARGV[k + 4])
local flags = {}
if k + 5 + m <= #ARGV then flags = redis.call('SMISMEMBER', KEYS[k + 2], unpack(ARGV, k + 5 + m)) end
if redis.call('HEXISTS', ledger, ARGV[k + 2]) == 1 then return {'final', flags} end
for j = 1, k do
  local record = redis.call('GET', KEYS[j])
  local stamp = record and string.match(record, '^[^\\31]*\\31[^\\31]*') or ''
  if stamp ~= ARGV[1 + j] then return {'changed', flags} end
end
if (redis.call('HGET', KEYS[k + 3], 'fingerprint') or '') ~= ARGV[k + 3] then return {'changed', flags} end
if redis.call('HLEN', ledger) ~= m then return {'changed', flags} end
for i = k + 5, k + 4 + m do
  if redis.call('HEXISTS', ledger, ARGV[i]) == 0 then return {'changed', flags} end
end
return {'same', flags}
"""


@dataclass(frozen=True)
class SendCheckResult:
    """``same``: the view still holds; ``suppressed`` has a flag per address asked about, whatever the status."""

    status: Literal["same", "changed", "final"]
    suppressed: list[bool]


class SendCheck:
    """Queues the check into a pipeline (beside the outcomes waiting to be written) and reads its reply."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        self.script = LuaScript(client, _CHECK)

    def queue(self, pipe: redis.client.Pipeline, view: RenewalView, reminder_id: str, emails: Sequence[str]) -> None:
        k = self.keys
        fingerprint = view.rules_in_force.fingerprint if view.rules_in_force is not None else ""
        keys = [key for key, _ in view.version] + [
            k.ledger(view.partner_id, view.renewal_id),
            k.suppressed(),
            k.rules_change(),
        ]
        args: list[str | int] = [len(view.version), *(stamp for _, stamp in view.version), reminder_id, fingerprint]
        args += [len(view.outcomes), *view.outcomes, *(e.casefold() for e in emails)]
        self.script.queue(pipe, keys=keys, args=args)

    @staticmethod
    def parse(reply: Any) -> SendCheckResult:
        status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        return SendCheckResult(status, [bool(v) for v in reply[1]])  # type: ignore[arg-type]
