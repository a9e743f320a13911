"""CI's check that the benchmark suite never rots: every scenario runs, tiny.

This runs ``python -m benchmarks --smoke --json FILE`` as a user would and
asserts only that every registered scenario ran and produced numbers.
It never asserts speed: CI machines are shared and noisy, and the suite
reports its targets, it does not enforce them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# benchmarks/ is a top-level part of the repository, not an installed
# package: make it importable however pytest was started.
sys.path.insert(0, str(ROOT))

from benchmarks import scenarios  # noqa: E402,F401  (registers every scenario)
from benchmarks.registry import SCENARIOS  # noqa: E402


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "smoke.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--json", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done, json.loads(path.read_text())


@pytest.mark.timeout(300)
def test_every_scenario_ran_and_produced_numbers(smoke):
    _, data = smoke
    by_scenario = {}
    for row in data["results"]:
        by_scenario.setdefault(row["scenario"], []).append(row)
    assert set(by_scenario) == set(SCENARIOS)
    for name, rows in by_scenario.items():
        for row in rows:
            if row["sizes"].get("redis_unreachable"):
                # Without a Redis server the redis scenario measures nothing,
                # taskqueue included, and every row says why.
                assert row["taskqueue"] is None and row["baseline"] is None and row["note"]
                continue
            assert _is_number(row["taskqueue"]), (name, row)
            assert row["rounds"] >= 1, (name, row)
            if row["baseline"] is None:
                # Only a peer that could not run may lack a baseline (CI installs
                # none: the bench extra is not in it), and it says why.
                assert "peer_version" in row["sizes"] and row["note"], (name, row)
                assert row["ratio"] is None and row["met"] is None
            else:
                assert _is_number(row["baseline"]) and _is_number(row["ratio"]), (name, row)
                assert row["ratio_min"] <= row["ratio"] <= row["ratio_max"]


@pytest.mark.timeout(300)
def test_smoke_json_describes_the_run(smoke):
    _, data = smoke
    meta = data["meta"]
    assert meta["mode"] == "smoke"
    assert meta["command"] == "python -m benchmarks --smoke --json " + meta["command"].split()[-1]
    for key in ("cpu_count", "python", "implementation", "platform", "date"):
        assert meta[key], key
    for row in data["results"]:
        assert row["sizes"], row  # the sizes used are recorded with every figure


@pytest.mark.timeout(300)
def test_smoke_prints_one_table(smoke):
    done, data = smoke
    assert done.stdout.count("targets met:") == 1
    for name in SCENARIOS:
        assert f"\n{name} " in done.stdout
