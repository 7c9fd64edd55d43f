"""Every Redis key the worker uses, in one place, under one prefix."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["CLIENT_BUCKETS", "COUNTS_TTL_S", "HOUR_S", "SEP", "Keys", "key_part"]

# Joins ids inside set members; ids never hold control characters (the contract refuses them).
SEP = "\x1f"

# A partner's clients are spread over this many small hashes, so that each stays a listpack (at
# most hash-max-listpack-entries, 512, fields: up to some 130,000 clients a partner) at about 20
# bytes a client, where one large hash is a hashtable at about 50.
CLIENT_BUCKETS = 256

# The outcome counts of `status`: one hash per hour, kept a day and an hour.
HOUR_S = 3_600
COUNTS_TTL_S = 25 * HOUR_S


def key_part(value: str) -> str:
    """Escape an id for use inside a key, so that ids containing ':' can never collide."""
    return value.replace("%", "%25").replace(":", "%3A")


@dataclass(frozen=True)
class Keys:
    prefix: str = "rw"

    def layout(self) -> str:
        """The version of the layout of everything under the prefix (absent: layout 1, or an empty store)."""
        return f"{self.prefix}:layout"

    def seen(self, slice_ms: int, index: int) -> str:
        """Name of the sets of the event ids applied, superseded or refused during one time slice of
        ``slice_ms`` (the ``index``-th): ``:<bucket>`` follows, each set holding the digests of its ids."""
        return f"{self.prefix}:seen:{slice_ms}:{index}"

    def partners(self) -> str:
        return f"{self.prefix}:partners"

    def partner(self, partner_id: str) -> str:
        return f"{self.prefix}:p:{key_part(partner_id)}"

    def renewals_by_client(self, partner_id: str, client_id: str) -> str:
        """Hash: client id -> the ids of the renewals ever stored for it, SEP-joined; one of the
        partner's ``CLIENT_BUCKETS`` hashes, chosen by the client id's CRC-32."""
        return self.renewals_by_client_bucket(partner_id, zlib.crc32(client_id.encode()) % CLIENT_BUCKETS)

    def renewals_by_client_bucket(self, partner_id: str, bucket: int) -> str:
        return f"{self.prefix}:p:{key_part(partner_id)}:renewals-by-client:{bucket}"

    def client(self, partner_id: str, client_id: str) -> str:
        return f"{self.prefix}:p:{key_part(partner_id)}:c:{key_part(client_id)}"

    def owner(self, partner_id: str, client_id: str) -> str:
        return f"{self.client(partner_id, client_id)}:owner"

    def ended(self, partner_id: str, client_id: str) -> str:
        return f"{self.client(partner_id, client_id)}:ended"

    def renewal(self, partner_id: str, renewal_id: str) -> str:
        return f"{self.prefix}:p:{key_part(partner_id)}:r:{key_part(renewal_id)}"

    def ledger(self, partner_id: str, renewal_id: str) -> str:
        """Hash: reminder id -> JSON of its final outcome (sent, skipped, suppressed, failed)."""
        return f"{self.renewal(partner_id, renewal_id)}:ledger"

    def lease(self, partner_id: str, renewal_id: str, reminder_id: str) -> str:
        return f"{self.renewal(partner_id, renewal_id)}:lease:{key_part(reminder_id)}"

    def planned_reminder_ids(self) -> str:
        """Set of every reminder id ever put in the due index: a re-plan removes each of them for its
        renewal, so it replaces exactly the previous plan with no bookkeeping per renewal."""
        return f"{self.prefix}:plan:reminder-ids"

    def waiting(self, reason: str) -> str:
        """Sorted set of renewals (due-member prefixes) waiting for missing data of one kind
        (``no_client_details``, ``no_partner_settings``), by when they began to wait (epoch ms)."""
        return f"{self.prefix}:waiting:{reason}"

    def dirty(self) -> str:
        """Sorted set of what must be re-planned (renewal, client or partner), by when it was marked."""
        return f"{self.prefix}:dirty"

    def due(self) -> str:
        """Sorted set of planned reminders by due time (epoch milliseconds)."""
        return f"{self.prefix}:due"

    def claimed(self) -> str:
        """Sorted set of reminders whose delivery is under way, by claim expiry; expired ones return to due."""
        return f"{self.prefix}:due:claimed"

    def suppressed(self) -> str:
        return f"{self.prefix}:suppressed"

    def dead_letters(self) -> str:
        return f"{self.prefix}:dead-letters"

    def dead_letter_count(self) -> str:
        """Every dead letter ever written (the list itself is trimmed)."""
        return f"{self.prefix}:dead-letters:count"

    def event_stats(self) -> str:
        """Hash: count of events per apply outcome (applied, duplicate, stale, already_ended)."""
        return f"{self.prefix}:stats:events"

    def replan_run(self) -> str:
        """The fingerprint of the rules a chunked re-plan of every renewal is under way for."""
        return f"{self.prefix}:replan:run"

    def replan_partners(self) -> str:
        """List: the partners of the re-plan under way (a snapshot taken when it started)."""
        return f"{self.prefix}:replan:partners"

    def replan_counter(self) -> str:
        """Hash: ``next``, the next chunk of the re-plan under way to hand out."""
        return f"{self.prefix}:replan:counter"

    def replan_in_progress(self) -> str:
        """Sorted set: chunks being re-planned, by lease expiry (epoch ms)."""
        return f"{self.prefix}:replan:in-progress"

    def rules_change(self) -> str:
        """Hash: the fingerprint, JSON and start (epoch ms) of the rules in force, and the JSON of the
        rules before them, so that every process can tell what the last edit changed."""
        return f"{self.prefix}:rules:change"

    def rules_fingerprint(self) -> str:
        return f"{self.prefix}:rules:fingerprint"

    def heartbeat(self, process_id: str) -> str:
        """String with a TTL: one running scheduler's or worker's last sign of life (JSON)."""
        return f"{self.prefix}:heartbeat:{key_part(process_id)}"

    def heartbeats(self) -> str:
        """Set of the heartbeat keys written so far; a reader drops the members whose key expired."""
        return f"{self.prefix}:heartbeats"

    def smtp_alarm(self) -> str:
        """Hash: the SMTP error that stops all sending (login refused, TLS failed), since when; with a TTL."""
        return f"{self.prefix}:alarm:smtp"

    def outcome_counts(self, hour: int) -> str:
        """Hash: delivery outcome -> count, for the hour starting at ``hour`` (epoch hours); kept a day."""
        return f"{self.prefix}:stats:outcomes:{hour}"

    def outcome_counts_at(self, moment: datetime) -> str:
        """``outcome_counts`` of the hour ``moment`` falls in."""
        return self.outcome_counts(int(moment.timestamp()) // HOUR_S)

    def digest_periods(self) -> str:
        """Hash: partner id -> the id of the last digest period enqueued for it (``digest/2026-W49``)."""
        return f"{self.prefix}:digest:periods"

    def rules_in_force(self) -> str:
        """Hash: the text, fingerprint, source and load time of the rules the scheduler plans with."""
        return f"{self.prefix}:rules:in-force"

    def history(self) -> str:
        """Stream of every final outcome, deferral and steering command, trimmed by age (HISTORY_DAYS)."""
        return f"{self.prefix}:history"

    def suppression_info(self) -> str:
        """Hash: suppressed address -> JSON of when, why and by what (the set ``suppressed`` stays the check)."""
        return f"{self.prefix}:suppressed:info"

    def attempts(self, partner_id: str, renewal_id: str) -> str:
        """Hash: reminder id -> JSON of its deferred attempts so far and the last error (expires on its own)."""
        return f"{self.renewal(partner_id, renewal_id)}:attempts"
