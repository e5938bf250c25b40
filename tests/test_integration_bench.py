"""The benchmark harness: every scenario on real workers, and how it reports them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench import bare, history
from bench.common import CpuClock
from bench.report import plot, record, table
from bench.steps import Meter
from bench.taskcpu import difference, parts_ms

ROOT = Path(__file__).resolve().parent.parent


def _figures() -> dict[str, Any]:
    level = {
        "runs": 1000,
        "wall_s": 12.5,
        "ideal_s": 3.0,
        "runs_per_s": 80.0,
        "steps_per_s": 400.0,
        "run_latency_ms": {"p50": 8000.0, "p90": 11000.0, "p99": 12000.0},
        "peak_worker_rss_mb": 180.0,
        "worker_cpu_ms_per_step": 9.0,
        "worker_cpu_where": {
            "per_step_ms": {"consumer": 1.5, "bodies": 7.0, "rest": 0.5},
            "per_task": {
                "stepwise.model_step": {"tasks": 3000, "cpu_ms": 8.0},
                "stepwise.start_run": {"tasks": 1000, "cpu_ms": 5.0},
                "stepwise.tool_step": {"tasks": 2000, "cpu_ms": 4.5},
            },
            "per_part_ms": {"model claim": 2.5, "model call": 3.0, "send": 1.5},
        },
        "bare": {"wall_s": 5.0, "worker_cpu_ms_per_step": 3.0},
    }
    return {
        "baseline": {
            "hop_ms": {"p50": 4.0, "p99": 9.0},
            "insert_commit_ms": {"p50": 1.0, "p99": 2.0},
            "unit_ms": 5.0,
            "hop_cpu_ms": 2.0,
        },
        "overhead": {"step_ms": {"p50": 7.0, "p99": 25.0}},
        "concurrency": [{**level, "runs": 10, "wall_s": 3.2}, level],
        "memory": {"peak_worker_rss_mb": 250.0, "peak_model_calls_in_flight": 1000},
        "fanout": {
            "runs": 100,
            "followers": 10,
            "stored": {
                "target_per_s": 1000.0,
                "per_s": 950.0,
                "commit_to_receipt_ms": {"p50": 1.2, "p99": 7.0},
            },
            "correctness": {"followers": 1000, "not_exactly_once_in_order": 1, "errors": 0},
            "deltas": {
                "delivered_per_s": 19995.0,
                "delivered_share": 1.0,
                "publish_to_receipt_ms": {"p50": 0.8, "p99": 12.1},
            },
        },
        "machine": {
            "cpus": 2,
            "cpu_model": "a CPU",
            "platform": "Linux",
            "python": "3.11",
            "postgres": {"server_version": "15", "synchronous_commit": "on", "fsync": "on"},
            "redis": "7.0",
            "python_speed": {"hot_us": 1350, "after_sleep_us": 2600, "sleep_s": 0.2},
        },
        "config": {
            "workers": 2,
            "pool": "gevent",
            "concurrency": 1000,
            "latency": 1.0,
            "tools": "1,1",
            "memory_pool": "gevent",
            "memory_concurrency": 1100,
            "memory_latency": 60.0,
        },
        "command": "python -m bench.run",
        "date": "2026-11-21 12:00",
    }


def test_the_table_gives_each_figure_as_a_ratio_to_the_baseline_and_checks_its_target() -> None:
    text = table(_figures())

    assert "| step overhead, p50 | 7.0 ms | 1.40x | ≤ 1.5x (met) |" in text
    assert "| step overhead, p99 | 25.0 ms | 5.00x | ≤ 20 ms (missed) |" in text
    assert (
        "| 1000 runs at once: wall (ideal 3.0 s) | 12.5 s | 2.50x the bare runs' "
        "| ≤ 10 s (missed) |"
    ) in text
    assert "| 1000 bare runs at once (Celery alone, the same tasks): wall | 5.0 s | | |" in text
    assert "peak RSS | 250.0 MB | | < 300 MB with ≥ 1,000 in flight (met) |" in text
    assert "| 10 runs at once: wall (ideal 3.0 s) | 3.2 s | 0.64x the bare runs' |  |" in text
    assert "| 1000 runs: the workers' CPU per step | 9.0 ms | 4.50x of a hop's CPU | |" in text
    assert "| 1000 bare runs: the workers' CPU per step | 3.0 ms | 1.50x of a hop's CPU | |" in text


def test_the_table_says_where_the_workers_cpu_went_when_it_was_measured() -> None:
    text = table(_figures())

    assert (
        "| 1000 runs: that CPU per step in Celery's consumer thread / task bodies / the rest "
        "| 1.5 / 7.0 / 0.5 ms | | |"
    ) in text
    assert (
        "| 1000 runs: CPU per task body: model_step / start_run / tool_step "
        "| 8.0 / 5.0 / 4.5 ms | | |"
    ) in text
    assert (
        "| 1000 runs: CPU per part of a step, in the bodies: model claim / model call / send "
        "| 2.5 / 3.0 / 1.5 ms | | |"
    ) in text
    assert "1000 bare runs: that CPU" not in text  # this level's bare runs were not split


def test_what_the_workers_spent_is_the_difference_of_two_rounds_of_snapshots() -> None:
    def snapshot(pid: int, process: float, consumer: float, tasks: int, user: float) -> Any:
        body = {"tasks": tasks, "user_s": user, "system_s": 0.5 * user}
        switches = {"voluntary_switches": 10 * tasks, "involuntary_switches": tasks}
        found = {"stepwise.model_step": {**body, **switches}} if tasks else {}
        return {"pid": pid, "process_s": process, "consumer_s": consumer, "tasks": found}

    before = [snapshot(1, 10.0, 2.0, 0, 0.0), snapshot(2, 20.0, 4.0, 5, 1.0)]
    late = snapshot(3, 9.0, 9.0, 9, 9.0)  # a worker that started after the first round
    after = [snapshot(1, 14.0, 3.0, 4, 2.0), snapshot(2, 23.0, 4.5, 7, 2.0), late]

    spent = difference(before, after)

    assert spent["process_s"] == 7.0 and spent["consumer_s"] == 1.5  # not the late worker's
    # Bodies: worker 1, 2.0 s of user and 1.0 of system; worker 2, 1.0 and 0.5.
    assert spent["bodies_s"] == 4.5 and spent["rest_s"] == 1.0
    model = spent["by_task"]["stepwise.model_step"]
    assert model["tasks"] == 6 and model["voluntary_switches"] == 60


def test_the_parts_of_a_step_are_what_each_timed_function_spent_per_call() -> None:
    def snapshot(pid: int, parts: dict[str, list[float]]) -> Any:
        return {"pid": pid, "process_s": 0.0, "consumer_s": 0.0, "tasks": {}, "parts": parts}

    before = [snapshot(1, {"model_step": [1, 0.010]}), snapshot(2, {})]
    after = [
        # Worker 1: two more model steps, 16 ms each, of which a claim of 5 ms, a record of 4.
        snapshot(
            1, {"model_step": [3, 0.042], "model_claim": [2, 0.010], "model_record": [2, 0.008]}
        ),
        # Worker 2: three tool steps of 6 ms, each a tool of 1 ms and a record of 2; four sends.
        snapshot(
            2,
            {
                "tool_step": [3, 0.018],
                "tool_run": [3, 0.003],
                "tool_record": [3, 0.006],
                "send": [4, 0.004],
            },
        ),
    ]

    parts = parts_ms(difference(before, after)["parts"])

    assert parts == {
        "model claim": 5.0,
        "model call": 7.0,
        "model record": 4.0,
        "tool claim": 3.0,
        "tool": 1.0,
        "tool record": 2.0,
        "send": 1.0,
    }
    assert parts_ms(difference(before, before)["parts"]) == {}  # nothing ran: no part


def test_the_step_benchmark_s_pause_before_a_step_is_left_out_of_its_figures() -> None:
    meter = Meter(pause=0.05)
    began = time.perf_counter()

    meter.measure("model", lambda: None)

    assert time.perf_counter() - began >= 0.05
    assert meter.wall["model"][0] < 0.05 and meter.cpu["model"][0] < 0.05


def test_the_table_carries_the_fan_out_figures_and_its_verdicts() -> None:
    text = table(_figures())

    assert (
        "| fan-out, 100 runs x 10 followers: stored events committed/s | 950.0 | "
        "| 1000/s (missed) |"
    ) in text
    assert "| fan-out: commit → follower, p50 / p99 | 1.2 / 7.0 ms | | |" in text
    assert (
        "| fan-out: followers that saw every event once, in order | 999 of 1000 | | all |" in text
    )
    assert "| fan-out: model.delta delivered/s (share of published x followers) | " in text
    assert "| fan-out: model.delta publish → follower, p50 / p99 | 0.8 / 12.1 ms | | |" in text


def test_a_level_measured_without_its_bare_runs_has_no_ratio_to_them() -> None:
    figures = _figures()
    figures["concurrency"] = [{**figures["concurrency"][1], "bare": None}]

    text = table(figures)

    assert "| 1000 runs at once: wall (ideal 3.0 s) | 12.5 s | | ≤ 10 s (missed) |" in text
    assert "bare runs" not in text


def test_cores_used_in_a_phase_shorter_than_a_clock_tick_leave_the_machine_s_share_out() -> None:
    clock = CpuClock({"workers": []}, "test")
    before = {"workers": {7: 100}, "machine": (500, 1000), "at": 10.0}
    after = {"workers": {7: 105}, "machine": (500, 1000), "at": 10.005}
    assert set(clock.used(before, after)) == {"workers"}
    later = {"workers": {7: 110}, "machine": (510, 1020), "at": 10.1}
    used = clock.used(before, later)
    machine = 10 / 20 * (os.cpu_count() or 1)
    workers = 10 / (os.sysconf("SC_CLK_TCK") * 0.1)
    assert (used["machine"], used["other"]) == (round(machine, 2), round(machine - workers, 2))


def test_a_bare_run_is_the_tasks_of_a_run_in_order() -> None:
    assert bare.shape("1,1") == ["start", "model", "tool", "model", "tool", "model"]
    assert bare.shape("3") == ["start", "model", "tool", "tool", "tool", "model"]
    assert bare.shape("") == ["start", "model"]


def test_memory_below_the_limit_is_not_a_pass_with_fewer_than_1000_calls_in_flight() -> None:
    figures = _figures()
    figures["memory"] = {"peak_worker_rss_mb": 120.0, "peak_model_calls_in_flight": 800}

    text = table(figures)

    assert "(not shown: fewer than 1,000 in flight)" in text


def test_a_recorded_run_names_its_command_and_machine(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n")

    record(_figures(), "| the table |", doc)

    text = doc.read_text()
    assert text.startswith("# Benchmarks\n")
    assert "### 2026-11-21 12:00: `python -m bench.run`" in text
    assert (
        "Redis 7.0; a fixed piece of Python work (`bench.common.python_speed`): 1350 µs of "
        "CPU back to back, 2600 µs right after a 0.2 s sleep."
    ) in text
    assert "2 CPUs (a CPU)" in text and "PostgreSQL 15 (synchronous_commit on" in text
    assert "Memory: 1 x `-P gevent -c 1100`, model latency 60.0 s." in text
    assert text.rstrip().endswith("| the table |")


def test_recording_a_run_writes_the_summary_of_every_run_of_the_plain_command(
    tmp_path: Path,
) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\n{history.BEGIN}\nstale\n{history.END}\n\nafter\n")
    first = _figures()
    second = _figures() | {"date": "2026-11-22 12:00"}
    second["overhead"] = {"step_ms": {"p50": 10.0, "p99": 15.0}}
    other = _figures() | {"date": "2026-11-23 12:00", "command": "python -m bench.run --x"}
    other["overhead"] = {"step_ms": {"p50": 1.0, "p99": 1.0}}

    for figures in (first, second, other):
        record(figures, table(figures), doc)

    text = doc.read_text()
    block = text[text.index(history.BEGIN) : text.index(history.END)]
    assert "stale" not in block and "2026-11-23" not in block
    assert "| step overhead, p50 ≤ 1.5x (bare hop + insert) | 1.4 to 2x | 1 of 2 |" in block
    assert "| step overhead, p99 ≤ 20 ms | 15 to 25 ms | 1 of 2 |" in block
    assert "| 1,000 runs at once in ≤ 10 s | 12.5 s | 0 of 2 |" in block
    assert "| one worker with ≥ 1,000 calls in flight under 300 MB | 250 MB | 2 of 2 |" in block
    assert "| fan-out: 1,000 stored events/s | 950 events/s | 0 of 2 |" in block
    assert (
        "| 2026-11-21 12:00 | 2 x gevent -c 1000 | 4 | 1 | 7 (1.4x) | 25 | 12.5 | 5 | 2.5x "
        "| 9 | 250 | 950 |"
    ) in block
    assert "| 2026-11-22 12:00 | 2 x gevent -c 1000 | 4 | 1 | 10 (2x) | 15 |" in block
    assert text.index("after") < text.index("### 2026-11-21 12:00")  # the runs still append


def test_a_run_with_too_few_calls_in_flight_does_not_count_for_the_memory_target() -> None:
    figures = _figures()
    figures["memory"] = {"peak_worker_rss_mb": 120.0, "peak_model_calls_in_flight": 800}
    text = f"### 2026-11-21 12:00: `python -m bench.run`\n\n{table(figures)}\n"

    summary = history.summary(history.recorded_runs(text))

    assert "| one worker with ≥ 1,000 calls in flight under 300 MB | - | 0 of 0 |" in summary
    assert summary.splitlines()[-1].endswith("| 9 |  | 950 |")


def test_the_summary_in_the_benchmarks_doc_is_the_one_its_recorded_runs_give() -> None:
    text = history.DOC.read_text()

    assert history.BEGIN in text and history.END in text
    assert history.rewritten(text) == text, "run: .venv/bin/python -m bench.history"


def test_the_plot_is_a_png_of_throughput_and_latency(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"

    plot(_figures(), path)

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.services
def test_every_scenario_runs_on_real_workers_and_every_run_succeeds(
    services: None, tmp_path: Path
) -> None:
    output = tmp_path / "run.json"
    argv = [
        sys.executable,
        "-m",
        "bench.run",
        "--levels",
        "4",
        "--latency",
        "0.1",
        "--workers",
        "1",
        "--concurrency",
        "20",
        "--overhead-runs",
        "2",
        "--hops",
        "10",
        "--inserts",
        "20",
        "--memory-runs",
        "5",
        "--memory-latency",
        "1.0",
        "--memory-concurrency",
        "20",
        "--fanout-runs",
        "4",
        "--fanout-followers",
        "2",
        "--fanout-rate",
        "40",
        "--fanout-seconds",
        "1",
        "--no-record",
        "--output",
        str(output),
    ]

    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240)

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    figures = json.loads(output.read_text())
    assert figures["baseline"]["hop_ms"]["n"] == 10  # a hop per chain of two
    assert figures["baseline"]["insert_commit_ms"]["n"] == 20
    assert figures["baseline"]["hop_cpu_ms"] > 0
    # start → 5 steps, the last of which ends the run: 5 gaps a run
    assert figures["overhead"]["runs"] == 2 and figures["overhead"]["step_ms"]["n"] == 10
    (level,) = figures["concurrency"]
    assert level["runs"] == level["succeeded"] == 4
    assert level["wall_s"] >= 0.3  # three model calls of 0.1 s each, one after another
    # As many bare runs, on the same workers: the same three model waits, one after another.
    assert level["bare"]["wall_s"] >= 0.3 and level["bare"]["worker_cpu_ms_per_step"] > 0
    # Every task body was counted where it ran: 4 runs of a start, 3 model and 2 tool steps.
    tasks = level["worker_cpu_where"]["per_task"]
    assert {name: found["tasks"] for name, found in tasks.items()} == {
        "stepwise.start_run": 4,
        "stepwise.model_step": 12,
        "stepwise.tool_step": 8,
    }
    assert all(found["cpu_ms"] > 0 for found in tasks.values())
    assert level["bare"]["worker_cpu_where"]["per_task"]["bench.bare_step"]["tasks"] == 24
    assert level["worker_cpu_where"]["per_step_ms"]["consumer"] > 0
    # Each part of a step, from the functions that do it, in the workers.
    parts = level["worker_cpu_where"]["per_part_ms"]
    assert list(parts) == [
        "model claim",
        "model call",
        "model record",
        "tool claim",
        "tool",
        "tool record",
        "send",
    ]
    assert all(ms > 0 for ms in parts.values())
    memory = figures["memory"]
    assert memory["succeeded"] == 5
    assert memory["peak_model_calls_in_flight"] >= 1 and memory["peak_worker_rss_mb"] > 0
    fanout = figures["fanout"]
    assert fanout["correctness"]["followers"] == 8
    assert (
        fanout["correctness"]["not_exactly_once_in_order"] == fanout["correctness"]["errors"] == 0
    )
    assert fanout["stored"]["events"] > 0 and fanout["deltas"]["delivered"] > 0
    assert "| figure | value |" in done.stdout
    assert "| fan-out, 4 runs x 2 followers: stored events committed/s |" in done.stdout


@pytest.mark.services
def test_the_step_benchmark_steps_runs_in_process_and_counts_their_sql(
    services: None, tmp_path: Path
) -> None:
    output = tmp_path / "steps.json"
    argv = [sys.executable, "-m", "bench.steps", "--runs", "3", "--warmup", "1"]

    done = subprocess.run(
        [*argv, "--output", str(output)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    figures = json.loads(output.read_text())
    # Each run of the bench agent: accepted, started, 3 model steps and 2 tool steps.
    counts = {kind: figures[kind]["count"] for kind in ("accept", "start", "model", "tool")}
    assert counts == {"accept": 3, "start": 3, "model": 9, "tool": 6}
    # Every step reads what it decides on and writes what it decided: two statements at least.
    assert all(figures[kind]["statements"] >= 2 for kind in counts)
    assert figures["step_cpu_ms_mean"] > 0
    speed = figures["machine"]["python_speed"]
    assert speed["hot_us"] > 0 and speed["after_sleep_us"] > 0
    assert "| model | 9 |" in done.stdout
