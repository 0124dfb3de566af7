"""benchmarks/loop.py (`make bench-loop`) loads beside the demo it reuses, and summarises like its JSON says."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "loop.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("loop_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports scripts/demo.py: a renamed demo constant fails here
    return module


def test_the_summary_has_median_p99_maximum_and_count(bench):
    values = [0.03, 0.01, 0.02, 0.5]
    result = bench.summary(values)
    assert (result["median"], result["max"], result["n"]) == (0.025, 0.5, 4)
    assert 0.02 < result["p99"] < 0.5
