"""Private Redis and Postgres servers that a test starts, kills and restarts itself.

The machine's shared services (Postgres on 5432, Redis on 6379) must never go
down, so chaos tests get servers of their own, on free ports, in folders of their
own. A test module takes the fixtures `private_redis` and `private_postgres` with

    pytest_plugins = ["tests.instances"]

(importing them works too, but then ruff reads each test's argument as a
redefinition of the import, F811).

Each test gets a fresh server. Postgres runs `initdb` once per session, into a
template cluster that already holds the migrated `stepwise` database, and each
test starts a copy of it. When a binary is missing the fixtures fail under
CI=true and skip elsewhere. Postgres refuses to run as root, so under root it
runs as the `postgres` system user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, NoReturn

import psycopg
import pytest
import redis

IN_CI = os.environ.get("CI", "").lower() == "true"
HOST = "127.0.0.1"
DATABASE = "stepwise"
# Postgres settings for a throwaway server. Without fsync a committed row still
# reaches the kernel before the commit returns, so it survives a SIGKILL of the
# server (not of the machine), which is the crash these tests make.
POSTGRES_SETTINGS = {
    "listen_addresses": HOST,
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "100",
    # Keep few WAL segments around, so the template is small and quick to copy.
    "min_wal_size": "2MB",
    "wal_recycle": "off",
    # Segments in the data folder rather than /dev/shm, where a killed server leaves them.
    "dynamic_shared_memory_type": "mmap",
}
# Copying the template is most of a test's setup; in memory it takes a fifth of the time.
MEMORY_FOLDER = Path("/dev/shm")
MEMORY_NEEDED = 1 << 30
StopMode = Literal["smart", "fast", "immediate"]
STOP_SIGNALS: dict[StopMode, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}
TEMPLATE_KEY = pytest.StashKey["PostgresInstance"]()


class InstanceError(RuntimeError):
    """A private server did not start or stop as asked."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class _Server:
    """A server process in its own session, logging to a file in its folder."""

    name = "server"

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port
        self.log = folder / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (on the same port as before, if it ran before) and wait for it."""
        if self.running:
            raise InstanceError(f"{self.name} on port {self.port} is already running")
        # Only a first start may move to another port, when the free one was taken meanwhile.
        fixed = self.port is not None
        for _ in range(1 if fixed else 3):
            self.port = self.port if fixed else free_port()
            if self._launch(timeout):
                return
        raise InstanceError(f"{self.name}: port {self.port} is taken:\n{self.output()}")

    def _launch(self, timeout: float) -> bool:
        """Start the process and wait until it is ready; False if its port was taken."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as sink:
            process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._options(),
            )
        self.process = process
        deadline = time.monotonic() + timeout
        while not self._ready():
            if process.poll() is not None:
                output = self.output(offset)
                if "Address already in use" in output:
                    return False
                raise InstanceError(f"{self.name} exited on port {self.port}:\n{output}")
            if time.monotonic() > deadline:
                self.kill()
                raise InstanceError(f"{self.name} not ready in {timeout} s:\n{self.output(offset)}")
            time.sleep(0.01)
        return True

    def stop(self) -> None:
        """SIGTERM, a clean shutdown; SIGKILL if it lingers."""
        self._halt(signal.SIGTERM, 30.0)

    def _halt(self, sig: signal.Signals, timeout: float) -> None:
        if self.process is None or not self.running:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the server and every process it started, as in a crash."""
        if self.process is None or not self.running:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def restart(self, down_for: float = 0) -> None:
        """Stop, stay down for `down_for` seconds, start again on the same port."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def output(self, offset: int = 0) -> str:
        """The server's log from byte `offset` on (its last 3000 characters)."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as source:
            source.seek(offset)
            return source.read().decode(errors="replace")[-3000:]

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _options(self) -> dict[str, Any]:
        return {}

    def _ready(self) -> bool:
        raise NotImplementedError


class RedisInstance(_Server):
    """A private `redis-server` on 127.0.0.1 that keeps nothing on disk."""

    name = "redis"

    def __init__(self, folder: Path, executable: str, port: int | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        super().__init__(folder, port)
        self.executable = executable

    @property
    def url(self) -> str:
        """redis://127.0.0.1:PORT/0"""
        return f"redis://{HOST}:{self.port}/0"

    def _command(self) -> list[str]:
        return [
            self.executable, "--port", str(self.port), "--bind", HOST,
            "--save", "", "--appendonly", "no", "--dir", str(self.folder),
            "--daemonize", "no", "--logfile", "",
        ]  # fmt: skip

    def _ready(self) -> bool:
        client = redis.Redis(host=HOST, port=self.port or 0, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


class PostgresInstance(_Server):
    """A private Postgres cluster: its own data folder, port and socket folder."""

    name = "postgres"

    def __init__(self, folder: Path, bin_dir: Path, port: int | None = None) -> None:
        super().__init__(folder, port)
        self.bin_dir = bin_dir
        self.data = folder / "data"
        self._database_checked = False

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the `stepwise` database."""
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{DATABASE}"

    @property
    def dsn(self) -> str:
        """The libpq URL of the `stepwise` database, for psycopg."""
        return f"postgresql://postgres@{HOST}:{self.port}/{DATABASE}"

    def initdb(self) -> None:
        """Create the cluster: trust authentication, superuser `postgres`."""
        command = [
            str(self.bin_dir / "initdb"), "-D", str(self.data), "--auth=trust", "-U", "postgres",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions", "--wal-segsize=1",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, **self._options())
        if done.returncode:
            raise InstanceError(f"initdb failed:\n{done.stdout}{done.stderr}")

    def clone(self, folder: Path) -> PostgresInstance:
        """A copy of this stopped cluster in `folder`, which will get a port of its own."""
        if self.running:
            raise InstanceError("copy a cluster only while it is stopped")
        shutil.copytree(self.data, folder / "data", symlinks=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in [folder, *folder.rglob("*")]:
                os.lchown(path, owner.pw_uid, owner.pw_gid)
        return PostgresInstance(folder, self.bin_dir)

    def start(self, timeout: float = 30.0) -> None:
        """Start (after a kill: with crash recovery); the first start creates `stepwise`."""
        super().start(timeout)
        if not self._database_checked:
            with psycopg.connect(self._admin_dsn(), autocommit=True) as admin:
                exists = admin.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
                ).fetchone()
                if not exists:
                    admin.execute(f'CREATE DATABASE "{DATABASE}"')
            self._database_checked = True

    def stop(self, mode: StopMode = "fast", timeout: float = 30.0) -> None:
        """Shut down: `smart` waits for clients, `fast` disconnects them, `immediate` aborts."""
        self._halt(STOP_SIGNALS[mode], timeout)

    def remove(self, keep_log: Path | None = None) -> None:
        """Shut the server down and delete its folder (its log moves to `keep_log`, if given),
        leaving no shared memory behind."""
        if not self.running and (self.data / "postmaster.pid").exists():
            # Killed: only a new start reclaims the dead server's System V segment.
            with contextlib.suppress(InstanceError, psycopg.Error):
                self.start()
        self.stop("immediate")
        if keep_log and self.log.exists():
            shutil.move(self.log, keep_log)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _admin_dsn(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def _command(self) -> list[str]:
        settings = [f"--{key}={value}" for key, value in POSTGRES_SETTINGS.items()]
        return [
            str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-k", str(self.folder), *settings,
        ]  # fmt: skip

    def _options(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        owner = pwd.getpwnam("postgres")
        return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": [], "cwd": "/"}

    def _ready(self) -> bool:
        try:
            with psycopg.connect(self._admin_dsn(), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False


def redis_server() -> str | None:
    """The `redis-server` on PATH, if there is one."""
    return shutil.which("redis-server")


def postgres_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin with initdb, else the folder of initdb on PATH."""
    found = Path("/usr/lib/postgresql").glob("*/bin/initdb")
    newest = sorted(found, key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if newest:
        return newest[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def private_folder(prefix: str) -> Path:
    """A new folder for a cluster: in /dev/shm when it has room, else in the temporary folder.

    Not pytest's tmp_path: under root that sits in a 0700 folder the `postgres`
    user cannot enter, and socket paths must stay short.
    """
    roomy = (
        os.access(MEMORY_FOLDER, os.W_OK) and shutil.disk_usage(MEMORY_FOLDER).free > MEMORY_NEEDED
    )
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=MEMORY_FOLDER if roomy else None))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    return folder


def unavailable(reason: str) -> NoReturn:
    """Fail under CI=true, skip elsewhere: the project's rule for missing services."""
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def postgres_template(config: pytest.Config) -> PostgresInstance:
    """The session's stopped template cluster with `stepwise` migrated; made on first use.

    Kept in the session's stash rather than in a session fixture of its own, so a
    test module that imports `private_postgres` needs no second name.
    """
    if TEMPLATE_KEY in config.stash:
        return config.stash[TEMPLATE_KEY]
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        unavailable("no PostgreSQL binaries (initdb) in /usr/lib/postgresql/*/bin or on PATH")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no `postgres` user to run Postgres as")
    from storage import make_engine, upgrade

    template = PostgresInstance(private_folder("stepwise-pg-template-"), bin_dir)
    config.add_cleanup(template.remove)
    template.initdb()
    template.start()
    engine = make_engine(template.url)
    upgrade(engine)
    engine.dispose()
    with psycopg.connect(template.dsn, autocommit=True) as db:
        db.execute("CHECKPOINT")  # drops the WAL that building the template wrote
    template.stop()
    config.stash[TEMPLATE_KEY] = template
    return template


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisInstance]:
    """A fresh private Redis for this test, killed when the test ends."""
    executable = redis_server()
    if executable is None:
        unavailable("redis-server is not on PATH")
    instance = RedisInstance(tmp_path / "private-redis", executable)
    try:
        instance.start()
        yield instance
    finally:
        instance.kill()


@pytest.fixture
def private_postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PostgresInstance]:
    """A fresh private Postgres for this test (a copy of the session's template), removed after;
    its log stays in the test's tmp_path."""
    template = postgres_template(request.config)
    instance = template.clone(private_folder("stepwise-pg-"))
    try:
        instance.start()
        yield instance
    finally:
        instance.remove(keep_log=tmp_path / "postgres.log")
