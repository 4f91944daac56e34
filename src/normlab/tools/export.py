"""Export a (folded) model to ONNX and check it in onnxruntime against torch.

Needs the optional extra ``pip install 'normlab[export]'`` (onnx, onnxruntime); both are imported only when
:func:`export_onnx` runs. The export uses torch's TorchScript-based exporter (``dynamo=False``), which needs no
further package; the model is exported in eval mode.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .fold import fold_batchnorm, plan_fold

__all__ = ["ExportResult", "export_onnx"]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_abs_diff: float  # largest |onnxruntime - torch| over the outputs on the example input
    folded: int  # batch norms folded before export


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"export_onnx needs the optional package {module!r}: install it with pip install 'normlab[export]' "
            f"(onnx and onnxruntime)"
        ) from exc


def _flat_outputs(out) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat_outputs(o)]
    raise TypeError(f"export_onnx: the model must return a Tensor or a tuple/list of Tensors, got {type(out).__name__}")


def export_onnx(
    model: nn.Module,
    example_input: Tensor | tuple[Tensor, ...],
    path: str | os.PathLike,
    *,
    fold: bool = True,
    opset_version: int = 17,
    dynamic_batch: bool = True,
    check: bool = True,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> ExportResult:
    """Write ``model`` (eval mode; batch norms folded first when ``fold=True``) to ``path`` as ONNX.

    With ``check=True`` the file is validated by ``onnx.checker`` and run in onnxruntime on ``example_input``; its
    outputs must match torch's (the unfolded eval-mode model's) within ``atol + rtol * |torch|`` elementwise, else
    ``ValueError`` says by how much they differ. ``dynamic_batch`` leaves the first axis of inputs and outputs free.
    ``model`` itself is not changed (folding works on a copy; the training flag is restored).
    """
    onnx = _require("onnx")
    ort = _require("onnxruntime")
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx: expected a torch.nn.Module, got {type(model).__name__}")
    inputs = (example_input,) if isinstance(example_input, Tensor) else tuple(example_input)
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError("export_onnx: example_input must be a Tensor or a non-empty tuple of Tensors")
    path = Path(path)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = _flat_outputs(model(*inputs))
        folded = len(plan_fold(model).folded) if fold else 0
        exported = model
        if folded:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # norms that cannot fold are exported as they are
                exported = fold_batchnorm(model)
        input_names = [f"input{i}" for i in range(len(inputs))]
        output_names = [f"output{i}" for i in range(len(reference))]
        axes = {n: {0: "batch"} for n in input_names + output_names} if dynamic_batch else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter announces its successor
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks become constants: intended
            torch.onnx.export(
                exported, inputs, str(path), dynamo=False, opset_version=opset_version,
                input_names=input_names, output_names=output_names, dynamic_axes=axes,
            )
    finally:
        model.train(was_training)
    max_diff = float("nan")
    if check:
        onnx.checker.check_model(onnx.load(str(path)))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {n: t.detach().cpu().numpy() for n, t in zip(input_names, inputs)}
        got = session.run(output_names, feeds)
        max_diff = 0.0
        for name, want, have in zip(output_names, reference, got):
            want = want.detach().cpu()
            have = torch.from_numpy(have).to(want.dtype)
            if have.shape != want.shape:
                raise ValueError(
                    f"export_onnx: {name} has shape {tuple(have.shape)} in onnxruntime, {tuple(want.shape)} in torch"
                )
            diff = (have - want).abs()
            max_diff = max(max_diff, float(diff.max()) if diff.numel() else 0.0)
            if not bool((diff <= atol + rtol * want.abs()).all()):
                raise ValueError(
                    f"export_onnx: onnxruntime's {name} differs from torch's by up to {float(diff.max()):.3g} "
                    f"(allowed: {atol} + {rtol} * |torch|); the file {path} may not be faithful"
                )
    return ExportResult(path=path, max_abs_diff=max_diff, folded=folded)
