"""`normlab bench`'s roofline is the shape's best copy over both modes' rounds (STREAM's best rate), not one row's
copy median; the GB/s column is 2 x numel x itemsize / that best copy. The second figure, '/roofm', divides by
the row's own median copy (same interleaved rounds) instead."""

from __future__ import annotations

import pytest

from normlab.bench.harness import Timing
from normlab.bench.kernels import HEADER_LINES, Case, format_table, share_best_copy


def _case(name, shape, mode, copy_s, normlab_s=(4e-3, 5e-3, 6e-3), dtype="float32"):
    t = {"copy": Timing.from_samples(copy_s), "normlab": Timing.from_samples(normlab_s),
         "torch": Timing.from_samples([8e-3, 9e-3, 10e-3])}
    return Case(name, shape, "nchw", mode, t, dtype=dtype)


def test_timing_from_samples_keeps_the_minimum():
    t = Timing.from_samples([3.0, 1.0, 2.0, 5.0])
    assert (t.median, t.min, t.reps) == (2.5, 1.0, 4)
    with pytest.raises(ValueError, match="at least one sample"):
        Timing.from_samples([])


def test_roof_is_the_best_copy_over_both_modes():
    # the fwd rows' copies are slow (a loaded round), the fwd+bwd's best is 0.5 ms: both rows use 0.5 ms
    fwd = _case("32x8", (32, 8), "fwd", [3e-3, 1e-3, 5e-3])
    bwd = _case("32x8", (32, 8), "fwd+bwd", [2e-3, 4e-3, 0.5e-3])
    other = _case("4x8 f64", (4, 8), "fwd", [7e-3, 9e-3], dtype="float64")
    assert fwd.copy_seconds() == 1e-3  # before sharing: the case's own fastest copy, not its median (3 ms)
    share_best_copy([fwd, bwd, other])
    assert fwd.copy_seconds() == bwd.copy_seconds() == 0.5e-3
    assert other.copy_seconds() == 7e-3  # another shape keeps its own
    assert fwd.roofline() == pytest.approx(0.5e-3) and bwd.roofline() == pytest.approx(2.5 * 0.5e-3)
    d = bwd.as_dict()
    assert d["roofline_ms"] == pytest.approx(1.25) and d["copy_best_ms"] == pytest.approx(0.5)
    assert d["normlab_over_roofline"] == pytest.approx(5e-3 / 1.25e-3)
    assert d["timings"]["copy"]["median_ms"] == pytest.approx(2.0)  # the row's median stays in the JSON


def test_copy_gbps_is_two_passes_of_the_tensor_over_the_best_copy():
    fwd = _case("32x8", (32, 8), "fwd", [2e-6, 1e-6])
    other = _case("4x8 f64", (4, 8), "fwd", [4e-6], dtype="float64")
    share_best_copy([fwd, other])
    assert fwd.copy_gbps() == pytest.approx(2 * 32 * 8 * 4 / 1e-6 / 1e9)  # 2.048 GB/s
    assert other.copy_gbps() == pytest.approx(2 * 4 * 8 * 8 / 4e-6 / 1e9)  # float64: 8 bytes a value
    assert fwd.as_dict()["copy_gbps"] == pytest.approx(2.048)
    table = format_table([fwd, other])
    lines = table.splitlines()
    assert all(h in lines for h in HEADER_LINES) and "(float32)" not in table
    assert "GB/s" in lines[len(HEADER_LINES)] and "dtype" in lines[len(HEADER_LINES)]
    # shape, dtype, mode, the medians of normlab, torch and copy, then GB/s
    row = next(line for line in lines if line.startswith("32x8 ")).split()
    assert row[1] == "float32" and row[5] == "0.002" and row[6] == "2.0"
    assert "float64" in next(line for line in lines if line.startswith("4x8 f64"))


def test_same_rounds_roof_divides_by_the_rows_median_copy():
    # the fwd+bwd row's copies: median 2 ms, best 0.5 ms; normlab median 5 ms. The best-copy roof is 5 / (2.5 x 0.5),
    # the same-rounds one 5 / (2.5 x 2): a host whose copies all ran slower moves the second figure far less
    fwd = _case("32x8", (32, 8), "fwd", [3e-3, 1e-3, 5e-3])
    bwd = _case("32x8", (32, 8), "fwd+bwd", [2e-3, 4e-3, 0.5e-3])
    share_best_copy([fwd, bwd])
    assert bwd.over_roofline_same_rounds() == pytest.approx(5e-3 / (2.5 * 2e-3))
    assert fwd.over_roofline_same_rounds() == pytest.approx(5e-3 / (1.0 * 3e-3))  # fwd: one copy, its own median
    assert bwd.as_dict()["normlab_over_roofline_same_rounds"] == pytest.approx(1.0)
    assert bwd.as_dict()["normlab_over_roofline"] == pytest.approx(4.0)
    lines = format_table([fwd, bwd]).splitlines()
    head = next(line for line in lines if line.startswith("shape"))
    assert head.split()[-2:] == ["/roof", "/roofm"]
    assert next(line for line in lines if line.startswith("32x8 ") and "fwd+bwd" in line).split()[-2:] == ["4.00",
                                                                                                            "1.00"]
