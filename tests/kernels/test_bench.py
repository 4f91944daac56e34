"""`normlab bench` runs end to end and writes the JSON it promises (figures are printed, never asserted)."""

from __future__ import annotations

import json

import pytest

from normlab import kernels
from normlab.cli import main

pytestmark = pytest.mark.skipif(not kernels.numba_available(), reason="numba (the kernels extra) is not installed")


def test_bench_cli_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--shapes", "32x128", "--reps", "2", "--no-train-step", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "32x128" in printed and "x torch" in printed
    data = json.loads(out.read_text())
    assert [c["mode"] for c in data["cases"]] == ["fwd", "fwd+bwd"]
    for case in data["cases"]:
        assert set(case["timings"]) >= {"normlab", "normlab-fast", "normlab-native", "torch", "composite", "copy"}
        assert all(t["reps"] == 2 and t["median_ms"] > 0 for t in case["timings"].values())
    # the roof: the fastest copy over both modes' rounds (not a row's median), passes x that; its rate in GB/s
    best = min(case["timings"]["copy"]["min_ms"] for case in data["cases"])
    for case in data["cases"]:
        copies = 1 if case["mode"] == "fwd" else 2.5
        assert case["dtype"] == "float32" and case["copy_best_ms"] == pytest.approx(best)
        assert case["roofline_ms"] == pytest.approx(best * copies)
        assert case["copy_gbps"] == pytest.approx(2 * 32 * 128 * 4 / (best / 1e3) / 1e9)


def test_bench_cli_takes_f64_names(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--shapes", "256x128 f64", "--reps", "1", "--no-train-step", "--json", str(out)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("256x128 f64")]
    assert len(rows) == 2 and all(r.split()[2] == "float64" for r in rows)
    assert {c["dtype"] for c in json.loads(out.read_text())["cases"]} == {"float64"}


def test_bench_unknown_shape_names_the_choices(capsys):
    # a user's mistake: one line naming the choices, exit 2, no traceback (it used to raise ValueError out of main)
    assert main(["bench", "--shapes", "3x3", "--reps", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("normlab bench: error: --shapes: unknown shape '3x3'; expected some of ['32x64x56x56'"), err


def test_train_step_rows():
    from normlab.bench.kernels import format_train_steps, train_step_cases

    rows = train_step_cases(batch_sizes=(4,), reps=1, image=(1, 8, 8), channels=(4, 4))
    assert rows[0]["batch_size"] == 4 and rows[0]["first_bn_values"] == 4 * 4 * 8 * 8
    assert rows[0]["auto_ms"] > 0 and rows[0]["native_ms"] > 0
    faults = rows[0]["page_faults_per_step"]
    assert set(faults) == {"auto", "native", "torch"} and all(n is None or n >= 0 for n in faults.values())
    table = format_train_steps(rows)
    assert "speed-up" in table and "faults" in table
    counts = " / ".join("-" if faults[k] is None else f"{faults[k]:.0f}" for k in ("auto", "native", "torch"))
    assert table.splitlines()[-1].endswith(counts)
