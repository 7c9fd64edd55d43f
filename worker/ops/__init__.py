"""The operator's tools: the ``renewals`` command and what it shows (inspect, simulate, demo).

The top layer: may import every other; nothing imports it.
"""
