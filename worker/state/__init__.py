"""The state in Redis: records, the store of events applied, the due index, the send-once ledger, planning.

May import ``worker.domain`` and ``worker.config``; never ``worker.mail`` (a sibling) or a layer above.
"""
