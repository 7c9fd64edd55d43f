"""The pure decisions: the event contract, the rules, who owns and receives a reminder, when it is due.

Plain functions over plain data, with ``now`` passed in: no Redis, no SMTP, no clock, no files.
May import nothing else of the worker.
"""
