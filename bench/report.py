"""How `bench.run` reports: one Markdown table against the baseline and the targets,
its record in docs/benchmarks.md, and the plot of throughput and latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import history

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "img" / "bench-concurrency.png"


def _ratio(value: float, unit: float | None) -> str:
    return f"{value / unit:.2f}x" if unit else "-"


def table(figures: dict[str, Any]) -> str:
    """One Markdown table of every figure, with its ratio to the baseline and its target."""
    rows = ["| figure | value | x baseline (hop + insert) | target |", "| --- | --- | --- | --- |"]
    base = figures.get("baseline")
    unit = base["unit_ms"] if base else None
    hop_cpu = base["hop_cpu_ms"] if base else None
    if base:
        rows.append(
            f"| bare Celery hop, p50 / p99 | {base['hop_ms']['p50']} / "
            f"{base['hop_ms']['p99']} ms | | |"
        )
        rows.append(f"| bare Celery hop: the worker's CPU | {base['hop_cpu_ms']} ms | | |")
        rows.append(
            f"| Postgres INSERT + COMMIT, p50 / p99 | {base['insert_commit_ms']['p50']} / "
            f"{base['insert_commit_ms']['p99']} ms | | |"
        )
    if "overhead" in figures:
        step = figures["overhead"]["step_ms"]
        verdict = "met" if unit and step["p50"] <= 1.5 * unit else "missed"
        rows.append(
            f"| step overhead, p50 | {step['p50']} ms | {_ratio(step['p50'], unit)} "
            f"| ≤ 1.5x ({verdict}) |"
        )
        verdict = "met" if step["p99"] <= 20 else "missed"
        rows.append(
            f"| step overhead, p99 | {step['p99']} ms | {_ratio(step['p99'], unit)} "
            f"| ≤ 20 ms ({verdict}) |"
        )
    for level in figures.get("concurrency", []):
        n = level["runs"]
        target = f"≤ 10 s ({'met' if level['wall_s'] <= 10 else 'missed'})" if n >= 1000 else ""
        floor = level.get("bare")
        versus = f" {_ratio(level['wall_s'], floor['wall_s'])} the bare runs' " if floor else " "
        rows.append(
            f"| {n} runs at once: wall (ideal {level['ideal_s']} s) | {level['wall_s']} s "
            f"|{versus}| {target} |"
        )
        if floor:
            rows.append(
                f"| {n} bare runs at once (Celery alone, the same tasks): wall | "
                f"{floor['wall_s']} s | | |"
            )
        rows.append(
            f"| {n} runs: runs/s, steps/s | {level['runs_per_s']}, {level['steps_per_s']} | | |"
        )
        rows.append(
            f"| {n} runs: the workers' CPU per step | {level['worker_cpu_ms_per_step']} ms "
            f"| {_ratio(level['worker_cpu_ms_per_step'], hop_cpu)} of a hop's CPU | |"
        )
        rows += _cpu_where(f"{n} runs", level.get("worker_cpu_where"))
        if floor:
            rows.append(
                f"| {n} bare runs: the workers' CPU per step | "
                f"{floor['worker_cpu_ms_per_step']} ms "
                f"| {_ratio(floor['worker_cpu_ms_per_step'], hop_cpu)} of a hop's CPU | |"
            )
            rows += _cpu_where(f"{n} bare runs", floor.get("worker_cpu_where"), bodies=False)
        latency = level["run_latency_ms"]
        rows.append(
            f"| {n} runs: run latency p50 / p99 | {latency['p50'] / 1000:.2f} / "
            f"{latency['p99'] / 1000:.2f} s | | |"
        )
        rows.append(
            f"| {n} runs: peak worker RSS (each of {figures['config']['workers']}) | "
            f"{level['peak_worker_rss_mb']} MB | | |"
        )
    if "memory" in figures:
        memory = figures["memory"]
        in_flight, rss = memory["peak_model_calls_in_flight"], memory["peak_worker_rss_mb"]
        if in_flight < 1000:
            verdict = "not shown: fewer than 1,000 in flight"
        else:
            verdict = "met" if rss < 300 else "missed"
        pool = figures.get("config", {}).get("memory_pool", "")
        rows.append(
            f"| one {pool} worker, {in_flight} model calls in flight: peak RSS | {rss} MB | "
            f"| < 300 MB with ≥ 1,000 in flight ({verdict}) |"
        )
    if "fanout" in figures:
        rows += _fanout(figures["fanout"])
    return "\n".join(rows)


def _cpu_where(what: str, where: dict[str, Any] | None, bodies: bool = True) -> list[str]:
    """The rows of where the workers' CPU went (`bench.taskcpu`), if it was measured."""
    if not where:
        return []
    step = where["per_step_ms"]
    rows = [
        f"| {what}: that CPU per step in Celery's consumer thread / task bodies / the rest "
        f"| {step['consumer']} / {step['bodies']} / {step['rest']} ms | | |"
    ]
    tasks = {name.rpartition(".")[2]: found for name, found in where["per_task"].items()}
    if bodies and tasks:
        names = " / ".join(tasks)
        figures = " / ".join(str(found["cpu_ms"]) for found in tasks.values())
        rows.append(f"| {what}: CPU per task body: {names} | {figures} ms | | |")
    parts = where.get("per_part_ms")
    if bodies and parts:
        names, figures = " / ".join(parts), " / ".join(str(ms) for ms in parts.values())
        rows.append(
            f"| {what}: CPU per part of a step, in the bodies: {names} | {figures} ms | | |"
        )
    return rows


KEPT_UP = 0.98


def _fanout(found: dict[str, Any]) -> list[str]:
    """The fan-out rows: `bench.follow`'s figures (its own section in docs/benchmarks.md)."""
    stored, seen, deltas = found["stored"], found["correctness"], found["deltas"]
    who = f"{found['runs']} runs x {found['followers']} followers"
    receipt, delivered = stored["commit_to_receipt_ms"], deltas["publish_to_receipt_ms"]
    wrong = seen["not_exactly_once_in_order"] + seen["errors"]
    # The publishers are paced to the target, so a run that kept up lands just under it.
    kept_up = "met" if stored["per_s"] >= KEPT_UP * stored["target_per_s"] else "missed"
    return [
        f"| fan-out, {who}: stored events committed/s | {stored['per_s']} | "
        f"| {stored['target_per_s']:g}/s ({kept_up}) |",
        f"| fan-out: commit → follower, p50 / p99 | {receipt['p50']} / {receipt['p99']} ms | | |",
        f"| fan-out: followers that saw every event once, in order | "
        f"{seen['followers'] - wrong} of {seen['followers']} | | all |",
        f"| fan-out: model.delta delivered/s (share of published x followers) | "
        f"{deltas['delivered_per_s']} ({deltas['delivered_share']:.0%}) | | |",
        f"| fan-out: model.delta publish → follower, p50 / p99 | "
        f"{delivered['p50']} / {delivered['p99']} ms | | |",
    ]


def _memory(figures: dict[str, Any]) -> str:
    """How the memory scenario's worker ran, if it ran."""
    if "memory" not in figures:
        return ""
    cfg = figures["config"]
    return (
        f" Memory: 1 x `-P {cfg['memory_pool']} -c {cfg['memory_concurrency']}`, "
        f"model latency {cfg['memory_latency']} s."
    )


def plot(figures: dict[str, Any], path: Path) -> None:
    """Throughput and run latency against the number of runs in flight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = figures["concurrency"]
    n = [level["runs"] for level in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(n, [level["steps_per_s"] for level in levels], "o-", label="steps/s")
    left.plot(n, [level["runs_per_s"] for level in levels], "s-", label="runs/s")
    left.set(xscale="log", xlabel="runs started at once", ylabel="per second", title="Throughput")
    left.legend()
    for key in ("p50", "p90", "p99"):
        right.plot(n, [lv["run_latency_ms"][key] / 1000 for lv in levels], "o-", label=key)
    right.plot(n, [level["ideal_s"] for level in levels], "k--", label="ideal (model time)")
    right.set(xscale="log", xlabel="runs started at once", ylabel="seconds", title="Run latency")
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def describe(info: dict[str, Any]) -> str:
    pg = info["postgres"]
    return (
        f"{info['cpus']} CPUs ({info['cpu_model']}), {info['platform']}, Python {info['python']}, "
        f"PostgreSQL {pg['server_version']} (synchronous_commit {pg['synchronous_commit']}, "
        f"fsync {pg['fsync']}), Redis {info['redis']}{_speed(info.get('python_speed'))}"
    )


def _speed(speed: dict[str, float] | None) -> str:
    if not speed:
        return ""
    return (
        f"; a fixed piece of Python work (`bench.common.python_speed`): {speed['hot_us']:g} µs "
        f"of CPU back to back, {speed['after_sleep_us']:g} µs right after a "
        f"{speed['sleep_s']:g} s sleep"
    )


def record(figures: dict[str, Any], text: str, doc: Path = DOC) -> None:
    """Append the table, the machine and the command to docs/benchmarks.md, then write
    its summary of every recorded run anew (`bench.history`)."""
    cfg = figures["config"]
    section = (
        f"\n### {figures['date']}: `{figures['command']}`\n\n"
        f"Machine: {describe(figures['machine'])}.\n"
        f"Workers: {cfg['workers']} x `-P {cfg['pool']} -c {cfg['concurrency']}`; "
        f"model latency {cfg['latency']} s, tool rounds `{cfg['tools']}`.{_memory(figures)}\n\n"
        f"{text}\n"
    )
    with doc.open("a") as out:
        out.write(section)
    history.rewrite(doc)
