"""The BatchNorm kernel benchmark behind ``normlab bench`` and ``benchmarks/bench_kernels.py``.

For each case of the grid (NCHW, channels-last, 2-D; float32, and float64 for the names ending in ``f64``) it times
a training-mode forward and a forward+backward of:

* ``normlab``        — :func:`normlab.functional.batch_norm` as dispatched (``auto``: what users get);
* ``normlab-fast``   — the same, forced onto the numba kernels;
* ``normlab-native`` — the same, forced onto torch operators (:mod:`normlab._stats`);
* ``torch``          — :func:`torch.nn.functional.batch_norm` (eager);
* ``composite``      — a straightforward autograd implementation (var_mean, subtract, scale, shift);
* ``compile``        — ``torch.compile`` of the torch call (optional: ~tens of seconds of compilation per shape);
* ``ghost4``/``masked``/``renorm`` — normlab's ghost batch norm (4 virtual batches), masked batch norm (10% of
  positions padded) and batch renormalization on the fused kernel, for the "variants within 1.2x of BN" target;

and a copy of the same tensor (``copy_`` into a preallocated one) for the memory roofline. The roofline is a property
of the machine, so it is measured as STREAM measures bandwidth: the best (fastest) copy of that shape over every round
of both modes, shown as a rate (a copy moves 2 x numel x itemsize bytes). A copy is 2 tensor passes, so the
forward's roofline (read x, write y) is one best copy and the training step's (also read dy and x, write dx) 2.5.
The best copy is the true limit but can move with a shared host between runs (at 64x64x56x56: 40-64 GB/s on one
2-core machine, 26.1-26.5 GB/s on another), so a second figure divides by the median copy of the row's own interleaved
rounds instead (``/roofm``): a ratio measured under the same load, which flatters the kernels by as much as those
rounds ran below the best rate. It was steadier than ``/roof`` only where the best copy moved (first machine,
64x64x56x56 fwd+bwd: 1.48-1.55 over three runs where ``/roof`` went 1.75-2.85); where the copy held (second machine)
both moved with the kernels' own time, and at small shapes both move alike.

All running-statistics updates are included (the torch call gets running buffers too). Ratios are medians of
the same interleaved rounds (see :mod:`.harness`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import functional as F
from .. import kernels
from ..kernels import BUFFER_CACHE_ENV_VAR
from .harness import Timing, interleaved, page_faults, with_torch_batchnorm

#: (name, shape, layout, dtype): float32 everywhere, float64 on NCHW large and small, channels-last and (N, C), the
#: dispatch's float64 promise (within 5% of torch at every shape and layout, float32 and float64)
GRID: list[tuple[str, tuple[int, ...], str, torch.dtype]] = [
    ("32x64x56x56", (32, 64, 56, 56), "nchw", torch.float32),
    ("64x64x56x56", (64, 64, 56, 56), "nchw", torch.float32),
    ("32x256x14x14", (32, 256, 14, 14), "nchw", torch.float32),
    ("8x512x7x7", (8, 512, 7, 7), "nchw", torch.float32),
    ("32x64x56x56 CL", (32, 64, 56, 56), "channels_last", torch.float32),
    ("64x64x56x56 CL", (64, 64, 56, 56), "channels_last", torch.float32),
    ("32x256x14x14 CL", (32, 256, 14, 14), "channels_last", torch.float32),
    ("8x512x7x7 CL", (8, 512, 7, 7), "channels_last", torch.float32),
    ("256x128", (256, 128), "nchw", torch.float32),
    ("32x128", (32, 128), "nchw", torch.float32),
    ("32x64x56x56 f64", (32, 64, 56, 56), "nchw", torch.float64),
    ("32x256x14x14 f64", (32, 256, 14, 14), "nchw", torch.float64),
    ("8x512x7x7 CL f64", (8, 512, 7, 7), "channels_last", torch.float64),
    ("256x128 f64", (256, 128), "nchw", torch.float64),
]
#: NCHW on the kernels (large, and small in float64), channels-last and 2-D below their crossover
QUICK = ["32x64x56x56", "32x256x14x14", "32x64x56x56 CL", "256x128", "32x256x14x14 f64"]
MODES = ("fwd", "fwd+bwd")


#: Where numba ships wheels (numba 0.68.1; the markers of normlab's numba dependency in pyproject.toml).
NUMBA_WHEELS = {("linux", "x86_64"), ("linux", "aarch64"), ("darwin", "arm64"), ("win32", "AMD64"), ("win32", "ARM64")}


def kernels_off_reason() -> str | None:
    """Why ``normlab bench``'s "normlab" column cannot use the numba kernels here, or ``None`` when it can.

    (numba missing: where it ships wheels it is a dependency, so it was removed or the install skipped it; elsewhere
    normlab installs without it. ``NORMLAB_KERNELS=native`` / ``set_backend("native")`` turn the kernels off too.)
    """
    import sys

    if not kernels.numba_available():
        where = (sys.platform, platform.machine())
        py = platform.python_version()
        if where in NUMBA_WHEELS:
            return (f"kernels off: numba is not installed (normlab depends on it on {where[0]} {where[1]}; "
                    f"`pip install numba` brings it back); every layer uses torch's operators")
        return (f"kernels off: numba ships no wheel for {where[0]} {where[1]} (Python {py}), so normlab installs "
                f"without it and every layer uses torch's operators (`pip install 'normlab[kernels]'` tries to build "
                f"numba from source)")
    try:
        import numba  # noqa: F401 - installed but broken (e.g. a NumPy it does not support) is a reason too
    except Exception as exc:  # noqa: BLE001
        return f"kernels off: numba is installed but does not import ({type(exc).__name__}: {exc})"
    if kernels.get_backend() == "native":
        return "kernels off: the setting is 'native' (NORMLAB_KERNELS=native or normlab.kernels.set_backend)"
    return None


@dataclass
class Case:
    name: str
    shape: tuple[int, ...]
    layout: str
    mode: str
    timings: dict[str, Timing]
    dtype: str = "float32"
    #: seconds of the fastest copy of this shape over the rounds of every mode timed (:func:`share_best_copy`);
    #: ``None``: this case's own fastest copy
    best_copy: float | None = None

    def ratio(self, a: str, b: str) -> float | None:
        if a not in self.timings or b not in self.timings:
            return None
        return self.timings[b].median / self.timings[a].median  # > 1: a is faster than b

    def copy_seconds(self) -> float:
        """The fastest copy of this shape (s): over both modes once :func:`share_best_copy` ran, else this case's."""
        return self.best_copy if self.best_copy is not None else self.timings["copy"].min

    def copy_gbps(self) -> float:
        """The best copy rate (GB/s, 1e9 bytes): a copy reads and writes the tensor, 2 x numel x itemsize bytes."""
        numel = 1
        for n in self.shape:
            numel *= n
        return 2 * numel * getattr(torch, self.dtype).itemsize / self.copy_seconds() / 1e9

    def copies(self) -> float:
        """Copies a pass count equals: fwd 1 copy = 2 passes (read x, write y); fwd+bwd 2.5 = 5 (also dy, x, dx)."""
        return 1.0 if self.mode == "fwd" else 2.5

    def roofline(self) -> float:
        """Seconds of the memory roofline: passes x the fastest copy."""
        return self.copy_seconds() * self.copies()

    def over_roofline_same_rounds(self) -> float:
        """normlab's median / (passes x this row's median copy): both medians of the same interleaved rounds, so a
        slower or faster host moves both (steadier than the best-copy one only where the best copy moves between runs;
        below it by as much as the rounds' copies ran slower than the best)."""
        return self.timings["normlab"].median / (self.timings["copy"].median * self.copies())

    def as_dict(self) -> dict:
        return {
            "shape": list(self.shape), "layout": self.layout, "mode": self.mode, "dtype": self.dtype,
            "timings": {k: t.as_dict() for k, t in self.timings.items()},
            "speedup_vs_torch": self.ratio("normlab", "torch"),
            "fast_speedup_vs_torch": self.ratio("normlab-fast", "torch"),
            "copy_best_ms": self.copy_seconds() * 1e3, "copy_gbps": self.copy_gbps(),
            "roofline_ms": self.roofline() * 1e3,
            "normlab_over_roofline": self.timings["normlab"].median / self.roofline(),
            "normlab_over_roofline_same_rounds": self.over_roofline_same_rounds(),
        }

    def fast_ratio_text(self) -> str:
        r = self.ratio("normlab-fast", "torch")
        return f"{r:>8.2f}" if r is not None else f"{'-':>8}"


def share_best_copy(cases: list[Case]) -> None:
    """Give every case the fastest copy of its grid name over all its cases (both modes): the machine's best rate for
    that shape, as STREAM reports, so the roofline does not move with the load of one mode's rounds."""
    best: dict[str, float] = {}
    for c in cases:
        best[c.name] = min(best.get(c.name, float("inf")), c.timings["copy"].min)
    for c in cases:
        c.best_copy = best[c.name]


def _composite(x: torch.Tensor, w, b, eps: float) -> torch.Tensor:
    """The textbook training-mode forward, written with torch operators (autograd does the backward)."""
    dims = tuple(d for d in range(x.ndim) if d != 1)
    var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
    shape = [1] * x.ndim
    shape[1] = -1
    return (x - mean) * torch.rsqrt(var + eps) * w.reshape(shape) + b.reshape(shape)


@contextlib.contextmanager
def _buffer_cache(on: bool):
    """The kernels' output buffer cache off inside the block (to show what it contributes), as before after it."""
    if on:
        yield
        return
    previous = os.environ.get(BUFFER_CACHE_ENV_VAR)
    os.environ[BUFFER_CACHE_ENV_VAR] = "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[BUFFER_CACHE_ENV_VAR]
        else:
            os.environ[BUFFER_CACHE_ENV_VAR] = previous


def case_tensors(shape, layout: str, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The input x and output gradient dy of a case (seeded; ``dtype``, ``layout``), as the candidates see them."""
    torch.manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=fmt)
    dy = torch.randn(shape, dtype=dtype).contiguous(memory_format=fmt)
    return x, dy


def _candidates(shape, layout: str, mode: str, *, compile_: bool, variants: bool,
                dtype: torch.dtype = torch.float32) -> dict[str, Callable[[], object]]:
    C = shape[1]
    x, dy = case_tensors(shape, layout, dtype)
    w = torch.ones(C, dtype=dtype, requires_grad=True)
    b = torch.zeros(C, dtype=dtype, requires_grad=True)
    buffers = {name: (torch.zeros(C, dtype=dtype), torch.ones(C, dtype=dtype)) for name in ("nl", "torch", "compile")}
    backward = mode == "fwd+bwd"
    xg = x.detach().clone().requires_grad_(backward)
    params = (xg, w, b) if backward else ()

    def run(forward: Callable[[], torch.Tensor]) -> Callable[[], object]:
        if not backward:
            def fwd():
                with torch.no_grad():
                    return forward()
            return fwd
        return lambda: torch.autograd.grad(forward(), params, dy)

    def normlab_with(setting: str | None, cache: bool = True) -> Callable[[], torch.Tensor]:
        rm, rv = buffers["nl"]
        if setting is None:  # what users get: the default setting, nothing around the call (as torch's)
            return lambda: F.batch_norm(xg, rm, rv, w, b, training=True)

        def call():
            with kernels.backend(setting), _buffer_cache(cache):
                return F.batch_norm(xg, rm, rv, w, b, training=True)
        return call

    fast = kernels.numba_available()  # without numba there is no fast column (the table says why)
    out = {
        "normlab": run(normlab_with(None)),
        **({"normlab-fast": run(normlab_with("fast"))} if fast else {}),
        "normlab-native": run(normlab_with("native")),
        **({"fast-nocache": run(normlab_with("fast", cache=False))} if fast else {}),
        "torch": run(lambda: torch.nn.functional.batch_norm(xg, *buffers["torch"], w, b, training=True)),
        "composite": run(lambda: _composite(xg, w, b, 1e-5)),
    }
    if variants and fast:
        def ghost():
            with kernels.backend("fast"):
                return kernels.batch_norm_train(xg, w, b, 1e-5, groups=4)[0]

        mshape = list(shape)
        mshape[1] = 1
        mask = torch.rand(mshape, generator=torch.Generator().manual_seed(1)) > 0.1
        ref_mean, ref_std = torch.zeros(C, dtype=dtype), torch.ones(C, dtype=dtype)

        def masked():
            with kernels.backend("fast"):
                return kernels.batch_norm_train(xg, w, b, 1e-5, mask=mask)[0]

        def renorm():
            with kernels.backend("fast"):
                return kernels.batch_norm_train(xg, w, b, 1e-5, renorm=(ref_mean, ref_std, 3.0, 5.0))[0]

        out["ghost4"] = run(ghost)
        out["masked"] = run(masked)
        out["renorm"] = run(renorm)
    if compile_:
        compiled = torch.compile(lambda t: torch.nn.functional.batch_norm(t, *buffers["compile"], w, b, training=True))
        out["compile"] = run(lambda: compiled(xg))
    copy_dst = torch.empty_like(x)
    out["copy"] = lambda: copy_dst.copy_(x)
    return out


def run_grid(
    names: list[str] | None = None, *, reps: int = 15, modes=MODES, compile_: bool = False, variants: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[Case]:
    """Time every (shape, mode) of the grid; ``names`` picks cases by their grid name (ValueError for an unknown one).

    Each case's roofline is the fastest copy of its shape over the rounds of all ``modes`` (:func:`share_best_copy`).
    """
    table = {n: (shape, layout, dtype) for n, shape, layout, dtype in GRID}
    names = list(table) if names is None else names
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"normlab bench: unknown shape {unknown[0]!r}; expected one of {list(table)}")
    cases = []
    for name in names:
        shape, layout, dtype = table[name]
        for mode in modes:
            if progress:
                progress(f"{name} {mode}")
            cands = _candidates(shape, layout, mode, compile_=compile_, variants=variants and len(shape) == 4,
                                dtype=dtype)
            cases.append(Case(name, shape, layout, mode, interleaved(cands, reps=reps, warmup=2),
                              dtype=str(dtype).removeprefix("torch.")))
    share_best_copy(cases)
    return cases


VARIANTS = ["ghost4", "masked", "renorm"]
COLUMNS = ["normlab", "normlab-fast", "normlab-native", "fast-nocache", "torch", "composite", "compile", "ghost4",
           "masked", "renorm", "copy"]
HEADER_LINES = [
    "medians in ms, dtype per row; 'x torch' = torch / normlab (dispatched), 'fast x' = torch / normlab-fast,",
    "'copy' = median x.copy_ of this row's rounds; 'GB/s' = the shape's best copy rate: 2 x numel x itemsize bytes /",
    "the fastest copy over every round of both modes (a machine property: STREAM's best rate),",
    "'/roof' = normlab median / (passes x that fastest copy) (fwd: 1 copy = 2 passes; fwd+bwd: 2.5 copies = 5 passes),",
    "'/roofm' = the same over this row's median copy (same rounds, same load; below '/roof' as those copies ran slow),",
    "'<variant>/bn' = variant / normlab-fast (same kernels); 'fast-nocache' = normlab-fast without the buffer cache",
]


def format_table(cases: list[Case]) -> str:
    """Medians (ms) per candidate, the best copy rate, then torch/normlab (speed-up, > 1 is faster) and
    normlab/roofline."""
    cols = [c for c in COLUMNS if any(c in k.timings for k in cases)]
    variants = [v for v in VARIANTS if v in cols]
    head = (f"{'shape':<19}{'dtype':<9}{'mode':<9}" + "".join(f"{c:>15}" for c in cols)
            + f"{'GB/s':>8}{'x torch':>9}{'fast x':>8}{'/roof':>8}{'/roofm':>8}"
            + "".join(f"{v[:6] + '/bn':>10}" for v in variants))
    reason = kernels_off_reason()
    lines = [reason] if reason else []
    lines += HEADER_LINES + [head, "-" * len(head)]
    for k in cases:
        row = f"{k.name:<19}{k.dtype:<9}{k.mode:<9}"
        for c in cols:
            row += f"{k.timings[c].median * 1e3:>15.3f}" if c in k.timings else f"{'':>15}"
        row += f"{k.copy_gbps():>8.1f}{k.ratio('normlab', 'torch'):>9.2f}{k.fast_ratio_text()}"
        row += f" {k.timings['normlab'].median / k.roofline():>7.2f} {k.over_roofline_same_rounds():>7.2f}"
        for v in variants:
            r = k.ratio("normlab-fast", v)
            row += f"{r:>10.2f}" if r is not None else f"{'':>10}"
        lines.append(row)
    return "\n".join(lines)


def environment() -> dict:
    """What the figures depend on: versions, threads, load at the start."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    try:
        import numba

        numba_version, numba_threads = numba.__version__, numba.get_num_threads()
    except Exception:  # noqa: BLE001 - absent or broken: kernels_off_reason says which
        numba_version, numba_threads = "absent", 0
    return {
        "torch": torch.__version__, "numba": numba_version, "python": platform.python_version(),
        "kernels_off": kernels_off_reason(),
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "numba_threads": numba_threads,
        "loadavg_at_start": load, "kernels_auto_min_numel": kernels.AUTO_MIN_NUMEL, "backend": kernels.get_backend(),
    }


def write_json(cases: list[Case], path: str, env: dict, train_steps: list[dict] | None = None) -> None:
    data = {"environment": env, "cases": [c.as_dict() | {"name": c.name} for c in cases]}
    if train_steps is not None:
        data["train_steps"] = train_steps
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1)


def train_step_cases(batch_sizes=(64, 256), *, reps: int = 10, image=(1, 28, 28), channels=(16, 32)) -> list[dict]:
    """End to end: one SGD step (forward, loss, backward, update) of the lab's ``cnn`` model with normlab's BN
    as dispatched (``auto``), with normlab forced onto torch operators (``native``), and with
    ``torch.nn.BatchNorm2d`` in its place (``torch``), interleaved; medians in ms."""
    from ..lab.models import build_model

    out = []
    for bs in batch_sizes:
        torch.manual_seed(0)
        x = torch.randn((bs,) + tuple(image))
        target = torch.randint(0, 10, (bs,))
        steps = {}
        for setting in ("auto", "native", "torch"):
            model = build_model("cnn", image, 10, norm="bn", channels=tuple(channels))
            if setting == "torch":
                model = with_torch_batchnorm(model)
            opt = torch.optim.SGD(model.parameters(), lr=0.01)

            def step(model=model, opt=opt, setting=setting, x=x, target=target):
                with kernels.backend("auto" if setting == "torch" else setting):
                    opt.zero_grad(set_to_none=True)
                    torch.nn.functional.cross_entropy(model(x), target).backward()
                    opt.step()
            steps[setting] = step
        t = interleaved(steps, reps=reps, warmup=2)
        faults = {k: page_faults(f) for k, f in steps.items()}
        bn_values = bs * channels[0] * image[1] * image[2]
        out.append({"batch_size": bs, "first_bn_values": bn_values, "auto_ms": t["auto"].median * 1e3,
                    "native_ms": t["native"].median * 1e3, "torch_ms": t["torch"].median * 1e3,
                    "speedup": t["torch"].median / t["auto"].median, "page_faults_per_step": faults})
    return out


def format_train_steps(rows: list[dict]) -> str:
    lines = ["lab cnn training step (conv16-BN-ReLU-pool-conv32-BN-ReLU-pool, 1x28x28), medians in ms;",
             "'speed-up' = torch.nn.BatchNorm2d model / normlab model (auto); 'faults' = minor page faults per step",
             "(median of 3, getrusage) for auto / native / torch BN:",
             f"{'batch':>7}{'1st BN values':>15}{'auto':>10}{'native':>10}{'torch BN':>10}{'speed-up':>10}"
             f"{'faults':>26}"]
    for r in rows:
        f = r.get("page_faults_per_step") or {}
        counts = " / ".join("-" if f.get(k) is None else f"{f[k]:.0f}" for k in ("auto", "native", "torch"))
        lines.append(f"{r['batch_size']:>7}{r['first_bn_values']:>15}{r['auto_ms']:>10.2f}{r['native_ms']:>10.2f}"
                     f"{r['torch_ms']:>10.2f}{r['speedup']:>10.2f}{counts:>26}")
    return "\n".join(lines)
