"""The native path: batch norm on torch's own operators, for what the kernels do not take (small tensors, GPU
tensors, half types, an unsupported layout), kept as accurate as the kernels.

* :func:`torch_train` / :func:`torch_eval` — torch's fused CPU operator (``torch.native_batch_norm``, one operator as
  in ``torch.nn.BatchNorm2d``), made exact in float32 by shift invariance when |mean| / std is large
  (:data:`SHIFT_RATIO`).
* :func:`train` — the training step for any tensor: the fused operator where it serves, else the composite of
  :mod:`normlab._stats` (virtual batches, other devices and dtypes).
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import Tensor

from .. import _stats
from .dispatch import numba_available, plain


def activate(y: Tensor, act: int, slope: float = 0.0) -> Tensor:
    """The activation the kernels fuse (0 identity, 1 ReLU, 2 LeakyReLU with ``slope``), with torch's operator."""
    if act == 1:
        return torch.relu(y)
    if act == 2:
        return torch.nn.functional.leaky_relu(y, slope)
    return y


#: Largest |batch mean| / batch std (over channels) at which torch's float32 CPU batch_norm is used on the input as
#: it is. torch folds the mean into a shift (y = x * a + (b - mean * a)) and accumulates the channels-last / 2-D
#: statistics sequentially, so its error grows with that ratio (at mean 1e4, std 1: 9e-4 on y for NCHW, 4.4 for a
#: 32x4x64x64 channels-last input); above it, the call is redone on the input minus that mean (see torch_train).
SHIFT_RATIO = 8.0
#: The dtypes that need the check (float64's error at ratio R is ~R * 1e-16); tests add float64 to gradcheck the shift.
_SHIFT_DTYPES = (torch.float32,)


def torch_kernel_ok(x: Tensor) -> bool:
    """Whether torch's fused CPU batch_norm serves the native path for ``x`` (float32/64, CPU, rank >= 2, not empty,
    an ordinary tensor: the shift check reads the statistics' memory (by address, or through NumPy), which a
    torch.func-wrapped tensor or a tensor subclass does not have; those take the composite of _stats, plain torch
    operators)."""
    return x.dtype in _KERNEL_DTYPES and x.is_cpu and x.ndim >= 2 and x.numel() > 0 and plain(x)


_KERNEL_DTYPES = (torch.float32, torch.float64)
_is_compiling = torch.compiler.is_compiling
# torch.jit.is_tracing without its is_scripting test (two Python calls); only reached outside torch.compile, whose
# tracer stops at _is_compiling() first
_is_tracing = torch._C._is_tracing


def _channel_second(x: Tensor, c: int) -> Tensor:
    """``x`` with its channels on dim 1, as torch's operator wants: a contiguous channels-last-dim input (N, L, C)
    is viewed as (N * L, C), the operator's 2-D fast path; other axes are moved (a strided view)."""
    if c == 1:
        return x
    if c == x.ndim - 1 and x.is_contiguous():
        return x.reshape(-1, x.shape[c])
    return x.movedim(c, 1)


def _channel_back(y: Tensor, x: Tensor, c: int) -> Tensor:
    if c == 1:
        return y
    if c == x.ndim - 1 and x.is_contiguous():  # the (N * L, C) view of _channel_second
        return y.reshape(x.shape)
    return y.movedim(1, c)


def _exceeds(mean: Tensor, invstd: Tensor) -> bool:
    """max |mean * invstd| > SHIFT_RATIO over the channels, for the operator's statistics outputs (contiguous, no
    gradient): one numba call on their addresses (~0.2 us, :data:`_EXCEEDS_AT`) when the kernels are installed, else
    NumPy."""
    kernel = _exceeds_kernel(mean.dtype)
    if kernel is not None:
        return kernel(mean.data_ptr(), invstd.data_ptr(), mean.shape[0], SHIFT_RATIO)
    prod = np.multiply(mean.numpy(), invstd.numpy())
    return bool(np.abs(prod, out=prod).max() > SHIFT_RATIO)


#: dtype -> the numba check on addresses (``_numba.exceeds_ratio_at_*``), loaded on first use; empty without numba.
_EXCEEDS_AT: dict = {}
_exceeds_loaded = False


def _exceeds_kernel(dtype: torch.dtype):
    global _exceeds_loaded
    if not _exceeds_loaded:
        if numba_available():
            from ._numba import exceeds_ratio_at_f32, exceeds_ratio_at_f64  # from numba's on-disk cache, once

            _EXCEEDS_AT.update({torch.float32: exceeds_ratio_at_f32, torch.float64: exceeds_ratio_at_f64})
        _exceeds_loaded = True
    return _EXCEEDS_AT.get(dtype)


def torch_train(x: Tensor, weight, bias, eps: float, c: int, running: tuple | None, *, stats: bool = True):
    """Training-mode batch norm on torch's fused CPU operator (``torch.native_batch_norm``, the operator
    ``torch.nn.BatchNorm2d`` runs, with torch's own autograd node), kept accurate in float32 by shift invariance.

    Batch norm in training mode is invariant to a per-channel shift: BN(x - k) = BN(x) for any constant k, with
    the same Jacobian, so the gradient of BN(x - k) with k detached is the gradient of BN(x). torch's float32
    kernel is accurate when |mean| / std is small; when the first call shows a larger ratio (> SHIFT_RATIO), it
    is redone on x - k with k = that call's (detached) mean, whose own mean is then small, and the statistics are
    k + the shifted call's. ``running = (running_mean, running_var, momentum)`` (the input's dtype, unbiased
    running variance) are updated in place by the kernel itself (and corrected after a redo); else, with
    ``stats``, the statistics come back through zero buffers updated with momentum 1 (exact copies, the variance
    unbiased and computed by the kernel from centred values, not recovered from 1/sqrt(var + eps)).

    Derivatives: first-order gradients are torch's own backward operator (no Python on the way). torch's double
    backward treats the saved mean and inverse std as constants, so the third derivative of its output is wrong
    (measured: 0.97 where finite differences give 0.25): hooks on the operator's autograd node replace its
    gradients, when a graph of the backward is requested (``create_graph=True``), by those of the composite of
    differentiable operators (:mod:`normlab._stats`), exact at every order (see :func:`_exact_orders_hook`).

    Returns ``(y, mean, biased var)``; ``mean``/``var`` are None when ``running`` was updated or without ``stats``.
    """
    xm = x if c == 1 else _channel_second(x, c)
    dtype = x.dtype
    w = weight if weight is None or weight.dtype == dtype else weight.to(dtype)
    b = bias if bias is None or bias.dtype == dtype else bias.to(dtype)
    if running is not None:
        rm, rv, f = running
    elif stats:
        rm, rv, f = x.new_zeros(xm.shape[1]), x.new_zeros(xm.shape[1]), 1.0
    else:
        rm = rv = None
        f = 0.0
    y, mean1, invstd1 = torch.native_batch_norm(xm, w, b, rm, rv, True, f, eps)
    xs = xm
    graphing = _is_compiling() or _is_tracing()  # no data-dependent branch in a graph, no hook on its nodes
    if dtype in _SHIFT_DTYPES:
        kernel = _EXCEEDS_AT.get(dtype)  # (the common case inline: this runs on every small training step)
        if graphing or (
            kernel(mean1.data_ptr(), invstd1.data_ptr(), mean1.shape[0], SHIFT_RATIO) if kernel is not None
            else _exceeds(mean1, invstd1)
        ):
            y, xs, rm, rv = _shifted(xm, w, b, eps, mean1, invstd1, rm, rv, f, running is not None)
    if not graphing:  # (torch.compile does not trace grad_fn; its graph keeps torch's derivatives)
        node = y.grad_fn
        if node is not None:
            # a post hook on torch's node through the public Node.register_hook (~1 us of Python per call);
            # torch's private per-tensor hook dict would be cheaper but is another project's internal
            node.register_hook(_exact_orders_hook(xs, w, eps))
    if c != 1:
        y = _channel_back(y, x, c)
    if running is not None or not stats:
        return y, None, None
    n = xm.numel() // xm.shape[1]
    return y, rm, rv * ((n - 1) / n)  # not in place: the operator saved rv for its backward


def _shifted(xm: Tensor, w, b, eps: float, mean1: Tensor, invstd1: Tensor, rm, rv, f: float, running: bool):
    """The redo of :func:`torch_train` on ``xm - mean1``: ``(y, its input, running mean, running var)``, the running
    buffers moved to the shifted call's statistics (in place when ``running``, else the stats' zero buffers)."""
    C = xm.shape[1]
    shape = [1] * xm.ndim
    shape[1] = C
    xs = xm - mean1.reshape(shape)  # the operator's statistics are outputs without gradient (nothing to detach)
    if rm is None:
        return torch.native_batch_norm(xs, w, b, None, None, True, 0.0, eps)[0], xs, rm, rv
    rm2, rv2 = xm.new_zeros(C), xm.new_zeros(C)
    y = torch.native_batch_norm(xs, w, b, rm2, rv2, True, 1.0, eps)[0]
    with torch.no_grad():
        if not running:
            return y, xs, rm + rm2, rv2  # mean = k + the shifted mean; the variance is the shifted call's
        # the first call put momentum * (mean1, var1) into the buffers: move them to the shifted call's k + rm2 and
        # rv2 (var1, unbiased, recovered from invstd1 as the kernel computed it, to ~1e-7 * (var1 + eps): a
        # negligible error even where var << eps)
        n = xm.numel() // C
        var1 = (invstd1.double().pow(-2) - eps).mul_(n / max(n - 1, 1)).to(xm.dtype)
        rm.add_(rm2, alpha=f)
        rv.add_(rv2 - var1, alpha=f)
    return y, xs, rm, rv


def _composite_grads(x: Tensor, w, eps: float, grad_inputs: tuple, dy: Tensor) -> tuple:
    """:func:`double_backward_grads` of the composite for the node inputs (x, weight, bias) whose gradients exist.
    The bias needs no value: the output depends on it additively, so its gradient (the sum of ``dy``, as a graph)
    never reads it; a zero stand-in takes its place."""
    needs = tuple(g is not None for g in grad_inputs)
    b = x.new_zeros(x.shape[1]).requires_grad_() if needs[2] else None
    return double_backward_grads(lambda a, ww, bb: composite_train(a, ww, bb, eps, 1), (x, w, b), needs, dy)


def _exact_orders_hook(xs: Tensor, w, eps: float):
    """A post hook for the node of ``torch.native_batch_norm(xs, w, b, ...)`` (channels on dim 1), registered with
    the call: while a graph of the backward is built (``create_graph=True``: grad mode is on inside it), the node's
    gradients for its input, weight and bias are replaced by the composite's (:func:`composite_train`),
    differentiated as a graph, exact at every order; a backward without a graph keeps torch's.

    ``xs`` is held through a weak reference: the node saves it (so it is alive whenever the node can run) and a
    strong reference would keep every layer's input alive as long as the graph object, after the backward freed
    the node's saved tensors."""
    ref = weakref.ref(xs)

    def hook(grad_inputs: tuple, grad_outputs: tuple):
        if not torch.is_grad_enabled():
            return None
        x = ref()
        if x is None:  # the node saves its input: unreachable while the node can run
            raise RuntimeError("normlab batch_norm: the input of a training-mode batch norm was freed before its "
                               "double backward (create_graph=True)")
        return _composite_grads(x, w, eps, grad_inputs, grad_outputs[0])

    return hook


def composite_train(x: Tensor, weight, bias, eps: float, c: int) -> Tensor:
    """Training-mode batch norm from differentiable operators only (exact derivatives of every order)."""
    stats = _stats.moments(x, _stats.reduce_dims(x.ndim, c))
    return _stats.normalize(x, stats.mean, stats.var, weight, bias, eps, axis=c)


def double_backward_grads(forward, inputs: tuple, needs: tuple, dy: Tensor) -> tuple:
    """Gradients of ``forward(*inputs)`` against ``dy`` for the inputs flagged in ``needs``, as a graph (the
    backward of an autograd.Function asked for ``create_graph=True``): recomputed through differentiable ops.

    Each input enters the recomputation through a node of its own (a view): ``autograd.grad`` then gives the partial
    derivative per input. Asked for the saved tensors themselves, it would also follow the paths between inputs
    (statistics computed from ``x``, a residual that is ``x``) that the outer backward adds again, and count them
    twice (wrong at every order once a graph is requested)."""
    with torch.enable_grad():
        inputs = tuple(t.view_as(t) if isinstance(t, Tensor) and t.requires_grad else t for t in inputs)
        y = forward(*inputs)
        wanted = [t for t, n in zip(inputs, needs) if n and isinstance(t, Tensor) and t.requires_grad]
        grads = iter(torch.autograd.grad(y, wanted, dy, create_graph=True, allow_unused=True) if wanted else ())
    return tuple(
        next(grads) if n and isinstance(t, Tensor) and t.requires_grad else None for t, n in zip(inputs, needs)
    )


# Eval-mode verdicts of _eval_needs_shift, per statistics tensor: a layer's running buffers do not change between
# eval calls, so the check (two operators and a sync, ~25% of torch's whole call on a small tensor) runs once per
# change. Keyed by identity (a weak reference), storage and autograd version counter, which every in-place change
# through the tensor bumps. In-place edits through ``.data`` (its own counter) are not seen: a stale verdict then
# costs either one unneeded subtraction or the shift's extra accuracy (torch's kernel alone: ~0.9 ulp of the mean
# instead of 0.5), nothing more.
_EVAL_VERDICTS: dict[int, tuple] = {}
_EVAL_VERDICTS_MAX = 1024


def _eval_needs_shift(mean: Tensor, var: Tensor, eps: float) -> bool:
    """Whether mean^2 / (var + eps) > SHIFT_RATIO^2 for some channel (cached while the statistics are unchanged)."""
    key = (mean._version, mean.data_ptr(), var._version, var.data_ptr(), eps, SHIFT_RATIO)
    hit = _EVAL_VERDICTS.get(id(mean))
    if hit is not None and hit[0]() is mean and hit[1]() is var and hit[2] == key:
        return hit[3]
    shift = float(torch.addcmul(var, mean, mean, value=-1.0 / SHIFT_RATIO**2).amin()) < -eps
    if len(_EVAL_VERDICTS) >= _EVAL_VERDICTS_MAX:  # statistics that are temporaries: start over, stay small
        _EVAL_VERDICTS.clear()
    _EVAL_VERDICTS[id(mean)] = (weakref.ref(mean), weakref.ref(var), key, shift)
    return shift


def torch_eval(x: Tensor, mean: Tensor, var: Tensor, weight, bias, eps: float, c: int) -> Tensor:
    """Normalization with given statistics on torch's fused CPU operator (one operator for small tensors).

    torch computes ``x * a + (bias - mean * a)`` with ``a = weight / sqrt(var + eps)``: in float32 that loses
    about |mean| * a ulps, so above SHIFT_RATIO the mean is subtracted first (exactly, as x and mean are close)
    and the operator gets a zero mean.
    """
    xm = _channel_second(x, c)
    w = weight.to(x.dtype) if weight is not None and weight.dtype != x.dtype else weight
    b = bias.to(x.dtype) if bias is not None and bias.dtype != x.dtype else bias
    if x.dtype in _SHIFT_DTYPES and (
        torch.compiler.is_compiling() or _eval_needs_shift(mean, var, eps)  # no data-dependent branch in a graph
    ):
        shape = [1] * xm.ndim
        shape[1] = -1
        y = torch.native_batch_norm(xm - mean.reshape(shape), w, b, torch.zeros_like(mean), var, False, 0.0, eps)[0]
    else:
        y = torch.native_batch_norm(xm, w, b, mean, var, False, 0.0, eps)[0]
    return _channel_back(y, x, c)


def train(x: Tensor, weight, bias, eps: float, c: int, groups: int, act: int, slope: float = 0.0,
          residual: Tensor | None = None):
    """The same computation with torch's operators, for the native path: ``act(bn(x) [+ residual])``."""
    def finish(y: Tensor) -> Tensor:
        return activate(y if residual is None else y + residual, act, slope)

    if groups == 1 and torch_kernel_ok(x) and x.numel() > x.shape[c]:
        y, mean, var = torch_train(x, weight, bias, eps, c, None)
        return finish(y), mean, var
    if groups == 1:
        stats = _stats.moments(x, _stats.reduce_dims(x.ndim, c))
        y = _stats.normalize(x, stats.mean, stats.var, weight, bias, eps, axis=c)
        return finish(y), stats.mean.detach(), stats.var.detach()
    xg = x.reshape((groups, x.shape[0] // groups) + tuple(x.shape[1:]))
    stats = _stats.moments(xg, tuple(d for d in range(xg.ndim) if d not in (0, c + 1)), keepdim=True)
    w = _stats.channel_view(weight, xg.ndim, c + 1) if weight is not None else None
    scale = _stats.scale(stats.var, w, eps)
    y = (xg.to(stats.mean.dtype) - stats.mean) * scale
    if bias is not None:
        y = y + _stats.channel_view(bias.to(y.dtype), xg.ndim, c + 1)
    y = finish(y.reshape(x.shape).to(x.dtype))
    C = x.shape[c]
    return y, stats.mean.detach().reshape(groups, C), stats.var.detach().reshape(groups, C)


class _ExactOrders(torch.autograd.Function):
    """``fast(*inputs)`` forward and first-order backward (torch's own derivative, through a private graph), and
    ``composite(*inputs)`` (differentiable operators only) for the backward when a graph of it is requested."""

    @staticmethod
    def forward(ctx, fast, composite, *inputs):
        inner = tuple(t.detach().requires_grad_(t.requires_grad) if isinstance(t, Tensor) else t for t in inputs)
        with torch.enable_grad():
            y = fast(*inner)
        ctx.fast_graph = (y, inner)
        ctx.composite = composite
        ctx.save_for_backward(*(t if isinstance(t, Tensor) else None for t in inputs))
        ctx.kinds = tuple(isinstance(t, Tensor) for t in inputs)
        ctx.others = tuple(None if isinstance(t, Tensor) else t for t in inputs)
        return y.detach()

    @staticmethod
    def backward(ctx, dy):
        needs = ctx.needs_input_grad[2:]
        if torch.is_grad_enabled():  # create_graph=True: the composite, exact at every order
            saved = iter(ctx.saved_tensors)
            inputs = tuple(next(saved) if k else o for k, o in zip(ctx.kinds, ctx.others))
            grads = double_backward_grads(ctx.composite, inputs, needs, dy)
        else:
            y, inner = ctx.fast_graph
            wanted = [t for t, n in zip(inner, needs) if n and isinstance(t, Tensor) and t.requires_grad]
            # retain_graph: a second backward over a retained outer graph must find the private one too
            got = iter(torch.autograd.grad(y, wanted, dy, allow_unused=True, retain_graph=True))
            grads = tuple(next(got) if n and isinstance(t, Tensor) and t.requires_grad else None
                          for t, n in zip(inner, needs))
        return (None, None, *grads)


def exact_orders(fast, composite, *inputs) -> Tensor:
    """``fast(*inputs)`` (e.g. a torch native kernel whose double backward treats its saved statistics as
    constants, wrong from the third order on: layer_norm, instance_norm) with exact derivatives of every order:
    first-order gradients are ``fast``'s own; when a graph of the backward is requested (``create_graph=True``)
    the backward differentiates ``composite`` (the same function from differentiable operators). Without a
    gradient to compute, or while tracing/compiling, it is ``fast(*inputs)`` itself."""
    if (
        not torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling()
        or not any(isinstance(t, Tensor) and t.requires_grad for t in inputs)
        or not plain(inputs[0])  # under torch.func transforms: the composite (pure torch, exact)
    ):
        return fast(*inputs) if plain(inputs[0]) or not torch.is_grad_enabled() else composite(*inputs)
    return _ExactOrders.apply(fast, composite, *inputs)
