"""benchmarks/bench_runs.py judges several `normlab bench --json` runs together (medians over runs, the rows below
the margin); the figures are never asserted, the arithmetic and the errors are."""

import json

import pytest


@pytest.fixture(scope="module")
def bench_runs(load_benchmark):
    return load_benchmark("bench_runs")


def _run(tmp_path, name, ratios):
    cases = [{"name": n, "mode": m, "speedup_vs_torch": x, "normlab_over_roofline": 2 * x,
              "normlab_over_roofline_same_rounds": 1.5 * x} for (n, m), x in ratios]
    path = tmp_path / name
    path.write_text(json.dumps({"cases": cases}))
    return str(path)


def test_medians_over_runs_and_the_rows_below_the_margin(bench_runs, tmp_path, capsys):
    paths = [_run(tmp_path, f"r{i}.json", [(("32x128", "fwd"), a), (("8x512x7x7", "fwd+bwd"), b)])
             for i, (a, b) in enumerate([(0.90, 1.2), (0.99, 0.80), (0.93, 1.00)])]
    rows = bench_runs.summarize([bench_runs.load(p) for p in paths])
    assert [r["x_torch_median"] for r in rows] == [0.93, 1.0] and [r["miss"] for r in rows] == [True, False]
    assert rows[0]["roof_median"] == pytest.approx(1.86)
    assert rows[0]["roofm"] == pytest.approx([1.35, 1.485, 1.395])  # per run, in the runs' order
    assert bench_runs.main(paths) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "below 0.95: 32x128 fwd"
    assert out.splitlines()[2].split()[-4:] == [f"{1.5 * x:.2f}" for x in (0.90, 0.99, 0.93)] + ["<"]  # a miss row


def test_runs_written_before_the_same_rounds_roof_read_as_nan(bench_runs, tmp_path, capsys):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"cases": [{"name": "32x128", "mode": "fwd", "speedup_vs_torch": 1.0,
                                           "normlab_over_roofline": 2.0}]}))
    assert bench_runs.main([str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[-1] == "nan"


def test_bad_runs_are_one_line_exit_2(bench_runs, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert bench_runs.main([str(bad)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    a = _run(tmp_path, "a.json", [(("32x128", "fwd"), 1.0)])
    b = _run(tmp_path, "b.json", [(("256x128", "fwd"), 1.0)])
    assert bench_runs.main([a, b]) == 2
    assert "no (shape, mode) case in common" in capsys.readouterr().err
