"""`normlab bench` runs end to end and writes the JSON it promises (figures are printed, never asserted)."""

from __future__ import annotations

import json

import pytest

from normlab import kernels
from normlab.cli import main

pytestmark = pytest.mark.skipif(not kernels.numba_available(), reason="numba (the kernels extra) is not installed")


def test_bench_cli_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--shapes", "32x128", "--reps", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "32x128" in printed and "x torch" in printed
    data = json.loads(out.read_text())
    assert [c["mode"] for c in data["cases"]] == ["fwd", "fwd+bwd"]
    for case in data["cases"]:
        assert set(case["timings"]) >= {"normlab", "normlab-fast", "normlab-native", "torch", "composite", "copy"}
        assert all(t["reps"] == 2 and t["median_ms"] > 0 for t in case["timings"].values())
        assert case["roofline_ms"] == pytest.approx(case["timings"]["copy"]["median_ms"] * (1 if case["mode"] == "fwd" else 2.5))


def test_bench_unknown_shape_names_the_choices():
    with pytest.raises(ValueError, match=r"normlab bench: unknown shape '3x3'; expected one of \['32x64x56x56'"):
        main(["bench", "--shapes", "3x3", "--reps", "1"])
