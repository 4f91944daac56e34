"""Shared test helpers."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def load_benchmark():
    """Returns a loader: `load_benchmark("bench_runs")` imports benchmarks/bench_runs.py as a module. The scripts are
    not a package (they are run as files), so their tests import them by path."""
    def load(name):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
