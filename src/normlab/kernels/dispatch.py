"""Which path a call takes: the numba kernels ("fast") or torch's own operators ("native").

The setting, strongest first: :func:`set_backend` / the :func:`backend` context manager, then the environment
variable ``NORMLAB_KERNELS`` (read at each call), then ``"auto"``.

* ``"native"``: always torch's operators (the code in :mod:`normlab._stats`).
* ``"fast"``: the kernels for every tensor they support (CPU, float32/float64, non-empty, numba installed);
  anything else (GPU tensors, half types) still takes the native path, since no kernel exists for it; so does
  TorchScript tracing / ONNX export (``torch.compile``, ``torch.export`` and fx do see the custom ops).
* ``"auto"``: ``"fast"`` where it wins: as ``"fast"``, and only for tensors of at least the size that
  :data:`AUTO_TABLE` gives for the tensor's layout (:func:`layout_of`: channel-first, channels-last, or rows (N, C));
  below it, calling into numba costs more than torch's whole kernel (crossovers measured per layout by
  ``benchmarks/crossover.py``); a training forward that no backward can follow (:func:`backward_follows`: grad
  mode off, or nothing requires a gradient) decides from :data:`AUTO_TABLE_FORWARD_ONLY` instead, where the
  channels-last and (N, C) kernels never win (``benchmarks/cl_forward_passes.py``); normalization with fixed
  statistics (eval mode) stays on torch's fused operator, which already runs at copy speed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch
from torch import Tensor

BACKENDS = ("auto", "fast", "native")
ENV_VAR = "NORMLAB_KERNELS"
#: Smallest tensor (values) the "auto" setting sends to the training kernels (channel-first layouts). Measured with
#: ``python benchmarks/crossover.py --layouts channel_first`` (training forward+backward, kernels vs torch's operator,
#: interleaved) over five channel x spatial shapes (64x8x8, 32x16x16, 16x32x32, 64x14x14, 16x28x28: ResNet-20's
#: and the lab CNN's) on a quiet 2-core machine: at 2^18 values the kernels ran at 0.94x (64x8x8) to 1.19x torch's
#: operator, from 2^19 on at 1.20-1.87x in every shape (the layer itself, with its running statistics: 0.83-1.04x
#: at 2^18, 1.07-1.95x from 2^19, two runs). Short rows (8x8) cross over latest: the kernels pay a cost per row of
#: the spatial plane, and ~0.14 ms of Python per forward+backward. (It was 2^18, measured on 14x14 and 28x28 only.)
AUTO_MIN_NUMEL = 1 << 19
#: The same for tensors whose channel axis is innermost in memory (channels-last, (N, C), (N, L, C)): their kernels
#: take a statistics sweep and an apply sweep over row blocks rather than one fused pass per channel, and torch's
#: channels-last kernel is already efficient. Measured crossover between 6.4 M (32x64x56x56: the kernels 1.6x torch
#: in one quiet `normlab bench` run, 0.84x and 0.80x in two others, torch's own time moving 3.7-9.1 ms between runs)
#: and 12.8 M values (64x64x56x56: 2.1-2.9x torch in all three); earlier runs put 1.6 M at 0.8x.
AUTO_MIN_NUMEL_CHANNELS_LAST = 1 << 23
#: The same for 2-D (N, C) inputs (BatchNorm1d after a Linear layer). Their kernel is the channels-last one, and
#: torch's 2-D path is its channels-last kernel too, so the crossover is at least as high; an MLP's (256, 1024)
#: (0.26 M values) measured at 0.2x torch on the kernels (fwd+bwd, under load) while torch's operator through
#: normlab's native path runs the same aten operators as torch.nn.BatchNorm1d (profiled).
AUTO_MIN_NUMEL_ROWS = 1 << 22

#: Layouts of the channel axis (see :func:`layout_of`).
CHANNEL_FIRST, CHANNELS_LAST, ROWS = "channel_first", "channels_last", "rows"
#: The "auto" decision table: layout -> smallest tensor (values) sent to the training kernels (``None``: never).
#: Changing a crossover means changing this table (measured with ``python benchmarks/crossover.py`` on a quiet
#: machine: the smallest size of a geometric ladder from which the kernels are >= 5% faster than torch's operator
#: at every larger size, medians of interleaved rounds).
AUTO_TABLE: dict[str, int | None] = {
    CHANNEL_FIRST: AUTO_MIN_NUMEL,
    CHANNELS_LAST: AUTO_MIN_NUMEL_CHANNELS_LAST,
    ROWS: AUTO_MIN_NUMEL_ROWS,
}
#: The "auto" decision for a training forward that no backward can follow (grad mode off, or nothing among the
#: input, weight and bias requires a gradient: inference in train mode, ``normlab bench``'s "fwd" column), per layout.
#: Without a backward the channels-last and (N, C) kernels lose their edge. Their forward is a statistics sweep then
#: an apply sweep over row blocks, and the statistics sweep is compute-bound (per-channel partial sums loaded and
#: stored for every value): measured with ``benchmarks/cl_forward_passes.py`` (1 thread, minima, in units of a
#: copy's 2 passes), 32x64x56x56 channels-last: the sweep alone 3.3 passes where one read is 1, the apply 2.4, the
#: kernels' forward 7.0, torch's whole training forward 4.6; (16384, 256) rows: 3.9, 1.9, 7.4 against torch's 4.0.
#: The training step gains 2-3x from the fused backward; the forward alone measured 0.65-0.75x torch at 32x64x56x56
#: and 64x64x56x56 channels-last on a quiet machine (0.2-0.5x at smaller sizes, rows included). Channel-first
#: tensors keep the kernels: one fused pass per channel (4.9 passes against torch's 18.6 at 32x64x56x56), 2.6-4.5x
#: torch's forward at those sizes.
AUTO_TABLE_FORWARD_ONLY: dict[str, int | None] = {
    CHANNEL_FIRST: AUTO_MIN_NUMEL,
    CHANNELS_LAST: None,
    ROWS: None,
}
SUPPORTED_DTYPES = (torch.float32, torch.float64)

_override: str | None = None
_numba_available: bool | None = None
# The environment variable is read at each call (tests and users may change it between calls), with the public
# os.environ.get (~0.6 us); parsing it is cached on its raw value, so a call costs that lookup, not a
# strip/lower/check (this runs on every layer call).
_env_raw: str | bytes | None = None
_env_value: str = "auto"


def _check(name: object, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source}: expected one of {', '.join(BACKENDS)}, got {name!r}")
    return str(name)


def numba_available() -> bool:
    """Whether numba is installed (a dependency where it ships wheels); without it every call takes the native path."""
    global _numba_available
    if _numba_available is None:
        _numba_available = importlib.util.find_spec("numba") is not None
    return _numba_available


def _numba_missing_hint() -> str:
    """How to get numba back: it is a plain dependency where it ships wheels, so missing means removed or skipped."""
    import platform
    import sys

    return (f"normlab depends on numba where numba ships wheels; on {sys.platform} {platform.machine()} (Python "
            f"{platform.python_version()}) `pip install numba` installs it if a wheel or a compiler is available "
            f"(`normlab bench` says why the kernels are off)")


def get_backend() -> str:
    """The current setting: ``"auto"``, ``"fast"`` or ``"native"``."""
    global _env_raw, _env_value
    if _override is not None:
        return _override
    raw = os.environ.get(ENV_VAR)  # (os.environ's private dict would save ~0.4 us; not ours to read)
    if raw != _env_raw:  # parsed only when it changed
        value = "auto" if raw is None else (raw.strip().lower() or "auto")
        _env_value = _check(value, f"environment variable {ENV_VAR}")
        _env_raw = raw
    return _env_value


def set_backend(name: str | None) -> None:
    """Force ``"fast"`` or ``"native"`` (or ``"auto"``) for this process; ``None`` returns to the env variable."""
    global _override
    if name is None:
        _override = None
        return
    name = _check(name, "normlab.kernels.set_backend")
    if name == "fast" and not numba_available():
        raise RuntimeError(f"normlab.kernels.set_backend('fast'): the kernels need numba, which is not installed here; "
                           f"{_numba_missing_hint()}")
    _override = name


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """``with backend("native"): ...`` — the setting inside the block, the previous one restored after it."""
    global _override
    previous = _override
    set_backend(name)
    try:
        yield
    finally:
        _override = previous


_PLAIN_TYPES = (Tensor, torch.nn.Parameter)
_is_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_functorch_level = torch._C._functorch.maybe_current_level
_is_compiling = torch.compiler.is_compiling  # (one attribute lookup less per call; torch.compile sees the function)


def plain(x: Tensor) -> bool:
    """Whether ``x`` is an ordinary tensor over its own storage, outside any torch.func transform: not a tensor
    subclass, not wrapped, and no vmap/grad/jacrev active (inside one, the parameters or statistics may be wrapped
    even when ``x`` is not; wrapped tensors have no storage, so neither NumPy nor a data pointer can read them).
    Otherwise the call takes the pure-torch path. Under torch.compile the graph sees the ops instead."""
    if _is_compiling():
        return True
    return type(x) in _PLAIN_TYPES and _functorch_level() is None and not _is_functorch_wrapped(x)


def supported(x: Tensor) -> bool:
    """Whether a kernel exists for ``x``: an ordinary CPU tensor (see :func:`plain`), float32/float64, rank >= 2,
    not empty, numba installed."""
    return (
        plain(x)
        and x.device.type == "cpu"
        and x.dtype in SUPPORTED_DTYPES
        and x.ndim >= 2
        and x.numel() > 0
        and numba_available()
    )


def layout_of(x: Tensor, axis: int | None) -> str:
    """The row of :data:`AUTO_TABLE` for ``x`` with channel ``axis``: ``"rows"`` for a 2-D (N, C) tensor,
    ``"channels_last"`` when the channel axis is innermost in memory (NHWC/NDHWC strides, (N, L, C) with
    ``axis=-1``), else ``"channel_first"`` (also when the axis is unknown)."""
    if axis is None or x.ndim < 2:
        return CHANNEL_FIRST
    if x.ndim == 2:
        return ROWS
    if x.stride(axis) == 1 and x.shape[axis] > 1:
        return CHANNELS_LAST
    return CHANNEL_FIRST


def auto_min_numel(x: Tensor, axis: int | None, *, backward: bool = True) -> int | None:
    """The size from which "auto" sends ``x`` to the kernels (``None``: never): from :data:`AUTO_TABLE`, or from
    :data:`AUTO_TABLE_FORWARD_ONLY` for a training forward no backward can follow (``backward=False``)."""
    return (AUTO_TABLE if backward else AUTO_TABLE_FORWARD_ONLY)[layout_of(x, axis)]


def backward_follows(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> bool:
    """Whether a backward can follow a call on ``x`` with ``weight``/``bias``: grad mode is on and one of them
    requires a gradient (the ``backward`` argument of :func:`use_fast`)."""
    return torch.is_grad_enabled() and (
        x.requires_grad or (weight is not None and weight.requires_grad) or (bias is not None and bias.requires_grad)
    )


def use_fast_train(x: Tensor, axis: int, weight: Tensor | None, bias: Tensor | None) -> bool:
    """:func:`use_fast` for a training forward with ``weight`` and ``bias``: whether a backward can follow is read
    (:func:`backward_follows`) only when the size makes the decision tables matter (this runs on every layer call)."""
    name = get_backend()
    if name == "native" or (name == "auto" and x.numel() < _SMALLEST):
        return False
    return use_fast(x, axis, backward=backward_follows(x, weight, bias))


def _smallest() -> int:
    """The least size any row of the decision tables sends to the kernels (below it "auto" needs no layout)."""
    sizes = [v for t in (AUTO_TABLE, AUTO_TABLE_FORWARD_ONLY) for v in t.values() if v is not None]
    return min(sizes) if sizes else 1 << 62


_SMALLEST = _smallest()


def use_fast(x: Tensor, axis: int | None = None, *, backward: bool = True) -> bool:
    """Whether a call on ``x`` (channel ``axis``, if known) takes the kernels under the current setting.
    ``backward=False`` says that the call is a training forward no backward can follow (see
    :func:`backward_follows`): "auto" then decides from :data:`AUTO_TABLE_FORWARD_ONLY`."""
    name = get_backend()
    if name == "native" or (name == "auto" and x.numel() < _SMALLEST) or not supported(x):
        return False  # the size test first: it is the cheap and the usual reason to step aside
    if name == "auto":  # the table before the tracing checks: torch.onnx.is_in_onnx_export costs ~3 us a call
        least = auto_min_numel(x, axis, backward=backward)
        if least is None or x.numel() < least:
            return False
    # TorchScript tracing and the ONNX exporter need torch's standard operators (no ONNX symbol for ours)
    return not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())
