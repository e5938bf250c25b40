"""The recorded runs of docs/benchmarks.md, read back into one summary.

Every `python -m bench.run` without `--no-record` appends its table to the file
(`bench.report.record`), then rewrites the block between `BEGIN` and `END` from all
of them: for each target, the range it took and in how many runs it was met, and a
row per run. Only runs of the plain command count, each with its day's defaults; a
run of some scenarios or other settings stays in the file, out of the summary.

    .venv/bin/python -m bench.history     # rewrite the block after editing the file
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN = "<!-- the summary below is written by bench.history from the recorded runs -->"
END = "<!-- end of the summary -->"
COMMAND = "python -m bench.run"

_SECTION = re.compile(r"^### (\d{4}-\d\d-\d\d \d\d:\d\d): `([^`]*)`[ \t]*$", re.M)
_WORKERS = re.compile(r"^Workers: (\d+) x `-P (\w+) -c (\d+)`", re.M)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Cell:
    """One figure of a recorded run: its value, its ratio to the baseline, its verdict."""

    value: float
    ratio: float | None
    met: bool | None  # None: the row has no target, or the run could not show it


@dataclass(frozen=True)
class Recorded:
    """One recorded run of the plain command."""

    when: str
    workers: str
    cells: dict[str, Cell]


# The summary's figures: a key, the start of its row's label in a recorded table.
FIGURES = {
    "hop": "bare Celery hop, p50",
    "insert": "Postgres INSERT + COMMIT",
    "overhead": "step overhead, p50",
    "overhead_p99": "step overhead, p99",
    "runs": "1000 runs at once: wall",
    "bare": "1000 bare runs at once",
    "cpu": "1000 runs: the workers' CPU per step",
    "memory": "one ",  # one [gevent ]worker, N model calls in flight: peak RSS
    "fanout": "fan-out, ",  # fan-out, R runs x F followers: stored events committed/s
}
TARGETS = {
    "overhead": ("step overhead, p50 ≤ 1.5x (bare hop + insert)", "ratio", "x"),
    "overhead_p99": ("step overhead, p99 ≤ 20 ms", "value", " ms"),
    "runs": ("1,000 runs at once in ≤ 10 s", "value", " s"),
    "memory": ("one worker with ≥ 1,000 calls in flight under 300 MB", "value", " MB"),
    "fanout": ("fan-out: 1,000 stored events/s", "value", " events/s"),
}


def recorded_runs(text: str) -> list[Recorded]:
    """The runs of the plain command recorded in `text`, oldest first."""
    found = []
    pieces = _SECTION.split(text)
    for when, command, body in zip(pieces[1::3], pieces[2::3], pieces[3::3], strict=True):
        if command.strip() != COMMAND:
            continue
        workers = _WORKERS.search(body)
        shape = f"{workers[1]} x {workers[2]} -c {workers[3]}" if workers else ""
        found.append(Recorded(when, shape, _cells(body)))
    return found


def _cells(body: str) -> dict[str, Cell]:
    cells = {}
    for line in body.splitlines():
        if not line.startswith("| "):
            continue
        label, value, ratio, target, *_ = [*line.strip().strip("|").split("|"), "", "", ""]
        label = label.strip()
        for key, start in FIGURES.items():
            if key not in cells and label.startswith(start) and _fits(key, label):
                number = _NUMBER.search(value)
                if number is None:
                    continue
                times = _NUMBER.search(ratio) if "x" in ratio else None
                cells[key] = Cell(
                    float(number[0]), float(times[0]) if times else None, _verdict(target)
                )
    return cells


def _fits(key: str, label: str) -> bool:
    """The two figures whose labels start loosely are told by how they end."""
    if key == "memory":
        return label.endswith("model calls in flight: peak RSS")
    if key == "fanout":
        return label.endswith("stored events committed/s")
    return True


def _verdict(target: str) -> bool | None:
    if "(met)" in target:
        return True
    if "(missed)" in target:
        return False
    return None  # no target, or "(not shown: ...)": too few calls in flight to tell


def summary(runs: list[Recorded]) -> str:
    """The targets over every recorded run, then a row per run."""
    lines = [
        f"| target | over the recorded runs of `{COMMAND}` | met in |",
        "| --- | --- | --- |",
    ]
    for key, (target, which, unit) in TARGETS.items():
        cells = [
            run.cells[key] for run in runs if key in run.cells and run.cells[key].met is not None
        ]
        numbers = [c.ratio if which == "ratio" else c.value for c in cells]
        known = [n for n in numbers if n is not None]
        span = "-" if not known else _span(min(known), max(known)) + unit
        met = sum(1 for c in cells if c.met)
        lines.append(f"| {target} | {span} | {met} of {len(cells)} |")
    lines += [
        "",
        "| recorded | workers | bare hop p50, ms | insert p50, ms | overhead p50, ms "
        "| overhead p99, ms | 1,000 runs, s | their bare runs, s | x bare | CPU per step, ms "
        "| memory, MB | fan-out, events/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        c = run.cells
        overhead = c.get("overhead")
        ratio = f" ({_g(overhead.ratio)}x)" if overhead and overhead.ratio else ""
        runs_cell = c.get("runs")
        bare = runs_cell.ratio if runs_cell else None
        row = [
            run.when,
            run.workers,
            _value(c, "hop"),
            _value(c, "insert"),
            _value(c, "overhead") + ratio,
            _value(c, "overhead_p99"),
            _value(c, "runs"),
            _value(c, "bare"),
            f"{_g(bare)}x" if bare else "",
            _value(c, "cpu"),
            _value(c, "memory") if c.get("memory") and c["memory"].met is not None else "",
            _value(c, "fanout"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _value(cells: dict[str, Cell], key: str) -> str:
    cell = cells.get(key)
    return _g(cell.value) if cell else ""


def _span(low: float, high: float) -> str:
    return _g(low) if low == high else f"{_g(low)} to {_g(high)}"


def _g(number: float) -> str:
    return f"{number:,.2f}".rstrip("0").rstrip(".")


def rewritten(text: str) -> str:
    """`text` with the block between `BEGIN` and `END` written anew; as it is if it has none."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return text
    block = f"{BEGIN}\n\n{summary(recorded_runs(text))}\n\n"
    return text[:start] + block + text[end:]


def rewrite(doc: Path = DOC) -> None:
    """Rewrite the summary in `doc` from the runs recorded in it."""
    text = doc.read_text()
    new = rewritten(text)
    if new != text:
        doc.write_text(new)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    rewrite(Path(args[0]) if args else DOC)


if __name__ == "__main__":
    main()
