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

The variants of one model run in interleaved rounds (:func:`normlab.bench.harness.interleaved`), medians and
ratios from the same run. BN's share of the step comes from ``torch.profiler``: the time inside the norm modules'
forwards (a NormAct's includes its activation, a NormAddAct's also the residual add) plus the backward of the
autograd node that made each one's output (timed by hooks on that node), over the time of whole profiled steps.

What fusion could at most win is measured on the torch variant in the same profiled steps: the share of its step in
the BN modules plus what a fused layer also replaces, forward and backward: each ReLU/LeakyReLU applied to a BN's
output (module or function), each add taking a BN's output as an operand (the residual add; the lab's models have no
other) and the ReLU applied to that add's output. Those calls are found in the forward by a
``torch.overrides.TorchFunctionMode`` (public API) that watches relu/leaky_relu/add calls, and their backward by hooks
on the autograd node each one made, as for the BN modules. Not counted: the gradient accumulation where a block's
input feeds both branches (a fused block keeps it). ``free x`` = 1 / (1 - that share) is the speed-up over torch a
fused layer costing nothing would give.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..nn.act import NormAct, NormAddAct
from ..tools._common import is_batch_norm
from .harness import Timing, interleaved, with_torch_batchnorm

#: name -> (builder options, input shape, default batch)
MODELS: dict[str, tuple[str, dict, tuple[int, ...], int]] = {
    "cnn": ("cnn", {"channels": (16, 32)}, (1, 28, 28), 256),
    "resnet20": ("resnet", {"blocks_per_stage": 3, "widths": (16, 32, 64)}, (3, 32, 32), 128),
    "mlp": ("mlp", {"depth": 3, "width": 1024}, (784,), 256),
}
VARIANTS = ("torch", "normlab", "fused")
_RANGE = "normlab_bench::norm"
_RANGE_BACKWARD = "normlab_bench::norm_backward"
_RANGE_FOLLOW = "normlab_bench::act_add"
_RANGE_FOLLOW_BACKWARD = "normlab_bench::act_add_backward"
_STEP = "normlab_bench::step"


@dataclass
class ModelCase:
    """One model's step timings per variant, BN's share of each variant's step, what fusion fused."""

    name: str
    batch: int
    timings: dict[str, Timing]
    bn_share: dict[str, float] = field(default_factory=dict)
    #: per variant: share of the step in its norm layers plus the activations/residual adds that follow them
    fusable_share: dict[str, float] = field(default_factory=dict)
    fused_pairs: int = 0
    norms: int = 0
    residual_pairs: int = 0

    def ratio(self, a: str, b: str = "torch") -> float:
        """``b``'s median step over ``a``'s (> 1: ``a`` is faster)."""
        return self.timings[b].median / self.timings[a].median

    def free_speedup(self) -> float | None:
        """1 / (1 - share of the torch step in BN + activation + residual add): the speed-up over torch a fused layer
        costing nothing would give (``None`` when the step was not profiled)."""
        share = self.fusable_share.get("torch")
        if share is None:
            return None
        return 1 / (1 - share) if share < 1 else float("inf")

    def as_dict(self) -> dict:
        return {
            "model": self.name, "batch": self.batch, "timings": {k: t.as_dict() for k, t in self.timings.items()},
            "speedup_vs_torch": {k: self.ratio(k) for k in self.timings}, "bn_share": dict(self.bn_share),
            "bn_act_add_share": dict(self.fusable_share), "free_speedup": self.free_speedup(),
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


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def _norm_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose time counts as BN's: NormActs (norm and activation) and bare batch norms outside them."""
    inside = {id(m.norm) for m in model.modules() if isinstance(m, NormAct)}
    return [m for m in model.modules() if isinstance(m, NormAct) or (is_batch_norm(m) and id(m) not in inside)]


#: the calls a fused layer replaces after a BN: activations applied to a BN's output, adds taking one (as operand)
_ACTIVATIONS = frozenset({torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, nn.functional.relu,
                          nn.functional.relu_, nn.functional.leaky_relu, nn.functional.leaky_relu_})
_ADDS = frozenset({torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__radd__,
                   torch.Tensor.__iadd__})


class _AfterNorm(TorchFunctionMode):
    """Puts a profiler range around each activation of a norm layer's output, each add with a norm layer's output
    as an operand, and the activation of such an add's output; hooks the backward of the node each one made."""

    def __init__(self, norm_outputs: dict[int, torch.Tensor], on_node: Callable[[object, str], None],
                 in_norm: list) -> None:
        super().__init__()
        self.marked = norm_outputs  # id -> tensor: BN outputs and their adds' outputs (kept alive: ids stay unique)
        self.on_node = on_node
        self.in_norm = in_norm  # non-empty inside a norm module's forward, whose range already counts its calls

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from torch.autograd.profiler import record_function

        kwargs = kwargs or {}
        is_add = func in _ADDS
        if self.in_norm or not (is_add or func in _ACTIVATIONS) or not any(
                isinstance(a, torch.Tensor) and id(a) in self.marked for a in (*args, *kwargs.values())):
            return func(*args, **kwargs)
        with record_function(_RANGE_FOLLOW):
            out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            if is_add:  # the activation after the residual add is the fused layer's too
                self.marked[id(out)] = out
            if out.grad_fn is not None:
                self.on_node(out.grad_fn, _RANGE_FOLLOW_BACKWARD)
        return out


def profile_shares(model: nn.Module, step: Callable[[], None], *, steps: int = 3) -> dict[str, float]:
    """Shares of a training step (torch.profiler, CPU time over whole steps), forward and backward:

    ``norm``: in the norm layers (see :func:`bn_share`); ``norm_act_add``: in them plus the ReLU/LeakyReLU applied to
    a norm layer's output, the adds taking one as an operand (the residual add) and the activation of such an add
    (what a fused layer replaces); ``act_add_calls``/``act_add_backward_calls``: how many of those forward calls and
    backward nodes were timed per step. Needs ``steps >= 1``.
    """
    return _profile(model, step, steps=steps, followers=True)


def bn_share(model: nn.Module, step: Callable[[], None], *, steps: int = 3) -> float:
    """Fraction of a training step spent in the norm layers, forward and backward (torch.profiler, CPU time).

    Forward: a profiler range around each norm module's call (module forward hooks). Backward: a range around the
    backward of the autograd node that made each norm module's output (``torch.autograd.graph.Node`` pre-hook and
    hook, registered on ``output.grad_fn`` during the forward), so exactly that node is counted. (Matching backward
    events to the forward range by autograd sequence number miscounts: operators that create no node report the
    *next* node's number, which can be the following convolution's.)
    """
    return _profile(model, step, steps=steps, followers=False)["norm"]


def _profile(model: nn.Module, step: Callable[[], None], *, steps: int, followers: bool) -> dict[str, float]:
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    if steps < 1:
        raise ValueError(f"normlab bench --models: profile steps must be >= 1, got {steps}")
    open_ranges: list = []
    open_backward: list = []
    norm_outputs: dict[int, torch.Tensor] = {}

    def enter(module, args):
        rf = record_function(_RANGE)
        rf.__enter__()
        open_ranges.append(rf)

    def on_node(node, name: str) -> None:
        def backward_enter(grad_outputs):
            rf = record_function(name)
            rf.__enter__()
            open_backward.append(rf)

        def backward_leave(grad_inputs, grad_outputs):
            if open_backward:
                open_backward.pop().__exit__(None, None, None)

        node.register_prehook(backward_enter)
        node.register_hook(backward_leave)

    def leave(module, args, output):
        open_ranges.pop().__exit__(None, None, None)
        if isinstance(output, torch.Tensor):
            if followers and not isinstance(module, NormAct):  # a NormAct's output is past its activation already
                norm_outputs[id(output)] = output
            if output.grad_fn is not None:
                on_node(output.grad_fn, _RANGE_BACKWARD)

    mode = _AfterNorm(norm_outputs, on_node, open_ranges)
    active: list[_AfterNorm] = []

    def forward_starts(module, args):  # the mode watches the model's forward only (not the loss or the optimizer)
        norm_outputs.clear()  # a new step: the last one's tensors are gone (and their ids may come back)
        mode.__enter__()
        active.append(mode)

    def forward_ends(module, args, output):
        if active:
            active.pop().__exit__(None, None, None)

    handles = []
    for m in _norm_modules(model):
        handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    if followers:
        handles += [model.register_forward_pre_hook(forward_starts), model.register_forward_hook(forward_ends)]
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                with record_function(_STEP):
                    step()
    finally:
        while active:  # the forward raised between its hooks
            active.pop().__exit__(None, None, None)
        for h in handles:
            h.remove()
        norm_outputs.clear()
    events = prof.events()

    def cpu(*names: str) -> float:
        return sum(ev.cpu_time_total for ev in events if ev.name in names)

    total = cpu(_STEP)
    norm = cpu(_RANGE, _RANGE_BACKWARD)
    out = {"norm": norm / total if total > 0 else float("nan")}
    if followers:
        out["norm_act_add"] = (norm + cpu(_RANGE_FOLLOW, _RANGE_FOLLOW_BACKWARD)) / total if total > 0 else float("nan")
        out["act_add_calls"] = sum(ev.name == _RANGE_FOLLOW for ev in events) / steps
        out["act_add_backward_calls"] = sum(ev.name == _RANGE_FOLLOW_BACKWARD for ev in events) / steps
    return out


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
        timings = interleaved(steps, reps=reps, warmup=warmup)
        fused = models["fused"]
        case = ModelCase(name, bs, timings, fused_pairs=sum(isinstance(m, NormAct) for m in fused.modules()),
                         norms=sum(is_batch_norm(m) for m in models["torch"].modules()),
                         residual_pairs=sum(isinstance(m, NormAddAct) for m in fused.modules()))
        if profile_steps:
            shares = {v: profile_shares(models[v], steps[v], steps=profile_steps) for v in VARIANTS}
            case.bn_share = {v: s["norm"] for v, s in shares.items()}
            case.fusable_share = {v: s["norm_act_add"] for v, s in shares.items()}
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
        "'BN+act+add % torch' = share of the torch-BN step, forward and backward, in its BN modules, the ReLU or",
        "LeakyReLU applied to a BN's output, the adds taking a BN's output (residual add) and the ReLU after such an",
        "add (torch.profiler); 'free x' = 1 / (1 - that share): the speed-up over torch of a fused layer that costs 0",
    ]
    head = (f"{'model':<10}{'batch':>6}{'fused':>12}" + "".join(f"{v:>10}" for v in VARIANTS)
            + f"{'normlab x':>11}{'fused x':>9}" + "".join(f"{'BN% ' + v:>14}" for v in VARIANTS)
            + f"{'BN+act+add % torch':>20}{'free x':>8}")
    lines += [head, "-" * len(head)]
    for c in cases:
        row = f"{c.name:<10}{c.batch:>6}{f'{c.fused_pairs}/{c.norms} r{c.residual_pairs}':>12}"
        row += "".join(f"{c.timings[v].median * 1e3:>10.2f}" for v in VARIANTS)
        row += f"{c.ratio('normlab'):>11.2f}{c.ratio('fused'):>9.2f}"
        row += "".join(f"{100 * c.bn_share[v]:>13.1f}%" if v in c.bn_share else f"{'':>14}" for v in VARIANTS)
        free = c.free_speedup()
        row += (f"{100 * c.fusable_share['torch']:>19.1f}%{free:>8.2f}" if free is not None else f"{'':>28}")
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m normlab.bench.models [--reps N] [--models cnn,resnet20,mlp] [--json PATH]``."""
    import json

    from .kernels import environment

    parser = argparse.ArgumentParser(prog="python -m normlab.bench.models", description=__doc__.splitlines()[0])
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
