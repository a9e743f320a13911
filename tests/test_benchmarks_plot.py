"""The benchmark charts: drawn from result rows when matplotlib is there."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# benchmarks/ is a top-level part of the repository, not an installed
# package: make it importable however pytest was started.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import plot  # noqa: E402
from benchmarks.harness import Metric, compare  # noqa: E402


def _row(scenario, metric, baseline, values, **sizes):
    samples = {baseline: [{metric.key: v} for v in values[0]],
               "taskqueue": [{metric.key: v} for v in values[1]]}
    return compare(samples, scenario=scenario, metric=metric, subject="taskqueue",
                   baseline=baseline, sizes=sizes)


def _rows():
    rows = []
    for workers in (1, 4):
        metric = Metric("throughput", f"throughput, {workers} workers", "tasks/s", True)
        rows.append(_row("io-scaling", metric, f"ideal ({workers} / 1 ms)",
                         ([1000.0 * workers] * 2, [900.0 * workers, 920.0 * workers]), workers=workers))
        rows.append(_row("io-scaling", metric, f"ThreadPoolExecutor({workers})",
                         ([880.0 * workers] * 2, [900.0 * workers, 920.0 * workers]), workers=workers))
    for key in ("light_p50", "light_p99"):
        rows.append(_row("latency", Metric(key, key, "us", False), "ThreadPoolExecutor(4)",
                         ([20.0, 30.0], [15.0, 25.0])))
    for n in (1000, 100_000):
        rows.append(_row("growth", Metric("us_per_task", f"cost, n={n}", "us/task", False),
                         "taskqueue, n=10,000", ([4.0, 4.2], [4.1, 4.3]),
                         tasks_measured=n, reference=10_000))
    return rows


@pytest.mark.timeout(120)
def test_charts_are_png_files(tmp_path):
    pytest.importorskip("matplotlib", reason="charts need the bench extra")
    written = plot.write_charts(_rows(), str(tmp_path / "charts"))
    assert [Path(p).name for p in written] == ["io-scaling.png", "latency.png", "growth.png"]
    for path in written:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_rows_no_charts(tmp_path):
    pytest.importorskip("matplotlib", reason="charts need the bench extra")
    assert plot.write_charts([], str(tmp_path)) == []


def test_without_matplotlib_the_message_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(plot.PlotUnavailable) as raised:
        plot.write_charts(_rows(), str(tmp_path))
    assert str(raised.value) == "matplotlib is not installed: pip install '.[bench]'"
