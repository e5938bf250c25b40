"""A real browser follows a run with EventSource, across a crash of the server it follows.

Headless Chromium (Debian's package, /usr/bin/chromium) opens a page served from
another origin; the page follows the run through a ticket URL and reports what it
saw to the little server that served it. Missing Chromium fails the test under
CI=true and skips it elsewhere, as missing services do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import IN_CI, ROOT
from tests.test_integration_support import (
    AGENTS,
    GATES_ENV,
    Server,
    events,
    free_port,
    open_gate,
    start_worker,
    wait_for_event,
    wait_until,
)

pytestmark = pytest.mark.services

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "alice-0123456789abcdef"
PATIENCE = 60.0  # a browser's first start can be slow

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>follow a run</title>
<script>
const events = new URLSearchParams(location.search).get("events");
const seen = [];
let opens = 0, errors = 0;
const report = (path, body) => fetch(path, {
  method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
});
const progress = () => report("/progress", {opens, errors, seen});
const source = new EventSource(events);
source.onopen = () => { opens += 1; progress(); };
source.onerror = () => { errors += 1; progress(); };
source.onmessage = (message) => {
  const event = JSON.parse(message.data);
  seen.push({lastEventId: message.lastEventId, type: event.type, seq: event.seq});
  progress();
};
source.addEventListener("end", (message) => {
  source.close();
  report("/done", {opens, errors, seen, end: JSON.parse(message.data)});
});
</script>
"""


class Collector:
    """What the page reported: its latest progress, and what it saw by the end."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.progress: dict[str, Any] = {"opens": 0, "errors": 0, "seen": []}
        self.done: dict[str, Any] | None = None

    def take(self, path: str, report: dict[str, Any]) -> None:
        with self.lock:
            if path == "/done":
                self.done = report
            # Reports can overtake one another: keep the one that knows the most.
            elif (len(report["seen"]), report["opens"], report["errors"]) >= (
                len(self.progress["seen"]),
                self.progress["opens"],
                self.progress["errors"],
            ):
                self.progress = report

    def latest(self) -> dict[str, Any]:
        with self.lock:
            return self.progress


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium: fail in CI when it is missing, skip elsewhere."""
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is not installed (scripts/test installs Debian's chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture
def page_server() -> Iterator[tuple[str, Collector]]:
    """The page's origin: serves the page and collects its reports."""
    collector = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = PAGE.encode()
            self.send_response(200 if self.path.startswith("/page.html") else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            report = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            collector.take(self.path, report)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_address[1]}", collector
    http.shutdown()
    http.server_close()


@pytest.fixture
def browse(chromium: Path, tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """Opens a URL in a headless Chromium of its own; kills it (and its children) after."""
    started: list[subprocess.Popen[bytes]] = []

    def open_page(url: str) -> None:
        profile = tmp_path / "chromium-profile"
        command = [
            str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", url,
        ]  # fmt: skip
        with (tmp_path / "chromium.log").open("ab") as sink:
            started.append(
                subprocess.Popen(
                    command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
                )
            )

    yield open_page
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the browser's processes
        process.wait(10)


def stored(seen: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(e["seq"], e["type"]) for e in seen if e["seq"] is not None]


def test_a_browser_follows_a_run_across_a_server_crash_and_sees_every_event_once_in_order(
    worker: Any,
    distributed: dict[str, str],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    page_server: tuple[str, Collector],
    browse: Callable[[str], None],
) -> None:
    origin, collector = page_server
    gates = tmp_path / "gates"
    gates.mkdir()
    start_worker(worker, monkeypatch, gates)
    env = {
        **os.environ,
        **distributed,
        "PYTHONPATH": str(ROOT),
        "STEPWISE_AGENTS": AGENTS,
        GATES_ENV: str(gates),
        "STEPWISE_API_TOKENS": f"alice={TOKEN}",
        "STEPWISE_CORS_ORIGINS": origin,
    }
    port = free_port()
    first = Server(env, ROOT, tmp_path / "first.log", port, "--keepalive", "0.5")
    second = Server(env, ROOT, tmp_path / "second.log", port, "--keepalive", "0.5")
    try:
        first.start()
        with httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
            started = api.post("/runs", json={"agent": "gated", "input": "go through"})
            assert started.status_code == 201, started.text
            run_id = started.json()["id"]
            gate = wait_for_event(database_url, run_id, "tool.started", step=2)
            ticket = api.post(f"/runs/{run_id}/tickets").json()

        browse(f"{origin}/page.html?events={quote(first.url + ticket['events_url'], safe='')}")
        wait_until(
            "the page to see every event up to the gate",
            lambda: gate in [e["seq"] for e in collector.latest()["seen"]],
            within=PATIENCE,
        )
        before = stored(collector.latest()["seen"])
        first.kill()  # mid-run, with the page's stream open
        second.start()  # on the same port
        wait_until(
            "the page to reconnect by itself",
            lambda: collector.latest()["opens"] == 2,
            within=PATIENCE,
        )
        open_gate(gates, run_id)
        done = wait_until("the page to see the end", lambda: collector.done, within=PATIENCE)
    finally:
        first.stop()
        second.stop()

    log = [(seq, kind) for seq, kind, _ in events(database_url, run_id)]
    assert log[-1][1] == "run.succeeded"
    assert before == log[:gate]
    assert stored(done["seen"]) == log  # every stored event, once, in order, across the crash
    assert all(e["lastEventId"] == str(e["seq"]) for e in done["seen"] if e["seq"] is not None)
    assert done["end"] == {"status": "succeeded"}
    assert done["opens"] == 2
    assert done["errors"] >= 1
    # One stream from each server; the second resumed after the gate, so it carried
    # Last-Event-ID (from the start, the page would have seen events twice).
    follows = f"GET /runs/{run_id}/events 200"
    assert (first.output().count(follows), second.output().count(follows)) == (1, 1)
