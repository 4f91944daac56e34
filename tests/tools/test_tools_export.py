"""normlab.tools.export_onnx: a folded model in onnxruntime equals torch within 1e-5; clear error without the extra."""

import re
import sys

import numpy as np
import pytest
import torch
from torch import nn

from normlab import nn as nlnn
from normlab.nn import make_norm
from normlab.tools import export_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def model_and_input():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 2, stride=2, groups=2), nlnn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 12 * 12, 5), nlnn.BatchNorm1d(5),
    )
    model.train()
    for _ in range(3):
        model(torch.randn(16, 3, 8, 8) * 2 + 1)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "weight", None) is not None and isinstance(m, (nn.BatchNorm2d, nlnn.BatchNormBase)):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1.0, 1.0)
    return model, torch.randn(4, 3, 8, 8)


def op_types(path):
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def test_folded_export_matches_torch_in_onnxruntime(tmp_path):
    model, x = model_and_input()
    model.train()
    result = export_onnx(model, x, tmp_path / "m.onnx")
    assert result.folded == 3 and result.max_abs_diff <= 1e-5
    assert model.training and sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 1  # model unchanged
    assert op_types(result.path) == ["Conv", "Relu", "ConvTranspose", "Relu", "Flatten", "Gemm"]
    # Independent check, at another batch size (the batch axis is dynamic).
    x2 = torch.randn(7, 3, 8, 8)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    [got] = session.run(None, {"input0": x2.numpy()})
    with torch.no_grad():
        want = model.eval()(x2).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_unfolded_export_keeps_normlab_norms_as_elementwise_ops(tmp_path):
    """torch's exporter fuses its own Conv+BatchNorm, but normlab's layers stay as Sub/Mul/Add without folding."""
    model, x = model_and_input()
    result = export_onnx(model, x, tmp_path / "raw.onnx", fold=False)
    assert result.folded == 0 and op_types(result.path).count("Sub") == 2
    assert result.max_abs_diff <= 1e-5


def test_missing_extra_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    model, x = model_and_input()
    with pytest.raises(ImportError, match=r"export_onnx needs the optional package 'onnxruntime'.*normlab\[export\]"):
        export_onnx(model, x, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_bad_example_input(tmp_path):
    model, _ = model_and_input()
    with pytest.raises(TypeError, match="example_input must be a Tensor or a non-empty tuple of Tensors"):
        export_onnx(model, [1, 2], tmp_path / "m.onnx")


# -- kinds: norms that normalize with batch statistics (or have no ONNX operator) at inference ----------------------
SPECS = ["bn", "brn", "gbn:2", "mabn", "bln", "masked", "tbn:4", "gn:2", "ln", "in", "rms", "none"]
STATS = {"running": {}, "untracked": {"track_running_stats": False}, "batch": {"eval_stats": "batch"}}


def trained_eval(model, x, steps=3):
    """A few training steps (running statistics, BLN's training batch size), random affine, then eval mode."""
    gen = torch.Generator().manual_seed(3)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(x * 1.5 + torch.randn(x.shape, generator=gen))
        for m in model.modules():
            for p in (getattr(m, "weight", None), getattr(m, "bias", None)):
                if isinstance(p, nn.Parameter) and p.ndim == 1 and not isinstance(m, (nn.Conv1d, nn.Linear)):
                    p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    return model.eval()


def assert_onnx_matches(path, model, *inputs):
    """Independent of export_onnx's own check: run the file in onnxruntime on a new input, compare with torch."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {f"input{i}": t.numpy() for i, t in enumerate(inputs)})[0]
    with torch.no_grad():
        want = model(*inputs).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(want).max()))


def _builds(spec, stats):
    try:
        make_norm(spec, 4, **STATS[stats])
    except (TypeError, ValueError):
        return False  # the layer has no such option (e.g. GroupNorm has no running statistics)
    return True


FAMILY = [(spec, stats) for spec in SPECS for stats in sorted(STATS) if _builds(spec, stats)]


def family_case(spec, stats):
    norm = make_norm(spec, 4, **STATS[stats])
    if spec.startswith("tbn"):
        return nn.Sequential(nn.Linear(4, 4), norm), torch.randn(6, 5, 4)  # (N, T, C)
    return nn.Sequential(nn.Conv1d(4, 4, 1), norm), torch.randn(6, 4, 5)


# GhostBatchNorm normalizes each virtual batch on its own: a graph for one batch size only.
GHOST_BATCH = {("gbn:2", "untracked"), ("gbn:2", "batch")}


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("spec,stats", FAMILY)
def test_kind_onnx_batch_statistics(tmp_path, spec, stats, fold):
    """Every layer of make_norm's family in eval mode exports faithfully (onnxruntime against the model, at the
    example's batch size and another one), or raises one ValueError naming the module path and the reason."""
    model, x = family_case(spec, stats)
    model = trained_eval(model, x)
    if spec == "mabn" and stats == "batch":  # the layer itself refuses eval_stats="batch" at its first forward
        with pytest.raises(ValueError, match="export_onnx: the eval-mode model failed.*eval_stats='batch' is not defined"):
            export_onnx(model, x, tmp_path / "m.onnx", fold=fold)
        return
    if (spec, stats) in GHOST_BATCH:
        with pytest.raises(ValueError, match=r"export_onnx: '1' \(GhostBatchNorm\) normalizes each virtual batch of 2 "
                                             r"samples.*dynamic_batch=False"):
            export_onnx(model, x, tmp_path / "m.onnx", fold=fold)
        assert not (tmp_path / "m.onnx").exists()
        result = export_onnx(model, x, tmp_path / "m.onnx", fold=fold, dynamic_batch=False)
        assert result.max_abs_diff <= 1e-5
        assert_onnx_matches(result.path, model, torch.randn(x.shape) * 2 + 1)
        return
    result = export_onnx(model, x, tmp_path / "m.onnx", fold=fold)
    assert result.max_abs_diff <= 1e-5
    assert model[1].training is False
    assert_onnx_matches(result.path, model, torch.randn(9, *x.shape[1:]) * 2 + 1)
    if stats != "running" and spec in ("bn", "brn", "masked"):
        ops = op_types(result.path)
        assert "ReduceMean" in ops and "BatchNormalization" not in ops  # the graph computes the batch's statistics


class _Masked(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.conv, self.norm = nn.Conv1d(4, 4, 1), make_norm("masked", 4, **kw)

    def forward(self, x, mask):
        return self.norm(self.conv(x), mask)


@pytest.mark.parametrize("stats", sorted(STATS))
def test_kind_onnx_batch_statistics_masked_input(tmp_path, stats):
    torch.manual_seed(0)
    x, mask = torch.randn(6, 4, 5), torch.rand(6, 5) > 0.3
    model = _Masked(**STATS[stats])
    model.train()
    model(x, mask)
    model.eval()
    result = export_onnx(model, (x, mask), tmp_path / "m.onnx")
    assert result.max_abs_diff <= 1e-5
    x2, mask2 = torch.randn(8, 4, 5), torch.rand(8, 5) > 0.5
    assert_onnx_matches(result.path, model, x2, mask2)


@pytest.mark.parametrize("case", ["torch_bn_untracked", "normact_batch", "inplace_abn_batch", "inplace_abn_running",
                                  "torch_rms", "torch_instance_running", "rms_trailing", "sync_batch"])
def test_kind_onnx_batch_statistics_other_layers(tmp_path, case):
    torch.manual_seed(0)
    x = torch.randn(5, 4, 6)
    conv = nn.Conv1d(4, 4, 1)
    models = {
        "torch_bn_untracked": lambda: nn.Sequential(conv, nn.BatchNorm1d(4, track_running_stats=False)),
        "normact_batch": lambda: nn.Sequential(conv, nlnn.NormAct("bn", 4, eval_stats="batch")),
        "inplace_abn_batch": lambda: nn.Sequential(
            conv, nlnn.NormAct("bn", 4, activation="leaky_relu", inplace_abn=True, eval_stats="batch")),
        "inplace_abn_running": lambda: nn.Sequential(
            conv, nlnn.NormAct("bn", 4, activation="elu", inplace_abn=True)),
        "torch_rms": lambda: nn.Sequential(conv, nn.RMSNorm(6)),
        "torch_instance_running": lambda: nn.Sequential(conv, nn.InstanceNorm1d(4, affine=True, track_running_stats=True)),
        "rms_trailing": lambda: nn.Sequential(conv, nlnn.RMSNorm(6)),
        "sync_batch": lambda: nn.Sequential(conv, nlnn.convert_sync_batchnorm(make_norm("bn", 4, eval_stats="batch"))),
    }
    model = trained_eval(models[case](), x)
    if case == "sync_batch":
        with pytest.raises(ValueError, match=r"export_onnx: '1' \(BatchNorm\) pools its batch statistics"):
            export_onnx(model, x, tmp_path / "m.onnx", fold=False)
        return
    for fold in (True, False):
        result = export_onnx(model, x, tmp_path / f"m{fold}.onnx", fold=fold)
        assert result.max_abs_diff <= 1e-5
        assert_onnx_matches(result.path, model, torch.randn(7, 4, 6) * 2 - 1)


def test_kind_nonfinite_weights_export(tmp_path):
    """NaN/inf in weights or buffers, or in torch's output on the example, are named; nothing is written."""
    for where in ("1.running_var", "1.weight", "0.weight"):
        model, x = model_and_input()
        model.eval()
        tensor = dict(model.named_parameters()) | dict(model.named_buffers())
        with torch.no_grad():
            tensor[where].view(-1)[0] = float("nan")
        for fold in (True, False):
            with pytest.raises(ValueError, match=rf"export_onnx: {re.escape(where)} holds 1 NaN of \d+ values"):
                export_onnx(model, x, tmp_path / "m.onnx", fold=fold)
    model, x = model_and_input()
    with torch.no_grad():
        model[1].running_mean[2] = float("inf")
    with pytest.raises(ValueError, match=r"export_onnx: 1.running_mean holds 1 inf of 8 values"):
        export_onnx(model, x, tmp_path / "m.onnx")
    model, x = model_and_input()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="export_onnx: torch's output0 holds NaN or inf on the example input"):
        export_onnx(model, x, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_kind_onnx_batch_statistics_odd_subclasses_are_refused_by_path(tmp_path):
    class Doubling(nlnn.BatchNorm1d):
        def forward(self, x):
            return super().forward(x) * 2

    class Own(nlnn.BatchNormBase):
        def _normalize(self, x, axis):
            return x * 3

    x = torch.randn(3, 5, 4)
    model = nn.Sequential(nn.Conv1d(5, 5, 1), nn.Sequential(Doubling(5, eval_stats="batch"))).eval()
    with pytest.raises(ValueError, match=r"export_onnx: '1.0' \(Doubling\) has no faithful plain-operation form: its "
                                         r"export twin differs from it by"):
        export_onnx(model, x, tmp_path / "m.onnx")
    model = nn.Sequential(nn.Conv1d(5, 5, 1), Own(5, track_running_stats=False)).eval()
    with pytest.raises(ValueError, match=r"export_onnx: '1' \(Own\) normalizes with batch statistics at inference"):
        export_onnx(model, x, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_kind_tool_error_names_the_cause_export_path(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"export_onnx: cannot write .*m.onnx.*the folder .*nowhere.* does not exist"):
        export_onnx(model, torch.randn(5, 3), tmp_path / "nowhere" / "m.onnx")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
