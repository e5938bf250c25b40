"""The `stepwise` command: run agents, watch them, inspect and cancel them.

Exit codes: 0 the run succeeded (or the command did its job), 1 the run ended
otherwise (failed, cancelled, timed out), 2 bad input, 3 a configuration problem.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict
from functools import wraps
from typing import Annotated, Any

import typer

from providers.scripted import STAND_IN_NOTICE
from providers.types import Usage
from storage import SchemaOutOfDate, make_engine, upgrade
from tasks import client
from tasks.app import known_schedules, watchdog_sweep
from tasks.errors import ConfigError, UserError, WaitTimeout
from tasks.render import LiveView
from tasks.runtime import current_runtime
from tasks.schedules import check_agents as schedule_problems
from tasks.schedules import overview
from tasks.settings import Settings

OK, NOT_SUCCEEDED, BAD_INPUT, MISCONFIGURED = 0, 1, 2, 3

cli = typer.Typer(
    help="Run LLM agents as durable, distributed Celery work.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_cli = typer.Typer(help="Manage the database schema.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")


def _errors_exit(command: Callable[..., None]) -> Callable[..., None]:
    """Turn our errors into a message on stderr and the documented exit code."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except UserError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(BAD_INPUT) from None
        except (ConfigError, SchemaOutOfDate) as error:
            typer.echo(f"configuration error: {error}", err=True)
            raise typer.Exit(MISCONFIGURED) from None
        except WaitTimeout as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(NOT_SUCCEEDED) from None

    return wrapper


def _exit_for(status: str) -> None:
    raise typer.Exit(OK if status == "succeeded" else NOT_SUCCEEDED)


def _follow(run_id: str, after: int, as_json: bool) -> str:
    view = LiveView(sys.stdout)
    for event in client.follow(run_id, after=after):
        if as_json:
            typer.echo(json.dumps(event))
        else:
            view.show(event)
    return client.get_run(run_id).status


@cli.command()
@_errors_exit
def run(
    agent: Annotated[str, typer.Argument(help="The agent's name (see `stepwise agents`).")],
    input: Annotated[str, typer.Argument(help="What to ask the agent.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Show live progress.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the finished run as JSON.")
    ] = False,
    thread: Annotated[str | None, typer.Option(help="Continue this conversation.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Starting twice with one key starts one run.")
    ] = None,
    metadata: Annotated[str | None, typer.Option(help="A JSON object kept with the run.")] = None,
) -> None:
    """Start a run and print its id; with --follow, watch it to the end."""
    try:
        meta = json.loads(metadata) if metadata else None
    except json.JSONDecodeError as error:
        raise UserError(f"--metadata is not valid JSON: {error}") from None
    rt = current_runtime()
    model = rt.agents.get(agent).model
    if model.startswith("scripted:"):
        typer.echo(f"note: agent {agent!r} uses {model}, the {STAND_IN_NOTICE}", err=True)
    run_id = client.start_run(
        agent, input, thread=thread, idempotency_key=idempotency_key, metadata=meta
    )
    if follow and not as_json:
        _exit_for(_follow(run_id, 0, as_json=False))
    typer.echo(run_id, err=as_json)
    if as_json or rt.settings.embedded:
        info = client.wait(run_id)
        if as_json:
            typer.echo(json.dumps(info.to_json(), indent=2))
        else:
            typer.echo(f"{info.status}: {info.result if info.result is not None else info.error}")
        _exit_for(info.status)


def _tokens(u: Usage, *, every: bool = True) -> str:
    """Token counts; without `every`, the zero cache and reasoning counters are left out."""
    counts = [
        (u.input_tokens, "in"),
        (u.output_tokens, "out"),
        (u.cached_tokens, "cached"),
        (u.cache_write_tokens, "cache-write"),
        (u.reasoning_tokens, "reasoning"),
    ]
    return " · ".join(f"{n} {what}" for i, (n, what) in enumerate(counts) if every or i < 2 or n)


def _dollars(cost: float | None) -> str:
    return "no price" if cost is None else f"${cost:.6f}"


def _cost(total: float | None, steps: list[client.StepInfo]) -> str:
    unpriced = sum(1 for s in steps if s.usage is not None and s.cost_usd is None)
    if not unpriced:
        return _dollars(0.0 if total is None else total)
    note = f"{unpriced} model step(s) had no price: add the model to STEPWISE_PRICES"
    return note if total is None else f"{_dollars(total)} + {note}"


@cli.command()
@_errors_exit
def show(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a run: status, result or error, usage and every step."""
    info = client.get_run(run_id)
    steps = client.get_steps(run_id)
    if as_json:
        data = info.to_json()
        data["steps"] = [
            {
                "number": s.number,
                "kind": s.kind,
                "status": s.status,
                "tool": s.tool_name,
                "arguments": s.arguments,
                "output": s.output,
                "error": s.error,
                "attempts": s.attempts,
                "queue": s.queue,
                "usage": asdict(s.usage) if s.usage else None,
                "cost_usd": s.cost_usd,
            }
            for s in steps
        ]
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(f"run      {info.id}\nagent    {info.agent}\nstatus   {info.status}")
        typer.echo(f"thread   {info.thread}\ninput    {info.input}")
        typer.echo(f"tokens   {_tokens(info.usage)}")
        typer.echo(f"cost     {_cost(info.cost_usd, steps)}")
        for s in steps:
            if s.kind == "tool":
                what = f"tool {s.tool_name}({s.arguments})"
            else:
                model = (s.output or {}).get("model") or ""
                spent = (
                    f"{_tokens(s.usage, every=False)} · {_dollars(s.cost_usd)}" if s.usage else ""
                )
                what = f"model {model} {spent}".rstrip()
            typer.echo(f"  step {s.number:>3} {s.status:<9} {what}")
        if info.result is not None:
            typer.echo(f"result\n{info.result}")
        if info.error is not None:
            typer.echo(f"error    {info.error}")
    if info.done:
        _exit_for(info.status)


@cli.command("follow")
@_errors_exit
def follow_command(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    after: Annotated[int, typer.Option(help="Only events after this sequence number.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON event per line.")] = False,
) -> None:
    """Show a run's events, replayed then live, until it ends."""
    _exit_for(_follow(run_id, after, as_json))


@cli.command()
@_errors_exit
def cancel(run_id: Annotated[str, typer.Argument(metavar="RUN")]) -> None:
    """Cancel a run (at once if queued, at the next step boundary if running)."""
    info = client.cancel(run_id)
    typer.echo(f"{info.id}: {info.status}" + (" (cancel requested)" if not info.done else ""))


@cli.command()
@_errors_exit
def watchdog() -> None:
    """Resume or end the runs that stopped making progress, once (beat does it every minute)."""
    resumed = watchdog_sweep.apply().get()
    typer.echo(f"resumed {resumed} run(s)")


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@cli.command()
@_errors_exit
def serve(
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The port to listen on.")] = 8000,
    keepalive: Annotated[
        float, typer.Option(help="Seconds between keepalive comments on a quiet event stream.")
    ] = 15.0,
    send_timeout: Annotated[
        float, typer.Option(help="Seconds a client may leave events unread before it is cut off.")
    ] = 30.0,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without STEPWISE_API_TOKENS on any address.")
    ] = False,
) -> None:
    """Serve the HTTP API: start, read, cancel and follow runs (Server-Sent Events)."""
    import uvicorn

    from tasks.server import create_app

    settings = Settings.from_env()
    if not settings.api_tokens:
        if host not in _LOOPBACK and not no_auth:
            raise ConfigError(
                f"STEPWISE_API_TOKENS is not set: refusing to serve an open API on {host}; "
                "set tokens (owner=token,…) or pass --no-auth"
            )
        typer.echo(
            "note: no STEPWISE_API_TOKENS: the API is open to anyone who can reach it", err=True
        )
    current_runtime()  # fail now, not on the first request, when the configuration is wrong
    app = create_app(settings, keepalive=keepalive, send_timeout=send_timeout)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")


@cli.command()
@_errors_exit
def agents() -> None:
    """List the agents this configuration knows."""
    for agent in current_runtime().agents:
        tools = ", ".join(t.name for t in agent.tools) or "no tools"
        typer.echo(f"{agent.name:<20} {agent.model:<32} {tools}")


@cli.command()
@_errors_exit
def schedules(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per schedule.")] = False,
) -> None:
    """List the beat schedules with their next fire time and last run."""
    rt = current_runtime()
    known = known_schedules(rt.settings)
    for problem in schedule_problems(rt, known):
        typer.echo(f"warning: {problem}", err=True)
    for item in overview(rt, known):
        s, tick, last = item.schedule, item.last_tick, item.last_run
        if as_json:
            data = {
                "name": s.name,
                "when": s.describe(),
                "agent": s.agent,
                "owner": s.owner,
                "overlap": s.overlap,
                "next_fire": item.next_fire.isoformat(),
                "last_tick": tick.tick.isoformat() if tick else None,
                "last_outcome": tick.outcome if tick else None,
                "last_run": last.id if last else None,
                "last_run_status": last.status if last else None,
            }
            typer.echo(json.dumps(data))
            continue
        ran = f"{last.id} {last.status}" if last else "no run yet"
        typer.echo(
            f"{s.name:<20} {s.describe():<20} {s.agent:<16} {s.overlap:<16} "
            f"next {item.next_fire:%Y-%m-%d %H:%M:%S}Z  last {ran}"
        )


@db_cli.command("upgrade")
@_errors_exit
def db_upgrade() -> None:
    """Migrate the database (STEPWISE_DATABASE_URL) to the newest schema."""
    url = Settings.from_env().database_url
    upgrade(make_engine(url))
    typer.echo(f"database at the newest schema: {url.split('@')[-1]}")


def main() -> None:
    """The console script's entry point."""
    cli()
