"""Two kinds of fixture: in-memory (fakeredis) for unit tests, real services for integration tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import fakeredis
import pytest
import redis

pytest_plugins = ["smtp_fixtures", "redis_server", "service_processes"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def fake_redis() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis()
    yield client
    client.flushall()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A real Redis database, flushed before and after; absent Redis skips locally and fails under CI."""
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        if IN_CI:
            pytest.fail(f"Redis is required under CI=true and is not answering at {TEST_REDIS_URL}: {exc}")
        pytest.skip(f"Redis not answering at {TEST_REDIS_URL}")
    client.flushdb()
    yield TEST_REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def real_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
