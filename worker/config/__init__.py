"""What operations configure: the settings from the environment, and the rule file on disk.

May import ``worker.domain`` only.
"""
