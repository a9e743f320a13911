"""How results are shown: the text table, the Markdown table, and the JSON.

The table has one row per (scenario, metric, baseline): the baseline's
figure, taskqueue's, the median ratio ``taskqueue / baseline`` with the
min and max of the per-round ratios, the target and whether it is met.
Notes (how a peer was set up, why it could not run) are footnotes under
the table, so that the rows stay one line each.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from typing import Any, Dict, List, Mapping, Optional, Sequence

import taskqueue

from .harness import Result
from .peers import JOURNAL_PEERS, PEERS, version_of
from .redis_peers import REDIS_PEERS

__all__ = ["SCHEMA_VERSION", "machine", "render_table", "render_markdown", "to_json",
           "format_figure", "format_ratio"]

SCHEMA_VERSION = 1
"""Bumped whenever a key of the JSON changes meaning or disappears."""

COLUMNS = ("scenario", "metric", "unit", "better", "baseline", "baseline", "taskqueue",
           "ratio", "min-max", "target", "met")
# Columns 5-7 hold numbers and are right-aligned.
_NUMERIC = (5, 6, 7)


def machine(*, mode: str, command: str, rounds: int, warmup: int) -> Dict[str, Any]:
    """Return the ``meta`` block: what ran, where, when and how."""
    return {
        "schema": SCHEMA_VERSION,
        "taskqueue": taskqueue.__version__,
        "commit": commit_info(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "command": command,
        "rounds": rounds,
        "warmup": warmup,
        "peers": {peer.distribution: version_of(peer.distribution)
                  for peer in [*PEERS, *JOURNAL_PEERS, *REDIS_PEERS]},
        # How busy the shared machine was; the CLI fills in "end" when the run ends.
        "load_average": {"start": load_average(), "end": None},
    }


def commit_info() -> Optional[Dict[str, Any]]:
    """Return the git commit measured (id, branch, dirty), or None outside a checkout.

    Figures belong to a commit, as pytest-benchmark's ``commit_info`` says;
    "dirty" means tracked files had changes that no commit holds.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True)
        return done.stdout.strip()

    try:
        return {
            "id": git("rev-parse", "HEAD"),
            "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, subprocess.SubprocessError):
        return None


def load_average() -> Optional[List[float]]:
    """Return the 1, 5 and 15 minute load averages, or None where there are none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# -- numbers -----------------------------------------------------------------------


def format_figure(value: Optional[float]) -> str:
    """Return a figure with as many digits as a reader can use ("-" if missing)."""
    if value is None:
        return "-"
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_ratio(value: Optional[float]) -> str:
    """Return a ratio as ``1.23x`` ("-" if missing)."""
    return "-" if value is None else f"{value:.2f}x"


def _shown_ratio(result: Result) -> str:
    # "1.00x NO" would read as a contradiction: where two decimals round a
    # miss (or a hit) onto the bound, show the third that decides it.
    shown = format_ratio(result.ratio)
    target = result.target
    if result.ratio is not None and target is not None and shown == format_ratio(target.value):
        return f"{result.ratio:.3f}x"
    return shown


def _spread(result: Result) -> str:
    if result.ratio_min is None or result.ratio_max is None:
        return "-"
    return f"{result.ratio_min:.2f}-{result.ratio_max:.2f}"


def _met(result: Result) -> str:
    if result.target is None:
        return ""
    if result.met is None:
        return "n/a"
    return "yes" if result.met else "NO"


# -- rows --------------------------------------------------------------------------


def _rows(results: Sequence[Result]) -> tuple[List[List[str]], List[str]]:
    rows, notes = [], []
    for result in results:
        metric = result.metric
        if result.note:
            if result.note not in notes:
                notes.append(result.note)
            metric = f"{metric} [{notes.index(result.note) + 1}]"
        rows.append([
            result.scenario, metric, result.unit, result.better, result.baseline_name,
            format_figure(result.baseline), format_figure(result.taskqueue),
            _shown_ratio(result), _spread(result),
            str(result.target) if result.target is not None else "", _met(result),
        ])
    return rows, notes


def _summary(results: Sequence[Result]) -> List[str]:
    judged = [r for r in results if r.target is not None]
    met = [r for r in judged if r.met]
    missed = [r for r in judged if r.met is False]
    unknown = [r for r in judged if r.met is None]
    lines = [f"targets met: {len(met)} of {len(judged)}"
             + (f" ({len(unknown)} not measured)" if unknown else "")]
    lines += [f"  missed: {r.scenario}, {r.metric} vs {r.baseline_name}: "
              f"{_shown_ratio(r)}, target {r.target}" for r in missed]
    return lines


def _header(meta: Mapping[str, Any]) -> List[str]:
    return [
        f"taskqueue {meta['taskqueue']}{_commit(meta)} benchmarks, {meta['mode']} run, "
        f"{meta['date']}",
        f"{meta['implementation']} {meta['python']} on {meta['platform']}, "
        f"{meta['cpu_count']} CPUs{_load(meta)}",
        f"{meta['rounds']} rounds per figure, interleaved with the baselines"
        f"{', after %d warm-up round(s)' % meta['warmup'] if meta['warmup'] else ''}; "
        "figures are medians, ratio = taskqueue / baseline (median of per-round ratios, "
        "with min-max)",
    ]


def _commit(meta: Mapping[str, Any]) -> str:
    commit = meta.get("commit")
    if not commit:
        return ""
    return f" (commit {commit['id'][:10]}{', with uncommitted changes' if commit['dirty'] else ''})"


def _load(meta: Mapping[str, Any]) -> str:
    load = meta.get("load_average") or {}
    if not load.get("start") or not load.get("end"):
        return ""
    return f", load average {load['start'][0]:.2f} at start, {load['end'][0]:.2f} at end"


def render_table(results: Sequence[Result], meta: Mapping[str, Any]) -> str:
    """Return the plain-text table, with its header, footnotes and summary."""
    rows, notes = _rows(results)
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(COLUMNS)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in _NUMERIC else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = _header(meta) + ["", line(COLUMNS), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    out += [""] + [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    out += [""] + _summary(results)
    return "\n".join(out) + "\n"


def render_markdown(results: Sequence[Result], meta: Mapping[str, Any]) -> str:
    """Return a Markdown "Performance" section: machine, command, table, notes."""
    rows, notes = _rows(results)
    out = [
        "## Performance",
        "",
        f"One `{meta['mode']}` run of `{meta['command']}` on {meta['implementation']} "
        f"{meta['python']}, {meta['platform']}, {meta['cpu_count']} CPUs{_load(meta)} "
        f"({meta['date']}). "
        f"Every figure is the median of {meta['rounds']} rounds run interleaved with its "
        "baseline in the same process; the ratio is taskqueue / baseline, the median of "
        "the per-round ratios, with their min-max.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" if i in _NUMERIC else "---" for i in range(len(COLUMNS))) + "|",
    ]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    out += [""] + [f"{i}. {note}" for i, note in enumerate(notes, 1)]
    summary = _summary(results)
    out += ["", summary[0], ""] + [f"- {line.strip()}" for line in summary[1:]]
    out += ["", "Reproduce with `pip install -e '.[bench]'` and "
            "`python -m benchmarks` from the repository root."]
    return "\n".join(out) + "\n"


def to_json(results: Sequence[Result], meta: Mapping[str, Any]) -> Dict[str, Any]:
    """Return the machine-readable results (the schema is in the package docstring)."""
    return {"meta": dict(meta), "results": [_result_json(r) for r in results]}


def _result_json(result: Result) -> Dict[str, Any]:
    target = result.target
    return {
        "scenario": result.scenario,
        "metric": result.metric,
        "unit": result.unit,
        "better": result.better,
        "baseline_name": result.baseline_name,
        "taskqueue_name": result.taskqueue_name,
        "baseline": result.baseline,
        "baseline_min": result.baseline_min,
        "baseline_max": result.baseline_max,
        "taskqueue": result.taskqueue,
        "taskqueue_min": result.taskqueue_min,
        "taskqueue_max": result.taskqueue_max,
        "ratio": result.ratio,
        "ratio_min": result.ratio_min,
        "ratio_max": result.ratio_max,
        "target": None if target is None else {"op": target.op, "value": target.value},
        "met": result.met,
        "rounds": result.rounds,
        "sizes": dict(result.sizes),
        "note": result.note,
        "values": {
            "baseline": list(result.baseline_values),
            "taskqueue": list(result.taskqueue_values),
            "ratios": list(result.ratios),
        },
    }


def command_line(argv: Sequence[str]) -> str:
    """Return how this run was started, as a reader would type it."""
    return " ".join(["python -m benchmarks", *argv]).strip()


def write_text(path: str, text: str) -> None:
    """Write ``text`` to the file ``path`` (UTF-8)."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
