"""The private Redis and Postgres of tests/instances.py go down and come back as told,
and the machine's shared services never notice."""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
import pytest
import redis

from tests.conftest import PG_ADMIN, REDIS_URL

if TYPE_CHECKING:
    # Only for annotations: importing the plugin before pytest does spoils its asserts.
    from tests.instances import PostgresInstance, RedisInstance

pytest_plugins = ["tests.instances"]


def test_a_key_in_the_private_redis_is_gone_after_a_kill_and_a_start(
    private_redis: RedisInstance,
) -> None:
    client = redis.Redis.from_url(private_redis.url)
    client.set("survivor", "no")
    port = private_redis.port

    private_redis.kill()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    private_redis.start()

    assert private_redis.port == port
    assert client.get("survivor") is None
    client.close()


def test_a_restarted_private_redis_answers_on_the_same_url(
    private_redis: RedisInstance,
) -> None:
    url = private_redis.url

    private_redis.restart(down_for=0.1)

    assert private_redis.url == url
    assert redis.Redis.from_url(url).ping()


def test_killing_the_private_redis_leaves_the_shared_redis_and_its_keys_alone(
    redis_keys: str, private_redis: RedisInstance
) -> None:
    shared = redis.Redis.from_url(REDIS_URL)
    shared.set(f"{redis_keys}instances", "kept")
    run_id = shared.info("server")["run_id"]

    private_redis.kill()
    private_redis.start()

    assert private_redis.port != 6379
    assert shared.get(f"{redis_keys}instances") == b"kept"
    assert shared.info("server")["run_id"] == run_id
    shared.close()


def test_the_private_postgres_refuses_connections_while_stopped_and_accepts_them_after_a_start(
    private_postgres: PostgresInstance,
) -> None:
    private_postgres.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(private_postgres.dsn, connect_timeout=2)

    private_postgres.start()

    with psycopg.connect(private_postgres.dsn) as db:
        assert db.execute("SELECT 1").fetchone() == (1,)


def test_the_private_postgres_holds_the_migrated_stepwise_database(
    private_postgres: PostgresInstance,
) -> None:
    with psycopg.connect(private_postgres.dsn) as db:
        tables = {name for (name,) in db.execute("SELECT tablename FROM pg_tables")}
        folder = db.execute("SHOW data_directory").fetchone()

    assert {"stepwise_runs", "stepwise_steps", "stepwise_events"} <= tables
    assert folder == (str(private_postgres.data),)


def test_committed_rows_survive_a_sigkill_of_the_private_postgres(
    private_postgres: PostgresInstance,
) -> None:
    with psycopg.connect(private_postgres.dsn, autocommit=True) as db:
        db.execute("CREATE TABLE ledger (n int)")
        db.execute("INSERT INTO ledger SELECT generate_series(1, 100)")

    private_postgres.kill()
    private_postgres.start()

    with psycopg.connect(private_postgres.dsn) as db:
        assert db.execute("SELECT count(*) FROM ledger").fetchone() == (100,)
    assert "automatic recovery in progress" in private_postgres.output()


def test_a_restarted_private_postgres_comes_back_on_the_same_url_after_its_downtime(
    private_postgres: PostgresInstance,
) -> None:
    url = private_postgres.url

    private_postgres.restart(down_for=0.1)

    assert private_postgres.url == url
    with psycopg.connect(private_postgres.dsn) as db:
        assert db.execute("SELECT current_database()").fetchone() == ("stepwise",)


def test_killing_the_private_postgres_leaves_the_shared_postgres_alone(
    services: None, private_postgres: PostgresInstance
) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as shared:
        started = shared.execute("SELECT pg_postmaster_start_time()").fetchone()

        private_postgres.kill()
        private_postgres.start()
        private_postgres.restart()

        assert private_postgres.port != 5432
        # The same session is still open, on a server that never restarted.
        assert shared.execute("SELECT pg_postmaster_start_time()").fetchone() == started
