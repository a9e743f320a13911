"""The benchmark report: number formats, the table, the Markdown and the JSON."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

# benchmarks/ is a top-level part of the repository, not an installed
# package: make it importable however pytest was started.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report  # noqa: E402
from benchmarks.harness import Metric, Target, compare, not_measured  # noqa: E402
from benchmarks.progress import Progress  # noqa: E402

THROUGHPUT = Metric("throughput", "throughput", "tasks/s", higher_is_better=True)
META = report.machine(mode="quick", command="python -m benchmarks --quick", rounds=5, warmup=0)


def _row(baseline, subject, target=None, note=None, name="ThreadPoolExecutor(4)"):
    samples = {name: [{"throughput": v} for v in baseline],
               "taskqueue": [{"throughput": v} for v in subject]}
    return compare(samples, scenario="noop", metric=THROUGHPUT, subject="taskqueue",
                   baseline=name, target=target, sizes={"tasks": 1000, "workers": 4}, note=note)


def _missing():
    samples = {"taskqueue": [{"throughput": 5000.0}]}
    return not_measured(samples, scenario="peers", metric=THROUGHPUT, subject="taskqueue",
                        baseline="Huey", note="Huey: not installed (pip install '.[bench]')",
                        target=Target.above(1.0))


# -- numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize("value, shown", [
    (141327.4, "141,327"), (1000.0, "1,000"), (523.4, "523"), (52.34, "52.3"),
    (5.234, "5.23"), (0.0123, "0.01"), (None, "-"),
])
def test_format_figure(value, shown):
    assert report.format_figure(value) == shown


def test_format_ratio():
    assert report.format_ratio(1.834) == "1.83x"
    assert report.format_ratio(None) == "-"


# -- the table ---------------------------------------------------------------------------


def _table_lines(results):
    return report.render_table(results, META).splitlines()


def test_table_has_every_column_the_issue_names():
    header = next(line for line in _table_lines([_row([1.0], [2.0])]) if line.startswith("scenario"))
    for column in ("scenario", "metric", "baseline", "taskqueue", "ratio", "min-max", "target", "met"):
        assert column in header


def test_table_row_shows_figures_ratio_spread_target_and_verdict():
    row = _row([100_000.0, 110_000.0, 90_000.0], [180_000.0, 190_000.0, 200_000.0],
               target=Target.at_least(2.0))
    line = next(line for line in _table_lines([row]) if line.startswith("noop"))
    cells = line.split()
    assert "100,000" in cells and "190,000" in cells
    assert "1.80x" in cells          # median of 1.8, 1.727..., 2.222...
    assert "1.73-2.22" in cells
    assert ">=" in cells and "2.00x" in cells
    assert cells[-1] == "NO"


def test_table_says_yes_when_met_and_nothing_without_target():
    met = _row([1.0], [3.0], target=Target.at_least(2.0))
    info = _row([1.0], [3.0])
    lines = [line for line in _table_lines([met, info]) if line.startswith("noop")]
    assert lines[0].split()[-1] == "yes"
    assert lines[1].split()[-1] == "3.00-3.00"  # no target, no verdict: min-max ends the row


def test_table_shows_a_third_decimal_where_two_would_hide_the_verdict():
    row = _row([1000.0], [998.0], target=Target.at_least(1.0))
    line = next(line for line in _table_lines([row]) if line.startswith("noop"))
    assert "0.998x" in line
    assert line.split()[-1] == "NO"


def test_table_does_not_invent_a_number_for_a_peer_that_did_not_run():
    line = next(line for line in _table_lines([_missing()]) if line.startswith("peers"))
    cells = line.split()
    assert "5,000" in cells
    assert cells[-1] == "n/a"
    assert cells.count("-") >= 3  # baseline, ratio, min-max


def test_table_notes_are_numbered_footnotes():
    rows = [_missing(), _row([1.0], [2.0], note="another note"), _row([1.0], [2.0], note="another note")]
    text = report.render_table(rows, META)
    assert "throughput [1]" in text and "throughput [2]" in text
    assert "[1] Huey: not installed (pip install '.[bench]')" in text
    assert text.count("[2] another note") == 1  # a repeated note is printed once


def test_table_header_names_the_machine_and_method():
    text = report.render_table([_row([1.0], [2.0])], META)
    assert f"{META['cpu_count']} CPUs" in text
    assert META["python"] in text
    assert "5 rounds" in text and "interleaved" in text and "median" in text


def test_table_summary_counts_and_lists_misses():
    rows = [_row([1.0], [3.0], target=Target.at_least(2.0)),
            _row([1.0], [1.0], target=Target.at_least(2.0), name="bare loop"),
            _missing(), _row([1.0], [1.0])]
    lines = _table_lines(rows)
    assert "targets met: 1 of 3 (1 not measured)" in lines
    missed = [line for line in lines if line.strip().startswith("missed:")]
    assert missed == ["  missed: noop, throughput vs bare loop: 1.00x, target >= 2.00x"]


def test_table_of_nothing_still_renders():
    assert "targets met: 0 of 0" in report.render_table([], META)


def test_markdown_is_a_performance_section_with_a_pipe_table():
    text = report.render_markdown([_row([1.0], [3.0], target=Target.at_least(2.0)), _missing()], META)
    lines = text.splitlines()
    assert lines[0] == "## Performance"
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 2  # header, rule, two rows
    assert all(line.count("|") == len(report.COLUMNS) + 1 for line in table)
    assert "python -m benchmarks" in text
    assert f"{META['cpu_count']} CPUs" in text


# -- JSON --------------------------------------------------------------------------------

RESULT_KEYS = {
    "scenario", "metric", "unit", "better", "baseline_name", "taskqueue_name",
    "baseline", "baseline_min", "baseline_max", "taskqueue", "taskqueue_min", "taskqueue_max",
    "ratio", "ratio_min", "ratio_max", "target", "met", "rounds", "sizes", "note", "values",
}
META_KEYS = {"schema", "taskqueue", "commit", "cpu_count", "python", "implementation", "platform",
             "machine", "date", "mode", "command", "rounds", "warmup", "peers", "load_average"}


def test_json_schema():
    data = json.loads(json.dumps(report.to_json(
        [_row([1.0, 2.0], [3.0, 4.0], target=Target.at_least(2.0)), _missing()], META)))
    assert set(data) == {"meta", "results"}
    assert set(data["meta"]) == META_KEYS
    assert data["meta"]["schema"] == report.SCHEMA_VERSION
    assert data["meta"]["mode"] == "quick"
    assert data["meta"]["command"] == "python -m benchmarks --quick"
    measured, missing = data["results"]
    assert set(measured) == RESULT_KEYS
    assert measured["target"] == {"op": ">=", "value": 2.0}
    assert measured["ratio"] == 2.5 and measured["met"] is True
    assert measured["sizes"] == {"tasks": 1000, "workers": 4}
    assert measured["values"] == {"baseline": [1.0, 2.0], "taskqueue": [3.0, 4.0],
                                  "ratios": [3.0, 2.0]}
    assert missing["baseline"] is None and missing["ratio"] is None and missing["met"] is None
    assert missing["note"].startswith("Huey")


def test_table_header_shows_the_load_of_the_shared_machine():
    meta = dict(META, load_average={"start": [1.5, 1.0, 0.5], "end": [2.25, 1.0, 0.5]})
    assert "load average 1.50 at start, 2.25 at end" in report.render_table([], meta)


def test_the_commit_measured_is_recorded():
    commit = report.commit_info()
    if commit is None:
        pytest.skip("not run from a git checkout")
    assert len(commit["id"]) == 40 and isinstance(commit["dirty"], bool)
    meta = dict(META, commit={"id": "0123456789abcdef", "branch": "main", "dirty": True})
    assert "(commit 0123456789, with uncommitted changes)" in report.render_table([], meta)


def test_json_meta_date_is_utc_iso8601():
    date = META["date"]
    assert date.endswith("+00:00") and "T" in date


# -- progress ----------------------------------------------------------------------------


def test_progress_in_a_log_is_one_plain_line_per_scenario():
    stream = io.StringIO()
    progress = Progress(stream, total=2, live=False)
    progress.scenario("noop")
    progress.update("round 1/5 taskqueue")
    progress.scenario("memory")
    progress.done()
    assert stream.getvalue() == "[1/2] noop\n[2/2] memory\n"


def test_progress_on_a_terminal_rewrites_one_line_and_erases_it():
    stream = io.StringIO()
    progress = Progress(stream, total=1, live=True)
    progress.scenario("noop")
    progress.update("round 1/5 taskqueue")
    progress.done()
    text = stream.getvalue()
    assert "\n" not in text
    assert "\r[1/1] noop round 1/5 taskqueue" in text
    assert text.endswith("\r")


def test_progress_is_live_only_on_a_terminal():
    assert Progress(io.StringIO(), total=1)._live is False
