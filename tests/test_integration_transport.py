"""The Redis broker transport: kombu's, with one Redis client per channel."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kombu import Connection
from kombu.transport import redis as kombu_redis

from tasks.transport import Transport
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parent.parent


def test_a_channel_sends_every_command_through_one_client(services: None) -> None:
    with Connection(REDIS_URL, transport=Transport) as connection:
        channel = connection.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second


def test_kombus_own_channel_builds_a_client_per_command(services: None) -> None:
    # The control: what the transport above saves.
    with Connection(REDIS_URL, transport=kombu_redis.Transport) as connection:
        channel = connection.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is not second


def test_a_channel_whose_pool_was_replaced_gets_a_client_of_the_new_pool(
    services: None,
) -> None:
    with Connection(REDIS_URL, transport=Transport) as connection:
        channel = connection.default_channel
        before = channel._create_client()  # what conn_or_acquire hands out
        channel._disconnect_pools()  # as after a fork, or a lost connection

        with channel.conn_or_acquire() as after:
            assert after is not before
            assert after.connection_pool is channel.pool
            assert after.ping()


def test_messages_go_through_it_as_through_kombus_transport(services: None) -> None:
    name = f"swtest-transport-{uuid.uuid4().hex[:8]}"
    with Connection(REDIS_URL, transport=Transport) as ours:
        queue = ours.SimpleQueue(name)
        queue.put({"run_id": "r", "number": 2})
    with Connection(REDIS_URL, transport=kombu_redis.Transport) as kombus:
        queue = kombus.SimpleQueue(name)
        message = queue.get(timeout=5)
        message.ack()
        assert message.payload == {"run_id": "r", "number": 2}
        queue.queue.delete()


def _transport_of_app(broker_url: str) -> str:
    """The transport the Celery app picks in a fresh process with this broker URL."""
    code = (
        "from tasks.app import app\n"
        "with app.connection_for_write() as connection:\n"
        "    print(type(connection.transport).__module__, connection.transport_cls)\n"
    )
    env = {**os.environ, "CELERY_BROKER_URL": broker_url}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_the_app_uses_it_for_a_redis_broker() -> None:
    assert _transport_of_app(REDIS_URL) == "tasks.transport tasks.transport:Transport"


def test_the_app_keeps_kombus_transport_for_an_amqp_broker() -> None:
    # Connecting is lazy: naming the transport needs no RabbitMQ.
    assert _transport_of_app("amqp://guest:guest@127.0.0.1:5672//") == "kombu.transport.pyamqp amqp"
