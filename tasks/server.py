"""`stepwise serve`: start, read, cancel and follow runs over HTTP, built on FastAPI.

    POST /runs                   start a run (201; 200 when the idempotency key was seen)
    GET  /runs/{id}              the run and its steps
    POST /runs/{id}/cancel       cancel it (202)
    POST /runs/{id}/tickets      a URL a browser can follow the run with, without a token
    GET  /runs/{id}/events       Server-Sent Events: replayed, then live, to the terminal event
    GET  /health                 200 when the database answers

Callers authenticate with `Authorization: Bearer <token>`; STEPWISE_API_TOKENS
maps each token to an owner. A run started by an owner is visible to that owner
only (403 to anyone else); a run started without an owner, to every caller.
With no tokens configured the API is open, which `stepwise serve` allows on a
loopback address only unless told `--no-auth`.

The event stream sets `id:` to each stored event's sequence number, so a
browser's EventSource resumes after a dropped connection by sending
`Last-Event-ID`, and sees neither a gap nor a repeat. Token deltas carry no id.
After the terminal event comes an `end` event and the stream closes; asked
again past the end, the server answers 204, which tells EventSource to stop.
A client that stops reading is cut off after `send_timeout` seconds; it can
resume from its last id. Nobody else waits for it: each follower has its own
bounded inbox, and the process's one Redis connection never blocks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Receive, Scope, Send

from storage import TERMINAL, Run
from storage import follow as protocol
from storage.events import TERMINAL_EVENTS
from storage.models import aware
from tasks import client, runs
from tasks.errors import NotYours, RunNotFound, UserError
from tasks.runtime import current_runtime
from tasks.settings import Settings

log = logging.getLogger("stepwise.http")

TICKET_TTL = 3600  # seconds a follow ticket stays valid unless asked otherwise
MAX_TICKET_TTL = 86_400


class StartRequest(BaseModel):
    """The body of `POST /runs`."""

    agent: str
    input: str
    thread: str | None = None
    idempotency_key: str | None = None
    metadata: dict[str, Any] | None = None
    run_id: str | None = None


class TicketRequest(BaseModel):
    """The body of `POST /runs/{id}/tickets`."""

    expires_in: int = Field(default=TICKET_TTL, ge=1, le=MAX_TICKET_TTL)


@dataclass(frozen=True)
class Caller:
    """Who is asking: an owner, or anyone at all when the API is open."""

    owner: str | None
    open: bool = False

    def may_see(self, owner: str | None) -> bool:
        return self.open or owner is None or owner == self.owner


class Tickets:
    """Signed, expiring permissions to read one run's events (for browsers)."""

    def __init__(self, settings: Settings) -> None:
        secret = settings.api_secret or "\n".join(t for t, _ in sorted(settings.api_tokens))
        self._key = hashlib.sha256(b"stepwise follow ticket\n" + secret.encode()).digest()

    def issue(self, run_id: str, expires_in: int, now: float | None = None) -> str:
        expires = int((now or time.time()) + expires_in)
        return f"{expires}.{self._sign(run_id, expires)}"

    def valid(self, ticket: str, run_id: str, now: float | None = None) -> bool:
        expires, _, signature = ticket.partition(".")
        if not expires.isdigit() or int(expires) < (now or time.time()):
            return False
        return hmac.compare_digest(signature, self._sign(run_id, int(expires)))

    def _sign(self, run_id: str, expires: int) -> str:
        mac = hmac.new(self._key, f"{run_id}.{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def create_app(
    settings: Settings | None = None, *, keepalive: float = 15.0, send_timeout: float = 30.0
) -> FastAPI:
    """The HTTP API for `settings` (by default, the environment's).

    `keepalive`: seconds between comment lines on a quiet event stream.
    `send_timeout`: seconds a client may leave a write unread before it is cut off.
    """
    settings = settings or Settings.from_env()
    tickets = Tickets(settings)
    app = _Api(
        title="Stepwise",
        summary="Start, read, cancel and follow LLM agent runs.",
        version="0.1.0",
    )
    app.state.owners = dict(settings.api_tokens)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )

    @app.exception_handler(UserError)
    async def user_error(_request: Request, error: UserError) -> JSONResponse:
        status = 400
        if isinstance(error, RunNotFound):
            status = 404
        elif isinstance(error, NotYours):
            status = 403
        return JSONResponse({"detail": str(error)}, status_code=status)

    @app.post("/runs", status_code=201)
    def start_run(body: StartRequest, who: Authorized, response: Response) -> dict[str, Any]:
        """Start a run; the same idempotency key again returns the first run (200)."""
        rt = current_runtime()
        run_id, created = runs.accept(rt, **body.model_dump(), owner=who.owner)
        if created:
            client.enqueue(rt, run_id)
        else:
            response.status_code = 200
        response.headers["Location"] = f"/runs/{run_id}"
        return _run_json(_visible_run(run_id, who))

    @app.get("/runs/{run_id}")
    def get_run(run_id: str, who: Authorized) -> dict[str, Any]:
        """The run with its steps."""
        data = _run_json(_visible_run(run_id, who))
        data["steps"] = [_step_json(s) for s in client.get_steps(run_id)]
        return data

    @app.post("/runs/{run_id}/cancel", status_code=202)
    def cancel_run(run_id: str, who: Authorized) -> dict[str, Any]:
        """Cancel: at once when queued, at the next step boundary when running."""
        _visible_run(run_id, who)
        return _run_json(client.cancel(run_id))

    @app.post("/runs/{run_id}/tickets", status_code=201)
    def issue_ticket(
        run_id: str, who: Authorized, body: TicketRequest | None = None
    ) -> dict[str, Any]:
        """A URL that follows this run without a token, until it expires."""
        _visible_run(run_id, who)
        expires_in = (body or TicketRequest()).expires_in
        ticket = tickets.issue(run_id, expires_in)
        return {
            "ticket": ticket,
            "expires_in": expires_in,
            "events_url": f"/runs/{run_id}/events?ticket={ticket}",
        }

    @app.get("/runs/{run_id}/events", response_model=None)
    async def events(
        request: Request,
        run_id: str,
        authorization: Annotated[str | None, Header()] = None,
        last_event_id: Annotated[str | None, Header()] = None,
        after: Annotated[int, Query(ge=0)] = 0,
        ticket: str | None = None,
    ) -> Response:
        """The run's events as Server-Sent Events, after `Last-Event-ID` (or `after`)."""
        if ticket is None or not tickets.valid(ticket, run_id):
            if ticket is not None and authorization is None:
                raise HTTPException(401, "the ticket is invalid or has expired")
            who = _caller(request, authorization)
            await asyncio.to_thread(_visible_run, run_id, who)
        else:
            await asyncio.to_thread(client.get_run, run_id)
        if last_event_id is not None:
            after = _sequence(last_event_id)
        if await asyncio.to_thread(_ended_by, run_id, after):
            return Response(status_code=204)  # seen to the end: EventSource stops here
        return _EventStream(
            _stream(run_id, after),
            ping=keepalive,
            send_timeout=send_timeout,
        )

    @app.get("/health")
    def health() -> dict[str, str]:
        """200 when the database answers."""
        with current_runtime().store.reading() as db:
            db.execute(text("SELECT 1"))
        return {"status": "ok"}

    return app


class _Api(FastAPI):
    """FastAPI, plus an access log and a way to let go of a client that stopped reading.

    Both need the server's own `send`, which only the outermost application sees.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        # uvicorn's send is a method of the request's cycle, which holds the connection.
        scope["stepwise.transport"] = getattr(getattr(send, "__self__", None), "transport", None)
        started = time.monotonic()
        logged = False

        def access(status: int) -> None:
            # Logged when the answer starts (a stream may last hours), without the query
            # string, which may hold a ticket.
            nonlocal logged
            logged = True
            took = (time.monotonic() - started) * 1000
            log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, took)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                access(message["status"])
            await send(message)

        try:
            await super().__call__(scope, receive, sending)
        except Exception:
            if not logged:
                access(500)
            raise


class _EventStream(EventSourceResponse):
    """An event stream that drops the connection of a client that stopped reading.

    A plain close would wait for the unread bytes to drain, which they never do.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except* SendTimeoutError:  # alone, or in a group with what the other tasks raised
            transport = scope.get("stepwise.transport")
            if transport is not None:
                transport.abort()
            log.info(
                "dropped the event stream of %s: it left events unread for %s s",
                scope["path"],
                self.send_timeout,
            )


def _caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
    """The owner the bearer token names; 401 without a valid one (unless the API is open)."""
    owners: dict[str, str] = request.app.state.owners
    if not owners:
        return Caller(owner=None, open=True)
    scheme, _, token = (authorization or "").partition(" ")
    owner = owners.get(token.strip()) if scheme.lower() == "bearer" else None
    if owner is None:
        raise HTTPException(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
    return Caller(owner=owner)


Authorized = Annotated[Caller, Depends(_caller)]


def _visible_run(run_id: str, who: Caller) -> client.RunInfo:
    """The run, if `who` may see it: 404 when there is none, 403 when it is another's."""
    info = client.get_run(run_id)
    if not who.may_see(info.owner):
        raise HTTPException(403, f"run {run_id} belongs to another owner")
    return info


def _sequence(value: str) -> int:
    """A Last-Event-ID: the sequence number of the last stored event the client saw."""
    value = value.strip()
    if not value:
        return 0  # the spec's way of saying "none yet"
    if not value.isdigit() or len(value) > 18:
        raise HTTPException(400, f"Last-Event-ID must be a sequence number, got {value[:40]!r}")
    return int(value)


def _ended_by(run_id: str, after: int) -> bool:
    """True when the run has ended and `after` reaches its terminal event."""
    with current_runtime().store.reading() as db:
        run = db.get(Run, run_id)
        return run is not None and run.status in TERMINAL and 0 < run.last_seq <= after


async def _stream(run_id: str, after: int) -> AsyncIterator[ServerSentEvent]:
    rt = current_runtime()
    yield ServerSentEvent(retry=1000, comment="stepwise")
    async for event in protocol.afollow(rt.store, run_id, after):
        seq = event["seq"]
        yield ServerSentEvent(
            json.dumps(event, separators=(",", ":")), id=None if seq is None else str(seq)
        )
        if event["type"] in TERMINAL_EVENTS:
            yield ServerSentEvent(json.dumps({"status": event["data"]["status"]}), event="end")


def _run_json(info: client.RunInfo) -> dict[str, Any]:
    data = info.to_json()
    data["usage"] = asdict(info.usage)
    return data


def _step_json(step: client.StepInfo) -> dict[str, Any]:
    data = asdict(step)
    for key in ("started_at", "finished_at"):
        data[key] = aware(data[key]).isoformat() if data[key] else None
    return data
