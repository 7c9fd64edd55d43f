"""The processes and their wiring: the runtime, the dramatiq actors, a delivery, the scheduler loop, publishing.

May import every layer below (state, mail, config, domain); never ``worker.ops``.
"""
