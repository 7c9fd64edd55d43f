"""What every phase shares: the benchmark's Redis database and key prefix, the SMTP target, a work folder.

The same settings reach the processes started here (as environment variables, like production) and
the runtime the benchmark builds in its own process to seed and read Redis.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis

from worker.config.settings import PROJECT_ROOT, Settings, load_settings
from worker.service.runtime import Runtime, build_runtime

from .sink import SmtpTarget

__all__ = ["DEFAULT_REDIS_URL", "DEFAULT_RULES", "MAIL_FROM", "BenchContext"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
DEFAULT_RULES = PROJECT_ROOT / "rules" / "default.yaml"
MAIL_FROM = "Partner Renewals <renewals@platform.example.com>"
_SLOW_COMMAND_S = 300.0

# Settings the benchmark sets itself; any of these in the caller's environment is replaced, and
# the others the worker reads are dropped so that a developer's shell cannot change the figures.
_WORKER_VARIABLES = frozenset(name.upper() for name in Settings.model_fields)


@dataclass
class BenchContext:
    redis_url: str
    workdir: Path
    smtp: SmtpTarget | None = None
    key_prefix: str = "bench"
    smtp_pool_size: int = 8
    _client: redis.Redis | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        host = urlsplit(self.redis_url).hostname or "127.0.0.1"
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the benchmark runs on loopback only, not {host!r}")
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def redis(self) -> redis.Redis:
        """The benchmark's own client. Its reads may be slow (FLUSHDB of millions of keys, MEMORY USAGE
        of the whole due index): redis-py's default 5 s socket timeout would cut them off."""
        if self._client is None:
            self._client = redis.Redis.from_url(self.redis_url, socket_timeout=_SLOW_COMMAND_S)
        return self._client

    def flush(self) -> None:
        """Empty the benchmark's own database (never any other), synchronously: memory figures
        taken next must not see the previous phase's keys still being freed in the background."""
        self.redis.flushdb()

    def overrides(self, rules_path: Path = DEFAULT_RULES) -> dict[str, object]:
        values: dict[str, object] = {
            "redis_url": self.redis_url,
            "key_prefix": self.key_prefix,
            "mail_from": MAIL_FROM,
            "rules_path": rules_path,
            "outbox_dir": self.workdir / "outbox",
            "smtp_pool_size": self.smtp_pool_size,
        }
        if self.smtp is not None:
            values.update(smtp_host=self.smtp.host, smtp_port=self.smtp.port, smtp_security="none")
        return values

    def settings(self, rules_path: Path = DEFAULT_RULES) -> Settings:
        return load_settings(**self.overrides(rules_path))

    def runtime(self, rules_path: Path = DEFAULT_RULES) -> Runtime:
        return build_runtime(self.settings(rules_path))

    def env(self, rules_path: Path = DEFAULT_RULES) -> dict[str, str]:
        """The environment of a production worker or scheduler pointed at the benchmark's services."""
        env = {name: value for name, value in os.environ.items() if name.upper() not in _WORKER_VARIABLES}
        env.update({name.upper(): str(value) for name, value in self.overrides(rules_path).items()})
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def log_path(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
