"""Mail: wording and locales, rendering, the MIME message, and the ways of sending it (SMTP pool, .eml folder).

May import ``worker.domain`` and ``worker.config``; never ``worker.state`` (a sibling) or a layer above.
"""
