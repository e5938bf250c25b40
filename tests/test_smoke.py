"""The same demo run completes on the embedded default and on real workers."""

from tasks import client


def test_parallel_tool_calls_complete_on_both_backends(anywhere):
    run_id = client.start_run("parallel", "add things")
    run = client.wait(run_id, timeout=30)
    assert run.status == "succeeded", run.error
    assert run.result == "1+2 and 3+4 are done"
    outputs = [s.output["content"] for s in client.get_steps(run_id) if s.kind == "tool"]
    assert outputs == ["3", "7"]
