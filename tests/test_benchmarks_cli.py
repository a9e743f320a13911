"""The benchmark command line: options, exit codes, and what it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# benchmarks/ is a top-level part of the repository, not an installed
# package: make it importable however pytest was started.
sys.path.insert(0, str(ROOT))

from benchmarks import cli  # noqa: E402
from benchmarks.harness import Metric, Target  # noqa: E402
from benchmarks.registry import SCENARIOS, Context, Scenario  # noqa: E402

SIZES = {"full": {"tasks": 3}, "quick": {"tasks": 2}, "smoke": {"tasks": 1}}
THROUGHPUT = Metric("throughput", "throughput", "tasks/s", higher_is_better=True)


@pytest.fixture
def fake(monkeypatch):
    """Register a scenario that measures nothing real, and one that fails."""
    def run(ctx: Context):
        theirs = iter([100.0, 100.0, 100.0])
        ours = iter([250.0, 150.0, 200.0])
        samples = ctx.measure({"baseline": lambda: {"throughput": next(theirs)},
                               "taskqueue": lambda: {"throughput": next(ours)}})
        return [ctx.compare(samples, THROUGHPUT, "baseline", target=Target.at_least(2.0))]

    def boom(ctx: Context):
        raise RuntimeError("it broke")

    monkeypatch.setitem(SCENARIOS, "fake", Scenario("fake", "a fake", SIZES, run))
    monkeypatch.setitem(SCENARIOS, "boom", Scenario("boom", "a broken one", SIZES, boom))


def _usage_error(capsys, argv):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == cli.EXIT_USAGE == 2
    assert out == ""
    assert err.count("\n") == 1, err  # one line, no usage dump, no traceback
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, says", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--quick", "--smoke"], "not allowed with argument"),
    (["--only", "nope"], "unknown scenario 'nope' (choose from noop,"),
    (["--rounds", "0"], "--rounds must be >= 1, got 0"),
    (["--rounds", "many"], "invalid int value: 'many'"),
    (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["--json"], "expected one argument"),
    (["--json", "/no/such/directory/out.json"], "--json: directory '/no/such/directory' does not exist"),
    (["--markdown", "/no/such/directory/perf.md"], "--markdown: directory"),
])
def test_bad_options_exit_2_with_one_line(capsys, argv, says):
    assert says in _usage_error(capsys, argv)


def test_json_into_a_directory_is_refused(capsys, tmp_path):
    assert "is a directory" in _usage_error(capsys, ["--json", str(tmp_path)])


def test_plot_into_a_file_is_refused(capsys, tmp_path):
    target = tmp_path / "file.png"
    target.write_text("")
    assert "--plot needs a directory" in _usage_error(capsys, ["--plot", str(target)])


def test_plot_without_matplotlib_says_how_to_get_it(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    err = _usage_error(capsys, ["--smoke", "--plot", str(tmp_path / "charts")])
    assert "matplotlib is not installed: pip install '.[bench]'" in err


def test_help_exits_0(capsys):
    assert cli.main(["--help"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    for option in ("--quick", "--smoke", "--only", "--json", "--plot"):
        assert option in out


def test_list_names_every_scenario(capsys):
    assert cli.main(["--list"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    for name in SCENARIOS:
        assert name in out


def test_every_scenario_has_sizes_for_every_mode():
    for spec in SCENARIOS.values():
        assert set(spec.sizes) == {"full", "quick", "smoke"}, spec.name


def test_the_nine_scenarios_of_the_issue_are_registered():
    assert list(SCENARIOS)[:9] == ["noop", "producer", "io-scaling", "latency", "memory",
                                   "growth", "retry", "listener", "peers"]


def test_a_run_prints_the_table_and_writes_json(capsys, fake, tmp_path):
    path = tmp_path / "out.json"
    code = cli.main(["--only", "fake", "--quick", "--rounds", "3", "--json", str(path)])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_OK
    assert "fake" in out and "targets met: 1 of 1" in out
    assert "[1/1] fake" in err  # the plain progress line: stderr is no terminal here
    data = json.loads(path.read_text())
    assert data["meta"]["mode"] == "quick"
    assert data["meta"]["rounds"] == 3
    assert set(data["meta"]["load_average"]) == {"start", "end"}
    assert data["meta"]["command"] == f"python -m benchmarks --only fake --quick --rounds 3 --json {path}"
    (row,) = data["results"]
    assert row["scenario"] == "fake"
    assert row["sizes"] == {"tasks": 2}
    assert row["values"]["ratios"] == [2.5, 1.5, 2.0]
    assert row["ratio"] == 2.0 and row["met"] is True


def test_a_failing_scenario_exits_1_and_leaves_a_row(capsys, fake, tmp_path):
    path = tmp_path / "out.json"
    code = cli.main(["--only", "boom", "--only", "fake", "--smoke", "--json", str(path)])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_FAILED
    assert "scenario 'boom' failed" in err and "RuntimeError: it broke" in err
    rows = {row["scenario"]: row for row in json.loads(path.read_text())["results"]}
    assert rows["boom"]["metric"] == "did not finish"
    assert rows["boom"]["taskqueue"] is None
    assert "RuntimeError: it broke" in rows["boom"]["note"]
    assert rows["fake"]["taskqueue"] is not None  # the other scenario still ran


def test_markdown_is_written(capsys, fake, tmp_path):
    path = tmp_path / "perf.md"
    assert cli.main(["--only", "fake", "--smoke", "--markdown", str(path)]) == cli.EXIT_OK
    assert path.read_text().startswith("## Performance")


@pytest.mark.timeout(60)
def test_module_entry_point_reports_bad_options_in_one_line():
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=50)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "python -m benchmarks: error: unknown scenario 'nope' (choose from "
        + ", ".join(SCENARIOS) + ")"]
