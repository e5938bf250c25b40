"""Real workers export traces over OTLP/HTTP to a receiver the test runs.

The receiver is a tiny HTTP server that accepts `POST /v1/traces` and decodes the
protobuf with opentelemetry-proto, so the test reads exactly what a collector would.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tasks import client
from tasks.observability import genai
from tests.test_integration_support import query, start_worker

PROMPT = "Add these up, privately: 1+2 and 3+4"


@dataclass(frozen=True)
class Received:
    """One span as the receiver decoded it."""

    trace_id: str
    span_id: str
    parent: str
    name: str
    kind: str
    attributes: dict[str, Any]
    status: str
    service: str


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    return getattr(value, which) if which else None


class Receiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Received] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def accept(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        found = []
        for resource in request.resource_spans:
            attributes = {a.key: _value(a.value) for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    found.append(
                        Received(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent=span.parent_span_id.hex(),
                            name=span.name,
                            kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status=Status.StatusCode.Name(span.status.code),
                            service=str(attributes.get("service.name")),
                        )
                    )
        with self._lock:
            self._spans.extend(found)

    def spans(self) -> list[Received]:
        with self._lock:
            return list(self._spans)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            receiver.accept(body)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    made.thread.start()
    yield made
    made.server.shutdown()
    made.server.server_close()


def _chain(span: Received, by_id: dict[str, Received]) -> list[Received]:
    """The span's ancestors, nearest first, as far as they were received."""
    found = []
    while span.parent and span.parent in by_id:
        span = by_id[span.parent]
        found.append(span)
    return found


def test_a_run_is_one_trace_from_its_run_span_through_celery_messages_to_each_step(
    worker: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    receiver: Receiver,
    database_url: str,
) -> None:
    # An endpoint alone asks for OTLP; BSP batches are flushed when the workers stop.
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "stepwise-test"}
    models = start_worker(worker, monkeypatch, tmp_path, env, queues="celery,stepwise.model")
    tools = start_worker(
        worker, monkeypatch, tmp_path, env, queues="stepwise.tools", pool="prefork", concurrency=2
    )
    run_id = client.start_run("parallel", PROMPT)

    run = client.wait(run_id, timeout=60)
    assert run.status == "succeeded", run.error
    tools.stop()
    models.stop()  # a warm shutdown exports what is left

    spans = receiver.spans()
    mine = [s for s in spans if s.trace_id == run_id.replace("-", "")]
    by_id = {s.span_id: s for s in mine}
    assert {s.service for s in spans} == {"stepwise-test"}
    assert all(
        s.trace_id == run_id.replace("-", "") for s in spans if "stepwise.run_id" in s.attributes
    )
    [root] = [s for s in mine if s.name == "invoke_agent parallel"]
    assert root.parent == ""
    assert root.span_id == f"{genai.run_span_id(run_id):016x}"
    usage = query(database_url, "SELECT usage FROM stepwise_runs WHERE id = %s", run_id)[0][0]
    assert root.attributes == {
        "stepwise.run_id": run_id,
        "stepwise.agent": "parallel",
        "gen_ai.agent.name": "parallel",
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.request.model": "parallel",
        "gen_ai.provider.name": "scripted",
        "gen_ai.usage.input_tokens": usage["input_tokens"],
        "gen_ai.usage.output_tokens": usage["output_tokens"],
        "stepwise.status": "succeeded",
        "stepwise.cost_usd": 0.0,
    }

    chats = sorted(
        (s for s in mine if s.name == "chat parallel"), key=lambda s: s.attributes["stepwise.step"]
    )
    tools_ = sorted(
        (s for s in mine if s.name == "execute_tool add"),
        key=lambda s: s.attributes["stepwise.step"],
    )
    assert [s.attributes["stepwise.step"] for s in chats] == [1, 4]
    assert [s.attributes["stepwise.step"] for s in tools_] == [2, 3]
    for span in chats + tools_:
        chain = _chain(span, by_id)
        assert chain and chain[-1] == root, f"{span.name} does not reach the run span"
        # Linked through the broker: a consumer span whose parent is a producer span.
        assert chain[0].kind == "CONSUMER" and chain[0].name.startswith("run/stepwise.")
        assert any(a.kind == "PRODUCER" and a.name.startswith("apply_async/") for a in chain)
        assert span.attributes["stepwise.run_id"] == run_id
        assert span.attributes["stepwise.agent"] == "parallel"
        assert span.status == "STATUS_CODE_UNSET"
    # The tool steps ran in the prefork worker's children, sent by model step 1's task.
    for tool in tools_:
        consumer, producer = _chain(tool, by_id)[:2]
        assert consumer.name == "run/stepwise.tool_step"
        assert producer.name == "apply_async/stepwise.tool_step"
        assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
        assert tool.attributes["gen_ai.tool.name"] == "add"
    rows = query(
        database_url,
        "SELECT number, usage FROM stepwise_steps WHERE run_id = %s AND kind = 'model' "
        "ORDER BY number",
        run_id,
    )
    for chat, (number, step_usage), reason in zip(chats, rows, ("tool_calls", "stop"), strict=True):
        assert chat.kind == "CLIENT"
        assert chat.attributes["stepwise.step"] == number
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.request.model"] == "parallel"
        assert chat.attributes["gen_ai.response.model"] == "parallel"
        assert chat.attributes["gen_ai.provider.name"] == "scripted"
        assert chat.attributes["gen_ai.usage.input_tokens"] == step_usage["input_tokens"]
        assert chat.attributes["gen_ai.usage.output_tokens"] == step_usage["output_tokens"]
        assert chat.attributes["gen_ai.response.finish_reasons"] == (reason,)
    # Every task of the run is in its trace, and its span names the run.
    consumers = [s for s in mine if s.kind == "CONSUMER"]
    assert sorted(s.name.removeprefix("run/stepwise.") for s in consumers) == [
        "model_step",
        "model_step",
        "start_run",
        "tool_step",
        "tool_step",
    ]
    assert all(s.attributes["stepwise.run_id"] == run_id for s in consumers)
    # Neither the prompt nor a tool's arguments become an attribute.
    text = repr([s.attributes for s in spans])
    assert "privately" not in text and '"a": 1' not in text
