"""`normlab bench`'s f64 cases are built in float64 end to end (x, dy, weight, bias, buffers, every candidate's
result) and its normlab/torch candidates compute torch's BatchNorm in float64."""

from __future__ import annotations

import pytest
import torch

from normlab.bench import kernels as bench_kernels
from normlab.bench.kernels import GRID, MODES, QUICK, _candidates, case_tensors

SAME_AS_BN = ("normlab", "normlab-fast", "normlab-native", "fast-nocache", "torch", "composite")


def test_grid_f64_names_are_float64_and_quick_has_five():
    f64 = {name: (shape, layout, dtype) for name, shape, layout, dtype in GRID if name.endswith("f64")}
    assert set(f64) == {"32x64x56x56 f64", "32x256x14x14 f64", "8x512x7x7 CL f64", "256x128 f64"}
    assert all(dtype == torch.float64 for _, _, dtype in f64.values())
    assert {layout for _, layout, _ in f64.values()} == {"nchw", "channels_last"}
    assert all(dtype == torch.float32 for name, _, _, dtype in GRID if not name.endswith("f64"))
    names = [name for name, *_ in GRID]
    assert len(QUICK) == 5 and set(QUICK) <= set(names) and len(set(names)) == len(names)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("mode", MODES)
def test_f64_candidates_run_in_float64_and_match_torch_bn(mode, layout):
    shape = (8, 3, 4, 5)
    cands = _candidates(shape, layout, mode, compile_=False, variants=True, dtype=torch.float64)
    x, dy = case_tensors(shape, layout, torch.float64)
    assert x.dtype == dy.dtype == torch.float64
    ref = torch.nn.BatchNorm2d(3).to(torch.float64).train()
    xr = x.detach().clone().requires_grad_(mode == "fwd+bwd")
    y = ref(xr)
    want = (y.detach(),) if mode == "fwd" else torch.autograd.grad(y, (xr, ref.weight, ref.bias), dy)
    for name, fn in cands.items():
        out = fn()
        got = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        assert all(t.dtype == torch.float64 for t in got), name
        if name in SAME_AS_BN:
            assert len(got) == len(want), name
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=name)
    torch.testing.assert_close(cands["copy"](), x, rtol=0, atol=0)


def test_run_grid_reports_the_dtype():
    cases = bench_kernels.run_grid(["256x128 f64"], reps=1, modes=("fwd",), variants=False)
    assert [(c.name, c.dtype) for c in cases] == [("256x128 f64", "float64")]
    assert cases[0].as_dict()["dtype"] == "float64"
    assert "float64" in bench_kernels.format_table(cases).splitlines()[-1]
