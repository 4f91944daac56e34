"""End-to-end benchmark behind ``normlab bench --models``: one full training step (forward, loss, backward,
optimizer step) of whole models with torch's BN, normlab's BN, and normlab's BN after :func:`fuse_norm_act`.

Models (all from :mod:`normlab.lab.models`, the project's one model zoo):

* ``cnn``      — the lab CNN (conv16-BN-ReLU-pool-conv32-BN-ReLU-pool, 1x28x28), batch 256;
* ``resnet20`` — CIFAR ResNet-20 (He et al. 2016, Sec. 4.2: 3 stages of 3 basic blocks, widths 16/32/64; the lab's
  ``resnet`` with ``blocks_per_stage=3``, whose downsampling shortcuts are 1x1 conv + BN, option B), 3x32x32,
  batch 128;
* ``mlp``      — the lab MLP with BatchNorm1d (784 -> 3 x [Linear(1024) -> BN -> ReLU] -> 10), batch 256.

Variants, the same initial weights:

* ``torch``   — every BN is ``torch.nn.BatchNorm1d/2d`` (what a torch user has);
* ``normlab`` — that model after ``normlab.tools.convert_norm(model, "bn")`` (kernels as dispatched, ``auto``);
* ``fused``   — the normlab model after ``normlab.tools.fuse_norm_act``: BN -> ReLU pairs as NormAct, and the
  residual ends of the ResNet's blocks (BN -> add(shortcut) -> ReLU) as NormAddAct (19 of ResNet-20's 21 BNs; the
  two downsampling shortcuts' BNs feed the same add and stay apart).

The limit, measured the same way: ``free``, the fused model with every norm layer made free (a NormAct or bare BN
returns its input, a NormAddAct only adds the residual: what remains is everything a norm layer cannot remove),
trained with learning rate 0 (the optimizer's arithmetic per parameter is the same, and without normalization the
weights must not move; the norms' own weight and bias, a few values per channel, are gone from the update).
``free x`` = torch-BN step / that step is the speed-up over torch's BN of a norm layer costing nothing. The free
step runs with subnormal floats flushed to zero (:func:`without_subnormals`): without normalization ResNet-20's
logits reach ~850, the saturated softmax sends subnormal gradients back through the network, and subnormal arithmetic
made the free step about 2x slower (324-333 ms unflushed, 160-163 ms flushed, ``bench --models`` runs on 2026-12-02),
a cost of removing the norm layers that no normalized model pays (flushing moved the three real variants by 1-4%,
within noise).

The variants of one model run in interleaved rounds (:func:`normlab.bench.harness.interleaved`), medians and
ratios from the same run. BN's share of the step comes from ``torch.profiler``: the time inside the norm modules'
forwards (a NormAct's includes its activation, a NormAddAct's also the residual add) plus the backward of the
autograd node that made each one's output (timed by hooks on that node), over the time of whole profiled steps.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..nn.act import NormAct, NormAddAct
from ..tools._common import is_batch_norm
from .harness import Timing, interleaved, page_faults, with_torch_batchnorm

#: name -> (builder options, input shape, default batch)
MODELS: dict[str, tuple[str, dict, tuple[int, ...], int]] = {
    "cnn": ("cnn", {"channels": (16, 32)}, (1, 28, 28), 256),
    "resnet20": ("resnet", {"blocks_per_stage": 3, "widths": (16, 32, 64)}, (3, 32, 32), 128),
    "mlp": ("mlp", {"depth": 3, "width": 1024}, (784,), 256),
}
VARIANTS = ("torch", "normlab", "fused")
#: the limit: the fused model with free norm layers (see the module docstring); timed with the variants
FREE = "free"
_RANGE = "normlab_bench::norm"
_RANGE_BACKWARD = "normlab_bench::norm_backward"
_STEP = "normlab_bench::step"


@dataclass
class ModelCase:
    """One model's step timings per variant, BN's share of each variant's step, what fusion fused."""

    name: str
    batch: int
    timings: dict[str, Timing]
    bn_share: dict[str, float] = field(default_factory=dict)
    #: per variant (and ``free``): median minor page faults per step (None where the platform cannot count them)
    faults: dict[str, float | None] = field(default_factory=dict)
    fused_pairs: int = 0
    norms: int = 0
    residual_pairs: int = 0

    def ratio(self, a: str, b: str = "torch") -> float:
        """``b``'s median step over ``a``'s (> 1: ``a`` is faster)."""
        return self.timings[b].median / self.timings[a].median

    def as_dict(self) -> dict:
        return {
            "model": self.name, "batch": self.batch, "timings": {k: t.as_dict() for k, t in self.timings.items()},
            "speedup_vs_torch": {k: self.ratio(k) for k in self.timings}, "bn_share": dict(self.bn_share),
            "page_faults_per_step": dict(self.faults),
            "fused_pairs": self.fused_pairs, "residual_pairs": self.residual_pairs, "norms": self.norms,
        }


def build_variants(name: str, *, size: dict | None = None) -> dict[str, nn.Module]:
    """The three variants of model ``name`` with the same initial weights; ``size`` overrides builder options."""
    from ..lab.models import build_model
    from ..tools import convert_norm, fuse_norm_act

    builder, options, shape, _ = MODELS[name]
    torch.manual_seed(0)
    base = build_model(builder, shape, 10, norm="bn", **{**options, **(size or {})})
    torch_model = with_torch_batchnorm(base, nn.BatchNorm1d if len(shape) == 1 else nn.BatchNorm2d)
    normlab_model = convert_norm(torch_model, "bn")
    return {"torch": torch_model, "normlab": normlab_model, "fused": fuse_norm_act(normlab_model)}


class _FreeNorm(nn.Module):
    """A norm layer that costs nothing: the input (plus the residual, for a NormAddAct's place)."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return x if residual is None else x + residual


def free_norms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every NormAct/NormAddAct and bare batch norm replaced by :class:`_FreeNorm` (at every
    place it is held: a norm module shared by two attributes is replaced at both; a NormAct's inner norm goes with it).
    """
    import copy

    free = copy.deepcopy(model)
    if isinstance(free, NormAct) or is_batch_norm(free):
        return _FreeNorm()
    # every path, duplicates included (named_children/modules list a shared module once), outermost first
    replaced: list[str] = []
    for path, child in list(free.named_modules(remove_duplicate=False)):
        if not path or any(path.startswith(p + ".") for p in replaced):
            continue  # the root, or inside a norm already replaced
        if isinstance(child, NormAct) or is_batch_norm(child):
            parent, _, name = path.rpartition(".")
            setattr(free.get_submodule(parent), name, _FreeNorm())
            replaced.append(path)
    return free


def _flushing_subnormals() -> bool:
    """Whether this thread flushes subnormal floats to zero: under denormals-are-zero a subnormal input reads as 0
    (torch has no getter for :func:`torch.set_flush_denormal`)."""
    return torch.tensor(1e-39, dtype=torch.float32).mul(1.0).item() == 0.0


def without_subnormals(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` run with subnormal floats flushed to zero (:func:`torch.set_flush_denormal`), the caller's setting
    restored afterwards, also when ``step`` raises. For the ``free`` model only (see the module docstring)."""

    def run() -> None:
        was_flushing = _flushing_subnormals()
        torch.set_flush_denormal(True)
        try:
            step()
        finally:
            torch.set_flush_denormal(was_flushing)
    return run


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float = 0.01) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def _norm_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose time counts as BN's: NormActs (norm and activation) and bare batch norms outside them."""
    inside = {id(m.norm) for m in model.modules() if isinstance(m, NormAct)}
    return [m for m in model.modules() if isinstance(m, NormAct) or (is_batch_norm(m) and id(m) not in inside)]


def bn_share(model: nn.Module, step: Callable[[], None], *, steps: int = 3) -> float:
    """Fraction of a training step spent in the norm layers, forward and backward (torch.profiler, CPU time).

    Forward: a profiler range around each norm module's call (module forward hooks). Backward: a range around the
    backward of the autograd node that made each norm module's output (``torch.autograd.graph.Node`` pre-hook and
    hook, registered on ``output.grad_fn`` during the forward), so exactly that node is counted. (Matching backward
    events to the forward range by autograd sequence number miscounts: operators that create no node report the
    *next* node's number, which can be the following convolution's.)
    """
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    open_ranges: list = []
    open_backward: list = []

    def enter(module, args):
        rf = record_function(_RANGE)
        rf.__enter__()
        open_ranges.append(rf)

    def backward_enter(grad_outputs):
        rf = record_function(_RANGE_BACKWARD)
        rf.__enter__()
        open_backward.append(rf)

    def backward_leave(grad_inputs, grad_outputs):
        if open_backward:
            open_backward.pop().__exit__(None, None, None)

    def leave(module, args, output):
        open_ranges.pop().__exit__(None, None, None)
        node = output.grad_fn if isinstance(output, torch.Tensor) else None
        if node is not None:
            node.register_prehook(backward_enter)
            node.register_hook(backward_leave)

    handles = []
    for m in _norm_modules(model):
        handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                with record_function(_STEP):
                    step()
    finally:
        for h in handles:
            h.remove()
    events = prof.events()
    inside = sum(ev.cpu_time_total for ev in events if ev.name in (_RANGE, _RANGE_BACKWARD))
    total = sum(ev.cpu_time_total for ev in events if ev.name == _STEP)
    return inside / total if total > 0 else float("nan")


def _checked(names: list[str] | None, reps: int) -> list[str]:
    names = list(MODELS) if names is None else list(names)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"normlab bench --models: unknown model {unknown[0]!r}; expected one of {list(MODELS)}")
    if reps < 1:
        raise ValueError(f"normlab bench --models: reps must be >= 1, got {reps}")
    return names


def run_models_bench(
    names: list[str] | None = None, *, reps: int = 10, warmup: int = 2, batch: int | None = None,
    size: dict[str, dict] | None = None, profile_steps: int = 3, progress: Callable[[str], None] | None = None,
) -> list[ModelCase]:
    """Time a training step of each model of ``names`` (default: all of :data:`MODELS`) in its three variants.

    ``batch`` overrides every model's batch size and ``size[name]`` its builder options (small values make a smoke
    run); ``profile_steps=0`` skips the profiler. Raises ``ValueError`` for an unknown model name.
    """
    names = _checked(names, reps)
    cases = []
    for name in names:
        _, _, shape, default_batch = MODELS[name]
        bs = batch or default_batch
        if progress:
            progress(f"{name} (batch {bs})")
        models = build_variants(name, size=(size or {}).get(name))
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((bs,) + shape, generator=gen)
        y = torch.randint(0, 10, (bs,), generator=gen)
        steps = {v: _train_step(models[v], x, y) for v in VARIANTS}
        steps[FREE] = without_subnormals(_train_step(free_norms(models["fused"]), x, y, lr=0.0))
        timings = interleaved(steps, reps=reps, warmup=warmup)
        fused = models["fused"]
        case = ModelCase(name, bs, timings, fused_pairs=sum(isinstance(m, NormAct) for m in fused.modules()),
                         norms=sum(is_batch_norm(m) for m in models["torch"].modules()),
                         residual_pairs=sum(isinstance(m, NormAddAct) for m in fused.modules()))
        case.faults = {v: page_faults(f) for v, f in steps.items()}
        if profile_steps:
            case.bn_share = {v: bn_share(models[v], steps[v], steps=profile_steps) for v in VARIANTS}
        cases.append(case)
    return cases


def format_models_table(cases: list[ModelCase]) -> str:
    """Medians (ms) per variant, the speed-ups over torch's BN and BN's share of each step."""
    from .kernels import kernels_off_reason

    reason = kernels_off_reason()
    lines = [reason] if reason else []
    lines += [
        "training step (forward, loss, backward, SGD step), medians in ms; 'x torch' = torch-BN step / this step",
        "(> 1: faster); 'BN %' = share of the step in the norm layers (torch.profiler; 'fused': BN + activation)",
        "'fused' = BNs fused / BNs (r: of them with the residual add, BN -> add -> ReLU)",
        "'free x' = torch-BN step / the step of the fused model with free norm layers (each returns its input, plus",
        "the residual where it had one; learning rate 0; subnormals flushed): what a norm layer costing nothing would",
        "give (same rounds)",
        "'faults' = minor page faults per step (median of 3, getrusage): torch, normlab, fused, free",
    ]
    head = (f"{'model':<10}{'batch':>6}{'fused':>12}" + "".join(f"{v:>10}" for v in VARIANTS)
            + f"{'normlab x':>11}{'fused x':>9}{'free x':>8}" + "".join(f"{'BN% ' + v:>14}" for v in VARIANTS)
            + f"{'faults':>30}")
    lines += [head, "-" * len(head)]
    for c in cases:
        row = f"{c.name:<10}{c.batch:>6}{f'{c.fused_pairs}/{c.norms} r{c.residual_pairs}':>12}"
        row += "".join(f"{c.timings[v].median * 1e3:>10.2f}" for v in VARIANTS)
        row += f"{c.ratio('normlab'):>11.2f}{c.ratio('fused'):>9.2f}"
        row += f"{c.ratio(FREE):>8.2f}" if FREE in c.timings else f"{'':>8}"
        row += "".join(f"{100 * c.bn_share[v]:>13.1f}%" if v in c.bn_share else f"{'':>14}" for v in VARIANTS)
        counts = [c.faults.get(v) for v in (*VARIANTS, FREE)]
        row += f"{' / '.join('-' if n is None else f'{n:.0f}' for n in counts):>30}" if c.faults else ""
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m normlab.bench.models [--reps N] [--models cnn,resnet20,mlp] [--json PATH]``."""
    import json

    from .kernels import environment

    summary = " ".join(__doc__.split("\n\n")[0].split())  # the docstring's first paragraph, on one line
    parser = argparse.ArgumentParser(prog="python -m normlab.bench.models", description=summary)
    parser.add_argument("--reps", type=int, default=10, help="timed rounds per model (median reported)")
    parser.add_argument("--models", default="", help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--batch", type=int, default=None, help="override every model's batch size")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args(argv)
    try:
        names = _checked([s.strip() for s in args.models.split(",") if s.strip()] or None, args.reps)
        env = environment()
        print(f"normlab bench --models: torch {env['torch']}, numba {env['numba']}, {env['cpus']} CPUs, "
              f"threads torch={env['torch_threads']}, load {env['loadavg_at_start']}")
        cases = run_models_bench(names, reps=args.reps, batch=args.batch,
                                 progress=lambda s: print(f"  timing {s}", file=sys.stderr, flush=True))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("normlab bench: interrupted", file=sys.stderr)
        return 130
    print(format_models_table(cases))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "models": [c.as_dict() for c in cases]}, fh, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
