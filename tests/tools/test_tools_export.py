"""normlab.tools.export_onnx: a folded model in onnxruntime equals torch within 1e-5; clear error without the extra."""

import sys

import numpy as np
import pytest
import torch
from torch import nn

from normlab import nn as nlnn
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
