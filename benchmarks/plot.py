"""PNG charts of the scaling and latency scenarios, drawn with matplotlib.

matplotlib is an optional extra (``pip install '.[bench]'``): it is imported
only here, only when ``--plot`` is asked for, and :func:`require` turns its
absence into one clear message before anything is measured.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .harness import Result

__all__ = ["PlotUnavailable", "MISSING", "require", "write_charts"]

MISSING = "matplotlib is not installed: pip install '.[bench]'"


class PlotUnavailable(Exception):
    """Raised when charts are asked for and matplotlib cannot be imported."""


def require() -> None:
    """Check that charts can be drawn.

    Raises:
        PlotUnavailable: matplotlib is missing (the message says how to get it).
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(MISSING) from None


def write_charts(results: Sequence[Result], directory: str) -> List[str]:
    """Draw every chart the results have data for; return the files written.

    Raises:
        PlotUnavailable: matplotlib is missing.
    """
    require()
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none assumed
    from matplotlib import pyplot

    os.makedirs(directory, exist_ok=True)
    written = []
    for name, draw in (("io-scaling", _scaling), ("latency", _latency), ("growth", _growth)):
        rows = [r for r in results if r.scenario == name and r.taskqueue is not None]
        if not rows:
            continue
        figure, axes = pyplot.subplots(figsize=(7, 4.5), dpi=110)
        draw(axes, rows)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = os.path.join(directory, f"{name}.png")
        figure.savefig(path)
        pyplot.close(figure)
        written.append(path)
    return written


def _scaling(axes: Any, rows: Sequence[Result]) -> None:
    # Every row of one worker count carries the same taskqueue figure; the
    # baselines differ: ideal, ThreadPoolExecutor, the bare loop.
    lines: Dict[str, Dict[int, Result]] = {}
    for row in rows:
        kind = re.split(r"[(,]", row.baseline_name)[0].strip()  # "ThreadPoolExecutor(8)" -> ...
        lines.setdefault(kind, {})[row.sizes["workers"]] = row
    for kind, by_workers in lines.items():
        xs = sorted(by_workers)
        axes.plot(xs, [by_workers[x].baseline for x in xs], marker="o",
                  linestyle="--" if kind == "ideal" else "-",
                  label="ideal (workers / 1 ms)" if kind == "ideal" else kind)
    ours = next(iter(lines.values()))
    xs = sorted(ours)
    _with_spread(axes, xs, [ours[x] for x in xs], "taskqueue")
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("workers")
    axes.set_ylabel("tasks/s (higher is better)")
    axes.set_title("I/O-bound scaling: tasks that sleep 1 ms")


def _with_spread(axes: Any, xs: Sequence[Any], rows: Sequence[Result], label: str) -> None:
    _spread_line(axes, xs, [(r.taskqueue, r.taskqueue_min, r.taskqueue_max) for r in rows], label)


def _spread_line(axes: Any, xs: Sequence[Any],
                 points: Sequence[Tuple[Any, Optional[float], Optional[float]]], label: str) -> None:
    # A median with its min and max over the rounds as error bars.
    ys = [median for median, _, _ in points]
    low = [median - (lo if lo is not None else median) for median, lo, _ in points]
    high = [(hi if hi is not None else median) - median for median, _, hi in points]
    axes.errorbar(xs, ys, yerr=[low, high], marker="s", capsize=3, label=label)


def _latency(axes: Any, rows: Sequence[Result]) -> None:
    labels = [r.metric for r in rows]
    positions = range(len(rows))
    width = 0.4
    axes.bar([p - width / 2 for p in positions], [r.baseline or 0 for r in rows], width,
             label=rows[0].baseline_name)
    axes.bar([p + width / 2 for p in positions], [r.taskqueue or 0 for r in rows], width,
             label="taskqueue")
    axes.set_xticks(list(positions))
    axes.set_xticklabels(labels, rotation=15)
    axes.set_yscale("log")
    axes.set_ylabel("microseconds, submit -> start (lower is better)")
    axes.set_title("Latency, 4 workers")


def _growth(axes: Any, rows: Sequence[Result]) -> None:
    # The reference size is every row's baseline; the others are the rows' own.
    first = rows[0]
    points = {first.sizes["reference"]: (first.baseline, first.baseline_min, first.baseline_max)}
    for row in rows:
        points[row.sizes["tasks_measured"]] = (row.taskqueue, row.taskqueue_min, row.taskqueue_max)
    xs = sorted(points)
    _spread_line(axes, xs, [points[x] for x in xs], "taskqueue")
    axes.set_xscale("log")
    axes.set_ylim(bottom=0)
    axes.set_xlabel("tasks streamed")
    axes.set_ylabel("microseconds per task (lower is better)")
    axes.set_title("Cost per task as the work grows (flat is right)")
