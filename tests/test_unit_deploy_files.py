"""The files in deploy/, read statically: there is no Docker engine to run them here.

The compose file is parsed as YAML after Compose's own `${...}` interpolation; the
Procfile is read with honcho's parser and each line run through /bin/sh, as honcho
does, with stand-ins for `celery` and `stepwise`; the Dockerfile is read line by line.
deploy/.env.example must name every variable these files use and every variable the
code reads. tests/test_deploy_procfile.py runs the Procfile for real.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from honcho.environ import parse, parse_procfile

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
STEPWISE_SERVICES = {"migrate", "model-worker", "tool-worker", "beat", "flower", "api"}
# What Compose needs from deploy/.env to start at all (the `${NAME:?…}` values).
REQUIRED = {
    "POSTGRES_PASSWORD": "pw",
    "FLOWER_BASIC_AUTH": "admin:secret",
    "STEPWISE_API_TOKENS": "app=0123456789abcdef",
}
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; `$$` is a `$`.
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
_ENV_READ = re.compile(
    r"""(?:environ\.get|getenv|env\.get)\(\s*["']([A-Z][A-Z0-9_]*)["']"""
    r"""|environ\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\]"""
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute variables as Compose and the shell do; a missing required one fails."""

    def one(found: re.Match[str]) -> str:
        if found.group(0) == "$$":
            return "$"
        name, operator, word = found.group(1), found.group(2) or "", found.group(3) or ""
        value = env.get(name)
        unset = value is None or (operator.startswith(":") and value == "")
        if operator.endswith("-"):
            return word if unset else str(value)
        if operator.endswith("?") and unset:
            raise LookupError(f"{name}: {word}")
        return value or ""

    return _VARIABLE.sub(one, text)


def variables(text: str) -> set[str]:
    """The names of the `${...}` variables a file uses."""
    return {found.group(1) for found in _VARIABLE.finditer(text) if found.group(1)}


def documented() -> set[str]:
    """Every variable deploy/.env.example names, set or commented out."""
    text = (DEPLOY / ".env.example").read_text()
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


def compose(env: Mapping[str, str] = REQUIRED) -> dict[str, Any]:
    """deploy/compose.yaml as Compose would see it with this deploy/.env."""
    loaded: dict[str, Any] = yaml.safe_load(interpolate((DEPLOY / "compose.yaml").read_text(), env))
    return loaded


def option(command: list[str], flag: str) -> str | None:
    """The value of `-X value` or `--long=value` in a command line, if given."""
    for i, arg in enumerate(command):
        if arg == flag and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
    return None


def procfile() -> dict[str, str]:
    """deploy/Procfile's process types and their command lines, as honcho reads them."""
    processes: dict[str, str] = parse_procfile((DEPLOY / "Procfile").read_text()).processes
    return dict(processes)


def test_the_compose_file_runs_every_service_the_docs_promise() -> None:
    raw = (DEPLOY / "compose.yaml").read_text()
    services = compose()["services"]

    assert set(services) == {"postgres", "redis", *STEPWISE_SERVICES}
    for name in STEPWISE_SERVICES:
        service = services[name]
        assert service["image"] == "stepwise:dev", name
        assert service["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert service["environment"]["STEPWISE_DATABASE_URL"].endswith("@postgres:5432/stepwise")
        for variable in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "STEPWISE_REDIS_URL"):
            assert service["environment"][variable] == "redis://redis:6379/0", (name, variable)

    # The migration runs once; everything that touches the database waits for it.
    assert services["migrate"]["command"] == ["stepwise", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    for name in ("model-worker", "tool-worker", "beat", "api"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }, name

    # Model calls on threads (or gevent), with high concurrency; tools on prefork.
    model = services["model-worker"]["command"]
    assert model[:4] == ["celery", "-A", "tasks", "worker"]
    assert option(model, "-P") in ("threads", "gevent")
    assert int(option(model, "-c") or 0) >= 100
    assert option(model, "-Q") == "celery,stepwise.model"
    tools = services["tool-worker"]["command"]
    assert tools[:4] == ["celery", "-A", "tasks", "worker"]
    assert option(tools, "-P") == "prefork"
    assert option(tools, "-Q") == "stepwise.tools"
    # The queues follow the variables that route the steps.
    moved = compose({**REQUIRED, "STEPWISE_MODEL_QUEUE": "m2", "STEPWISE_TOOL_QUEUE": "t2"})
    assert option(moved["services"]["model-worker"]["command"], "-Q") == "celery,m2"
    assert option(moved["services"]["tool-worker"]["command"], "-Q") == "t2"
    for name in STEPWISE_SERVICES:
        environment = moved["services"][name]["environment"]
        assert environment["STEPWISE_MODEL_QUEUE"] == "m2", name
        assert environment["STEPWISE_TOOL_QUEUE"] == "t2", name

    assert services["beat"]["command"][:4] == ["celery", "-A", "tasks", "beat"]
    assert option(services["flower"]["command"], "--port") == "5555"
    assert services["api"]["command"][:2] == ["stepwise", "serve"]

    # Healthchecks: each worker pings itself by the node name it runs under.
    for name in ("postgres", "redis", "model-worker", "tool-worker", "flower", "api"):
        assert services[name]["healthcheck"]["test"], name
    for name, node in (("model-worker", "model"), ("tool-worker", "tools")):
        assert option(services[name]["command"], "-n") == f"{node}@%h"
        check = " ".join(services[name]["healthcheck"]["test"])
        assert f"inspect ping -d {node}@$HOSTNAME" in check, name
        assert services[name]["stop_grace_period"] == "2m", name
    assert "/healthcheck" in " ".join(services["flower"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["api"]["healthcheck"]["test"])

    # Published on the host's loopback only, on the ports deploy/.env chooses.
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]
    ported = compose({**REQUIRED, "FLOWER_PORT": "15555", "STEPWISE_API_PORT": "18000"})
    assert ported["services"]["flower"]["ports"] == ["127.0.0.1:15555:5555"]
    assert ported["services"]["api"]["ports"] == ["127.0.0.1:18000:8000"]

    # Flower's basic auth, the API's tokens and the database password are required.
    for name in REQUIRED:
        with pytest.raises(LookupError, match=name):
            compose({k: v for k, v in REQUIRED.items() if k != name})
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "admin:secret"

    # Every variable the file uses is in deploy/.env.example.
    assert variables(raw) - documented() == set()


@pytest.fixture
def stand_ins(tmp_path: Path) -> Path:
    """A folder with `celery` and `stepwise` scripts that print their arguments, one a line."""
    for name in ("celery", "stepwise"):
        script = tmp_path / name
        script.write_text('#!/bin/sh\nprintf "%s\\n" "$(basename "$0")" "$@"\n')
        script.chmod(0o755)
    return tmp_path


def shell(line: str, stand_ins: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a Procfile line as honcho does, through /bin/sh with the env file's variables."""
    path = {"PATH": f"{stand_ins}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    return subprocess.run(
        ["/bin/sh", "-c", line], env={**path, **env}, capture_output=True, text=True, timeout=10
    )


def argv(line: str, stand_ins: Path, env: Mapping[str, str]) -> list[str]:
    """The command line a Procfile line runs, after the shell has expanded it."""
    ran = shell(line, stand_ins, env)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.splitlines()


def test_the_procfile_starts_the_same_stack_with_ports_from_the_environment(
    stand_ins: Path,
) -> None:
    lines = procfile()
    services = compose()["services"]
    auth = {"FLOWER_BASIC_AUTH": "admin:secret"}

    assert list(lines) == ["model", "tools", "beat", "flower", "api"]
    defaults = {name: argv(line, stand_ins, auth) for name, line in lines.items()}
    for name, service in (("model", "model-worker"), ("tools", "tool-worker")):
        command = services[service]["command"]
        for flag in ("-P", "-c", "-Q", "-n"):
            assert option(defaults[name], flag) == option(command, flag), (name, flag)
    assert defaults["beat"] == ["celery", "-A", "tasks", "beat", "-s", ".celerybeat-schedule",
                                "--loglevel=INFO"]  # fmt: skip
    assert option(defaults["flower"], "--port") == "5555"
    assert defaults["api"] == ["stepwise", "serve", "--host", "127.0.0.1", "--port", "8000"]

    chosen = {
        **auth,
        "FLOWER_PORT": "6001",
        "STEPWISE_API_PORT": "6002",
        "STEPWISE_BEAT_SCHEDULE": "/tmp/x",
        "STEPWISE_MODEL_QUEUE": "m2",
        "STEPWISE_TOOL_QUEUE": "t2",
    }
    moved = {name: argv(line, stand_ins, chosen) for name, line in lines.items()}
    assert option(moved["flower"], "--port") == "6001"
    assert option(moved["api"], "--port") == "6002"
    assert option(moved["beat"], "-s") == "/tmp/x"
    assert option(moved["model"], "-Q") == "celery,m2"
    assert option(moved["tools"], "-Q") == "t2"

    assert variables("\n".join(lines.values())) - documented() == set()


def test_flower_refuses_to_start_without_basic_auth_and_never_shows_the_password(
    stand_ins: Path,
) -> None:
    line = procfile()["flower"]

    refused = shell(line, stand_ins, {})
    assert refused.returncode != 0
    assert "FLOWER_BASIC_AUTH" in refused.stderr
    assert refused.stdout == ""

    started = argv(line, stand_ins, {"FLOWER_BASIC_AUTH": "admin:s3cret", "FLOWER_PORT": "6001"})
    assert started == ["celery", "-A", "tasks", "flower", "--address=127.0.0.1", "--port=6001"]


def test_the_dockerfile_installs_what_pyproject_declares_as_a_non_root_user() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    instructions = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())

    base = next(arg for word, arg in instructions if word == "FROM")
    lowest = re.fullmatch(r">=(\d+\.\d+)", project["project"]["requires-python"])
    assert lowest is not None
    assert base == f"python:{lowest.group(1)}-slim"

    copied = {
        source
        for word, arg in instructions
        if word == "COPY" and not arg.startswith("--")
        for source in arg.split()[:-1]
    }
    setuptools = project["tool"]["setuptools"]
    top_level = {package.split(".")[0] for package in setuptools["packages"]}
    modules = {f"{module}.py" for module in setuptools["py-modules"]}
    assert top_level | modules | {"pyproject.toml", project["project"]["readme"]} <= copied

    assert ["RUN", 'pip install ".[otel,redbeat]"'] in instructions
    words = [word for word, _ in instructions]
    user = instructions[words.index("USER")][1]
    assert user not in ("root", "0")
    assert words.index("USER") > max(i for i, word in enumerate(words) if word == "RUN")

    # The default command is the compose file's model worker.
    command = yaml.safe_load(next(arg for word, arg in instructions if word == "CMD"))
    assert command == compose()["services"]["model-worker"]["command"]

    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {"deploy/.env", ".venv", ".git"} <= set(ignored)


def test_pip_install_in_the_image_gets_every_package_of_the_source_tree() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(declared["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in {package.split(".")[0] for package in packages}
        for init in (ROOT / top).rglob("__init__.py")
    }

    # `pip install .` (not editable) installs only the packages pyproject.toml lists.
    missing = sorted(found - packages)
    assert not missing, f"pyproject.toml's [tool.setuptools] packages lacks {missing}"


def test_the_env_example_names_every_variable_the_code_reads() -> None:
    sources = [ROOT / "celeryconfig.py"]
    for package in ("tasks", "providers", "storage"):
        sources += sorted((ROOT / package).rglob("*.py"))
    read = {
        name
        for source in sources
        for found in _ENV_READ.finditer(source.read_text())
        for name in found.groups()
        if name
    }

    assert read, "the pattern found no environment reads at all"
    missing = sorted(read - documented())
    assert not missing, f"deploy/.env.example does not name {missing}"


def test_the_env_example_reads_the_same_under_honcho_as_it_is_written() -> None:
    text = (DEPLOY / ".env.example").read_text()
    written = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )

    assert parse(text) == written
    assert {"FLOWER_BASIC_AUTH", "STEPWISE_DATABASE_URL", "CELERY_BROKER_URL"} <= set(written)
