"""The private redis-server helper of the fault tests keeps its data across a restart and a kill."""

from __future__ import annotations

import pytest
import redis

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("hard", [False, True])
def test_a_private_redis_keeps_acknowledged_writes_across_a_restart(private_redis, hard):
    client = private_redis.client()
    client.rpush("queue", b"one", b"two")
    private_redis.restart(hard=hard)
    assert client.lrange("queue", 0, -1) == [b"one", b"two"]
    client.close()


def test_a_stopped_private_redis_refuses_connections(private_redis):
    private_redis.stop()
    client = redis.Redis.from_url(private_redis.url(), socket_connect_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        client.ping()
    client.close()
