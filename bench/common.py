"""What every benchmark needs: a scratch database, CPU per role, percentiles, the machine."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
import redis
from sqlalchemy import make_url

from storage import make_engine, upgrade
from storage.db import normalise_url

LOCAL_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


@contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """A new database on the server of `url`, migrated; dropped on the way out."""
    base = make_url(normalise_url(url))
    if base.get_backend_name() != "postgresql":
        raise SystemExit(f"this benchmark needs Postgres, not {base.get_backend_name()}")
    name = f"stepwise_bench_{uuid.uuid4().hex[:10]}"
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        scratch = base.set(database=name).render_as_string(hide_password=False)
        engine = make_engine(scratch)
        upgrade(engine)
        engine.dispose()
        yield scratch
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class CpuClock:
    """Cores used by role between readings, from /proc (Linux), to show where time went."""

    def __init__(self, roles: dict[str, list[int]], database: str) -> None:
        self.roles = roles
        self.database = database  # Postgres backends of other databases are someone else's

    def read(self) -> dict[str, Any]:
        """CPU ticks per process of each role, the machine's busy and total ticks, the time."""
        roles = dict(self.roles, postgres=self._postgres(), redis=_pids("redis-server"))
        sample: dict[str, Any] = {r: _ticks(pids) for r, pids in roles.items()}
        with suppress(OSError), open("/proc/stat") as stat:
            ticks = [int(x) for x in stat.readline().split()[1:]]
            sample["machine"] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
        sample["at"] = time.time()
        return sample

    def used(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
        """Cores used per role (1.0: one core all the time); `other` is everything else."""
        per_second = os.sysconf("SC_CLK_TCK") * (after["at"] - before["at"])
        cores = {
            role: sum(t - before[role].get(pid, 0) for pid, t in ticks.items()) / per_second
            for role, ticks in after.items()
            if role not in ("machine", "at")
        }
        if "machine" in after:
            busy, total = (a - b for a, b in zip(after["machine"], before["machine"], strict=True))
            if total:  # none when the readings fell within one clock tick (a short phase)
                ours = sum(cores.values())
                cores["machine"] = busy / total * (os.cpu_count() or 1)
                cores["other"] = cores["machine"] - ours
        return {k: round(v, 2) for k, v in cores.items()}

    def _postgres(self) -> list[int]:
        """The server's own processes and the backends serving the benchmark's database."""
        pids = []
        for pid in _pids("postgres"):
            with suppress(OSError):
                title = Path(f"/proc/{pid}/cmdline").read_text()
                client = "(" in title or "[local]" in title  # a client's address
                if f" {self.database} " in title or not client:
                    pids.append(pid)
        return pids


def _pids(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        with suppress(OSError):
            if (entry / "comm").read_text().strip() == name:
                pids.append(int(entry.name))
    return pids


def _ticks(pids: list[int]) -> dict[int, int]:
    """CPU ticks (user and system) of each process of `pids` still running."""
    ticks = {}
    for pid in pids:
        with suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks


def percentiles(seconds: list[float]) -> dict[str, float]:
    """n, p50, p90, p99, max and mean of `seconds`, in milliseconds."""
    if not seconds:
        return {"n": 0}
    ordered = sorted(seconds)
    ranks = {f"p{q}": ordered[math.ceil(q / 100 * len(ordered)) - 1] for q in (50, 90, 99)}
    summary = ranks | {"max": ordered[-1], "mean": sum(ordered) / len(ordered)}
    return {"n": len(ordered)} | {k: round(v * 1000, 2) for k, v in summary.items()}


_SAMPLE = {"messages": [{"role": "user", "text": f"message {n}", "n": n} for n in range(40)]}


def _fixed_work() -> None:
    for _ in range(20):
        json.loads(json.dumps(_SAMPLE))


def python_speed(pause: float = 0.2, rounds: int = 10) -> dict[str, float]:
    """The thread CPU, in µs, of one fixed piece of Python work (JSON in and out): done
    back to back, and right after the thread slept `pause` seconds, at the median.

    The host's speed, in a form that explains its figures. On the virtual machines these
    benchmarks ran on, the same work cost about twice as much right after a wait as in a
    loop that never waits. A step's work on the workers always follows a wait (for the
    broker, the model, a tool); `bench.steps` runs steps back to back."""

    def timed() -> float:
        began = time.thread_time()
        _fixed_work()
        return time.thread_time() - began

    for _ in range(10):
        _fixed_work()
    hot = [timed() for _ in range(100)]
    after = []
    for _ in range(rounds):
        time.sleep(pause)
        after.append(timed())
    return {
        "hot_us": round(statistics.median(hot) * 1e6),
        "after_sleep_us": round(statistics.median(after) * 1e6),
        "sleep_s": pause,
    }


def machine(database_url: str, redis_url: str) -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    with suppress(OSError):
        names = [x for x in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in x]
        cpu = names[0].split(":", 1)[1].strip()
    admin = make_url(normalise_url(database_url)).set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False)) as connection:
        postgres = {
            name: str(connection.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
            for name in ("server_version", "synchronous_commit", "fsync")
        }
    client = redis.Redis.from_url(redis_url)
    redis_version = client.info("server")["redis_version"]
    client.close()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgres": postgres,
        "redis": redis_version,
        "python_speed": python_speed(),
    }
