"""Export a (folded) model to ONNX and check it in onnxruntime against torch.

Needs the optional extra ``pip install 'normlab[export]'`` (onnx, onnxruntime); both are imported only when
:func:`export_onnx` runs. The export uses torch's TorchScript-based exporter (``dynamo=False``), which needs no
further package; the model is exported in eval mode.

Some norms have no operator the exporter can write, or compute something its operators do not: batch norms that
normalize with the *batch's* statistics at inference (``track_running_stats=False``, ``eval_stats="batch"``; the
fused training kernel behind them is ``aten::native_batch_norm``), Batch Layer Normalization, the feature-map
LayerNorm, RMSNorm (``aten::rms_norm`` before opset 23) and instance norms with running statistics. They are
exported through an *export twin*: the same formula written with plain tensor operations (mean, variance, rsqrt:
ReduceMean, Sub, Mul, ... in ONNX), so the graph computes the batch statistics itself. Each twin is checked in
torch against the layer it stands for on the layer's own input from the example, and the whole graph in
onnxruntime against the model. A layer no graph can reproduce (batch statistics pooled over processes; ghost
batches, whose statistics depend on the batch size, with ``dynamic_batch=True``) raises ``ValueError`` naming
its module path and the reason.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..nn.act import NormAct
from ..nn.alternatives import InstanceNorm as _NormlabInstanceNorm
from ..nn.alternatives import LayerNorm as _NormlabLayerNorm
from ..nn.alternatives import RMSNorm as _NormlabRMSNorm
from ..nn.batchnorm import BatchNorm, BatchNormBase
from ..nn.sequence import MaskedBatchNorm, TimeStepBatchNorm
from ..nn.variants import BatchLayerNorm, BatchRenorm, GhostBatchNorm, MovingAverageBatchNorm
from ._common import TORCH_BATCH_NORM, module_nonfinite, set_submodule
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


# -- export twins: the layers' eval-mode formulas in plain tensor operations --------------------------------------
def _compute(x: Tensor) -> Tensor:
    """Half types are normalized in float32, as the layers do."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _tensor(norm: nn.Module, name: str) -> Tensor | None:
    """``norm``'s parameter or buffer ``name`` itself, None where it has none (torch types a plain attribute read of
    a module as ``Tensor | Module``, whichever layer class it is)."""
    t = getattr(norm, name, None)
    return t if isinstance(t, Tensor) else None


def _per_channel(t: Tensor, ndim: int, c: int) -> Tensor:
    shape = [1] * ndim
    shape[c] = -1
    return t.reshape(shape)


def _affine(y: Tensor, weight: Tensor | None, bias: Tensor | None, c: int) -> Tensor:
    if weight is not None:
        y = y * _per_channel(weight, y.ndim, c).to(y.dtype)
    if bias is not None:
        y = y + _per_channel(bias, y.ndim, c).to(y.dtype)
    return y


class _BatchStatsTwin(nn.Module):
    """BatchNorm with the batch's statistics (mean and biased variance over every axis but the channel axis),
    optionally per virtual batch of ``chunk`` samples (ghost BN, in ``torch.split`` order) or under a mask
    (MaskedBatchNorm: only valid positions count, padded outputs are 0)."""

    weight: Tensor | None
    bias: Tensor | None

    def __init__(self, norm: BatchNormBase | nn.modules.batchnorm._BatchNorm, *, chunk: int | None = None,
                 masked: bool = False) -> None:
        super().__init__()
        self.axis = int(getattr(norm, "axis", 1))
        self.eps, self.chunk, self.masked = float(norm.eps), chunk, masked
        self.weight, self.bias = _tensor(norm, "weight"), _tensor(norm, "bias")

    def _normalize(self, x: Tensor, m: Tensor | None, c: int) -> Tensor:
        dims = [d for d in range(x.ndim) if d != c]
        if m is None:
            mean = x.mean(dim=dims, keepdim=True)
            var = (x - mean).pow(2).mean(dim=dims, keepdim=True)
        else:
            count = m.sum(dim=dims, keepdim=True)
            mean = (x * m).sum(dim=dims, keepdim=True) / count
            var = ((x - mean) * m).pow(2).sum(dim=dims, keepdim=True) / count
        return (x - mean) * torch.rsqrt(var + self.eps)

    def forward(self, x: Tensor, mask: Tensor | None = None, lengths: Tensor | None = None) -> Tensor:
        c = self.axis % x.ndim
        xc = _compute(x)
        if lengths is not None:  # MaskedBatchNorm's lengths: valid prefix along the first axis not 0 and not c
            t = [d for d in range(1, x.ndim) if d != c][0]
            positions = torch.arange(x.shape[t], device=x.device).reshape([-1 if d == t else 1 for d in range(x.ndim)])
            mask = positions < lengths.reshape([-1] + [1] * (x.ndim - 1))
        m = None
        if mask is not None:
            if mask.ndim == x.ndim - 1:
                mask = mask.unsqueeze(c)
            mask = mask.expand(x.shape)
            m = mask.to(xc.dtype)
            xc = torch.where(mask, xc, torch.zeros((), dtype=xc.dtype))
        if self.chunk is not None and x.shape[0] > self.chunk:
            ms = [None] * len(range(0, x.shape[0], self.chunk)) if m is None else torch.split(m, self.chunk, 0)
            y = torch.cat([self._normalize(part, mp, c) for part, mp in zip(torch.split(xc, self.chunk, 0), ms)], 0)
        else:
            y = self._normalize(xc, m, c)
        y = _affine(y, self.weight, self.bias, c)
        if mask is not None:
            y = torch.where(mask, y, torch.zeros((), dtype=y.dtype))
        return y.to(x.dtype)


class _RunningStatsTwin(nn.Module):
    """``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` along the channel axis (instance norms with
    running statistics, whose eval-mode operator the exporter refuses for a dynamic batch)."""

    weight: Tensor | None
    bias: Tensor | None
    running_mean: Tensor
    running_var: Tensor

    def __init__(self, norm: BatchNormBase | _NormlabInstanceNorm | nn.modules.batchnorm._NormBase) -> None:
        super().__init__()
        self.axis, self.eps = int(getattr(norm, "axis", 1)), float(norm.eps)
        self.weight, self.bias = _tensor(norm, "weight"), _tensor(norm, "bias")
        self.register_buffer("running_mean", norm.get_buffer("running_mean"))
        self.register_buffer("running_var", norm.get_buffer("running_var"))

    def forward(self, x: Tensor) -> Tensor:
        c = self.axis % x.ndim
        xc = _compute(x)
        mean, var = _per_channel(self.running_mean, x.ndim, c), _per_channel(self.running_var, x.ndim, c)
        y = (xc - mean.to(xc.dtype)) * torch.rsqrt(var.to(xc.dtype) + self.eps)
        return _affine(y, self.weight, self.bias, c).to(x.dtype)


class _SampleTwin(nn.Module):
    """LayerNorm / RMSNorm: statistics per sample over the trailing ``normalized_shape`` (torch's mode, elementwise
    affine) or, with a channel ``axis``, over every non-batch axis with a per-channel affine."""

    weight: Tensor | None
    bias: Tensor | None

    def __init__(self, norm: _NormlabLayerNorm | _NormlabRMSNorm | nn.RMSNorm, *, center: bool) -> None:
        super().__init__()
        self.axis = getattr(norm, "axis", None)
        self.k = len(norm.normalized_shape)
        self.eps, self.center = norm.eps, center
        self.weight, self.bias = _tensor(norm, "weight"), _tensor(norm, "bias")

    def forward(self, x: Tensor) -> Tensor:
        xc = _compute(x)
        dims = list(range(x.ndim - self.k, x.ndim)) if self.axis is None else list(range(1, x.ndim))
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        if self.center:
            mean = xc.mean(dim=dims, keepdim=True)
            y = (xc - mean) * torch.rsqrt((xc - mean).pow(2).mean(dim=dims, keepdim=True) + eps)
        else:
            y = xc * torch.rsqrt(xc.pow(2).mean(dim=dims, keepdim=True) + eps)
        if self.axis is not None:
            return _affine(y, self.weight, self.bias, self.axis % x.ndim).to(x.dtype)
        if self.weight is not None:
            y = y * self.weight.to(y.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype)


class _BatchLayerNormTwin(nn.Module):
    """Batch Layer Normalization in eval mode: BatchNorm's x_b (running or batch statistics) and the per-position
    x_f over the channels, mixed by the inverse training batch size (the batch at hand when there is none)."""

    def __init__(self, norm: BatchLayerNorm) -> None:
        super().__init__()
        self.axis, self.eps, self.num_features = int(norm.axis), float(norm.eps), norm.num_features
        self.weight, self.bias = norm.weight, norm.bias
        self.running = None if norm.uses_batch_stats() else _RunningStatsTwin(norm)
        if self.running is not None:
            self.running.weight = self.running.bias = None
        self.batch = _BatchStatsTwin(norm)
        self.batch.weight = self.batch.bias = None
        trained = int(norm.get_buffer("train_batch_size"))
        self.fixed_batch = norm.batch_size if norm.batch_size is not None else (trained if trained > 0 else None)
        self.offset = float(norm.MIX_OFFSET)
        self.scale = 1.0 / math.sqrt(norm.num_features) if norm.scale_by_sqrt_features else 1.0

    def forward(self, x: Tensor) -> Tensor:
        c = self.axis % x.ndim
        xc = _compute(x)
        x_b = self.batch(xc) if self.running is None else self.running(xc)
        mean = xc.mean(dim=c, keepdim=True)
        x_f = (xc - mean) * torch.rsqrt((xc - mean).pow(2).mean(dim=c, keepdim=True) + self.eps)
        inv: float | Tensor
        if self.fixed_batch is not None:
            inv = 1.0 / self.fixed_batch
        else:  # the batch at hand, as a graph value so that a dynamic batch axis stays right
            inv = 1.0 / xc.new_ones(x.shape[:1]).sum()
        w_f, w_b = (inv - self.offset) * self.scale, (1.0 - inv - self.offset) * self.scale
        return _affine(w_f * x_f + w_b * x_b, self.weight, self.bias, c).to(x.dtype)


class _NormActTwin(nn.Module):
    """``act(norm(x))`` of a NormAct in the in-place ABN mode, whose forward reaches into its BatchNorm."""

    def __init__(self, normact: NormAct, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.activation, self.negative_slope, self.alpha = normact.activation, normact.negative_slope, normact.alpha

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        y = self.norm(x, *args, **kwargs)
        if self.activation == "relu":
            return torch.relu(y)
        if self.activation == "leaky_relu":
            return nn.functional.leaky_relu(y, self.negative_slope)
        if self.activation == "elu":
            return nn.functional.elu(y, self.alpha)
        return y


def _twin(name: str, m: nn.Module, dynamic_batch: bool, batch: int) -> nn.Module | None:
    """The export twin of eval-mode module ``m`` registered as ``name``, ``None`` when it exports as it is, or
    ``ValueError`` naming the module when no ONNX graph can reproduce it."""
    where = f"export_onnx: {name or '<model>'!r} ({type(m).__name__})"
    if isinstance(m, NormAct):
        inner = _twin(f"{name}.norm" if name else "norm", m.norm, dynamic_batch, batch)
        return _NormActTwin(m, inner if inner is not None else m.norm) if m.inplace_abn else None
    if isinstance(m, BatchLayerNorm):
        if m.uses_batch_stats() and m.sync_statistics:
            raise ValueError(f"{where} pools its batch statistics over torch.distributed processes, which an ONNX "
                             f"graph cannot do; use running statistics (eval_stats='running') to export it")
        return _BatchLayerNormTwin(m)
    if isinstance(m, BatchNormBase):
        if isinstance(m, (MovingAverageBatchNorm, TimeStepBatchNorm)) or not m.uses_batch_stats():
            return None  # running statistics (MABN has no other inference), or already plain operations
        if m.sync_statistics:
            raise ValueError(f"{where} pools its batch statistics over torch.distributed processes at inference, "
                             f"which an ONNX graph cannot do; give it running statistics to export it")
        if isinstance(m, GhostBatchNorm):
            if dynamic_batch:
                raise ValueError(
                    f"{where} normalizes each virtual batch of {m.virtual_batch_size} samples with its own "
                    f"statistics, so its graph depends on the batch size: export with dynamic_batch=False (a graph "
                    f"for batches of {batch}), or give it running statistics"
                )
            return _BatchStatsTwin(m, chunk=m.virtual_batch_size)
        if isinstance(m, (BatchNorm, BatchRenorm, MaskedBatchNorm)):
            # BatchNorm(1d/2d/3d), MaskedBatchNorm and, at inference, BatchRenorm: the plain batch-statistics formula
            # (a subclass computing something else is caught by the twin's check against the layer)
            return _BatchStatsTwin(m, masked=isinstance(m, MaskedBatchNorm))
        raise ValueError(
            f"{where} normalizes with batch statistics at inference in a way export_onnx has no plain-operation "
            f"form for ({type(m).__qualname__}); give it running statistics to export it"
        )
    if isinstance(m, TORCH_BATCH_NORM) and m.running_mean is None and m.running_var is None:
        return _BatchStatsTwin(m)  # torch's eval mode without running statistics: batch statistics
    if isinstance(m, (_NormlabRMSNorm, nn.RMSNorm)):
        return _SampleTwin(m, center=False)
    if isinstance(m, _NormlabLayerNorm) and m.axis is not None:
        return _SampleTwin(m, center=True)
    if (isinstance(m, (_NormlabInstanceNorm, nn.modules.instancenorm._InstanceNorm))
            and getattr(m, "running_mean", None) is not None and m.track_running_stats):
        return _RunningStatsTwin(m)
    return None


def _twins(model: nn.Module, dynamic_batch: bool, batch: int) -> dict[str, nn.Module]:
    """Export twins by module path, outermost first (a twinned NormAct takes its norm along)."""
    found: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if any(name.startswith(f"{t}.") or t == "" for t in found):
            continue
        twin = _twin(name, m, dynamic_batch, batch)
        if twin is not None:
            found[name] = twin
    return found


def _record_calls(model: nn.Module, names, inputs) -> tuple[list[Tensor], dict]:
    """The model's outputs, and the first (args, kwargs, output) of each named module, in one forward."""
    calls: dict[str, tuple] = {}
    hooks = []
    modules = dict(model.named_modules())
    clone = lambda v: v.detach().clone() if isinstance(v, Tensor) else v  # noqa: E731 - in-place ABN overwrites
    for name in names:
        def before(mod, args, kwargs, name=name):
            if name not in calls:
                calls[name] = (tuple(clone(a) for a in args), {k: clone(v) for k, v in kwargs.items()}, None)

        def after(mod, args, kwargs, out, name=name):
            if calls[name][2] is None:
                calls[name] = calls[name][:2] + (out,)
        hooks.append(modules[name].register_forward_pre_hook(before, with_kwargs=True))
        hooks.append(modules[name].register_forward_hook(after, with_kwargs=True))
    try:
        with torch.no_grad():
            out = _flat_outputs(model(*(t.clone() for t in inputs)))
    except Exception as exc:
        raise ValueError(
            f"export_onnx: the eval-mode model failed on example_input: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        for h in hooks:
            h.remove()
    return out, calls


def _check_twin(name: str, module: nn.Module, twin: nn.Module, call) -> None:
    args, kwargs, want = call
    with torch.no_grad():
        got = twin(*args, **kwargs)
    if not isinstance(want, Tensor) or not isinstance(got, Tensor) or got.shape != want.shape:
        raise ValueError(f"export_onnx: the export twin of {name or '<model>'!r} ({type(module).__name__}) does not "
                         f"return the layer's output shape; please report this")
    tol = 1000 * torch.finfo(want.dtype).eps * (1 + float(want.abs().max()) if want.numel() else 1)
    diff = float((got - want).abs().max()) if want.numel() else 0.0
    if not diff <= tol:
        raise ValueError(
            f"export_onnx: {name or '<model>'!r} ({type(module).__name__}) has no faithful plain-operation form: "
            f"its export twin differs from it by {diff:.3g} on the example input (allowed {tol:.3g})"
        )



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
    ``model`` itself is not changed (folding works on a copy; the training flags are restored).

    Norms without an ONNX form of their own are exported through plain-operation twins (see the module docstring);
    what no graph can reproduce raises ``ValueError`` naming the module path. Weights or buffers holding NaN or inf
    raise ``ValueError`` naming them; folding checks each pair on ``example_input`` (see ``plan_fold``).
    """
    onnx = _require("onnx")
    ort = _require("onnxruntime")
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx: expected a torch.nn.Module, got {type(model).__name__}")
    inputs = (example_input,) if isinstance(example_input, Tensor) else tuple(example_input)
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError("export_onnx: example_input must be a Tensor or a non-empty tuple of Tensors")
    path = Path(path)
    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        why = "does not exist" if not folder.is_dir() else "is not writable"
        raise ValueError(f"export_onnx: cannot write {str(path)!r}: the folder {str(folder)!r} {why}; model unchanged")
    bad = module_nonfinite(model)
    if bad:
        raise ValueError(
            f"export_onnx: {'; '.join(bad)}: weights or buffers that are not finite give a graph whose outputs "
            f"cannot be checked (or trusted); fix or reset them before exporting"
        )
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        batch = inputs[0].shape[0] if inputs[0].ndim else 1
        names = list(_twins(model, dynamic_batch, batch))  # raises, naming the layer, for what no graph can do
        reference, calls = _record_calls(model, names, inputs)
        if check:
            for i, out in enumerate(reference):
                if out.is_floating_point() and not bool(torch.isfinite(out).all()):
                    raise ValueError(
                        f"export_onnx: torch's output{i} holds NaN or inf on the example input, so onnxruntime's "
                        f"cannot be checked against it; use a finite example input"
                    )
        folded = len(plan_fold(model, inputs).folded) if fold else 0
        exported = model
        if folded:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # norms that cannot fold are exported as they are
                exported = fold_batchnorm(model, example_input=inputs)
        elif names:
            exported = copy.deepcopy(model)
        for name in names:
            # built from the exported copy, so that a twin carries the weights the graph gets
            original, module = model.get_submodule(name), exported.get_submodule(name)
            twin = _twin(name, module, dynamic_batch, batch)
            if twin is None:
                continue  # e.g. a NormAct whose BatchNorm was folded
            if name in calls:
                _check_twin(name, original, twin, calls[name])
            if name:
                set_submodule(exported, name, twin)
            else:
                exported = twin
        input_names = [f"input{i}" for i in range(len(inputs))]
        output_names = [f"output{i}" for i in range(len(reference))]
        axes = {n: {0: "batch"} for n in input_names + output_names} if dynamic_batch else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter announces its successor
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks become constants: intended
            # instance statistics are what an instance norm without running statistics uses in eval mode too
            warnings.filterwarnings(
                "ignore", "ONNX export mode is set to TrainingMode.EVAL, but operator 'instance_norm'"
            )
            torch.onnx.export(
                exported, inputs, str(path), dynamo=False, opset_version=opset_version,
                input_names=input_names, output_names=output_names, dynamic_axes=axes,
            )
    finally:
        for m, flag in flags:
            m.training = flag
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
