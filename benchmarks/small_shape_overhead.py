"""Where a small training step's time goes: normlab's BatchNorm layer against torch's, piece by piece (CPU, float32).

At small shapes "auto" already runs torch's own operator (``torch.native_batch_norm``), so what separates the two
layers is Python per call. This script times, in interleaved rounds of ``--calls`` calls each (medians, in us per
call), a training forward (grad enabled, as in a training step) of:

* ``operator``     ``torch.native_batch_norm`` alone, running buffers updated inside it (both layers' core);
* ``+ hook``       the same plus the post hook normlab registers on its autograd node (``Node.register_hook``:
                   exact derivatives of every order under ``create_graph=True``, where torch's double backward is
                   wrong at the third order);
* ``+ check``      the same plus normlab's float32 accuracy check (max |mean| / std, one numba call on the
                   statistics' addresses: above 8 the call is redone on shifted input);
* ``native path``  ``normlab.kernels.native.torch_train`` (operator, check, hook, argument handling);
* ``functional``   ``normlab.functional._batch_norm`` (the dispatch decision on top: backend, size, layout);
* ``normlab``      the layer, ``normlab.nn.BatchNorm1d/2d`` (input checks, parameters, the batch counter);
* ``torch``        ``torch.nn.BatchNorm1d/2d`` (its own Python: checks, counter, ``F.batch_norm``).

    python benchmarks/small_shape_overhead.py [--calls 300] [--rounds 15] [--shapes 32x128 "8x512x7x7 CL"]

It prints each figure and the differences, so the layer's gap to torch's reads as the sum of named pieces.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from normlab import functional as NF
from normlab import nn as nlnn
from normlab.kernels import native

SHAPES = ["32x128", "256x128", "8x512x7x7", "8x512x7x7 CL", "32x256x14x14 CL"]


def parse(name: str) -> tuple[tuple[int, ...], bool]:
    """``"NxC"``, ``"NxCxL"``, ``"NxCxHxW"`` or ``"NxCxHxW CL"`` (channels-last) -> (shape, channels_last); raises
    ``ValueError`` naming the name for anything else (this script times float32 only: no ``f64`` names)."""
    dims, _, layout = name.strip().partition(" ")
    try:
        shape = tuple(int(d) for d in dims.split("x"))
    except ValueError:
        shape = ()
    if not 2 <= len(shape) <= 4 or min(shape) < 1 or layout.strip() not in ("", "CL") \
            or (layout.strip() == "CL" and len(shape) != 4):
        raise ValueError(f"--shapes: expected 'NxC', 'NxCxL', 'NxCxHxW' or 'NxCxHxW CL' (float32), got {name!r}")
    return shape, layout.strip() == "CL"


def candidates(shape: tuple[int, ...], channels_last: bool) -> dict[str, Callable[[], object]]:
    torch.manual_seed(0)
    C = shape[1]
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ours = (nlnn.BatchNorm2d if len(shape) == 4 else nlnn.BatchNorm1d)(C)
    theirs = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(C)
    w, b = torch.ones(C, requires_grad=True), torch.zeros(C, requires_grad=True)
    rm, rv = torch.zeros(C), torch.ones(C)
    _, mean1, invstd1 = torch.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)
    native.torch_train(x, w, b, 1e-5, 1, (rm, rv, 0.1))  # loads the check's kernel
    check = native._EXCEEDS_AT.get(x.dtype)
    hook = native._exact_orders_hook(x, w, 1e-5)

    def operator():
        return torch.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)[0]

    def with_hook():
        y = operator()
        y.grad_fn.register_hook(hook)
        return y

    def with_check():
        y = with_hook()
        if check is not None:
            check(mean1.data_ptr(), invstd1.data_ptr(), mean1.shape[0], native.SHIFT_RATIO)
        return y

    return {
        "operator": operator,
        "+ hook": with_hook,
        "+ check": with_check,
        "native path": lambda: native.torch_train(x, w, b, 1e-5, 1, (rm, rv, 0.1)),
        "functional": lambda: NF._batch_norm(x, 1, rm, rv, w, b, True, 0.1, 1e-5, True, None, "bench"),
        "normlab": lambda: ours(x),
        "torch": lambda: theirs(x),
    }


def measure(cands: dict[str, Callable[[], object]], calls: int, rounds: int) -> dict[str, float]:
    """Median over ``rounds`` interleaved rounds of the mean time per call (us) of ``calls`` back-to-back calls."""
    for f in cands.values():
        for _ in range(calls):
            f()
    samples: dict[str, list[float]] = {k: [] for k in cands}
    for r in range(rounds):
        names = list(cands)
        order = names[r % len(names):] + names[:r % len(names)]  # rotated: no candidate always runs first
        for k in order:
            f = cands[k]
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            samples[k].append((time.perf_counter() - t0) / calls * 1e6)
    return {k: statistics.median(v) for k, v in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--shapes", nargs="*", default=SHAPES)
    args = parser.parse_args(argv)
    try:
        shapes = [(name, parse(name)) for name in args.shapes]  # every name checked before any timing
    except ValueError as e:
        print(f"small_shape_overhead: {e}", file=sys.stderr)
        return 2
    print(f"training forward (grad enabled), us per call, medians of {args.rounds} interleaved rounds of "
          f"{args.calls} calls; torch {torch.__version__}, {torch.get_num_threads()} threads")
    head = ["operator", "+ hook", "+ check", "native path", "functional", "normlab", "torch"]
    print(f"{'shape':<18}" + "".join(f"{h:>13}" for h in head) + f"{'torch/normlab':>15}")
    for name, (shape, channels_last) in shapes:
        m = measure(candidates(shape, channels_last), args.calls, args.rounds)
        print(f"{name:<18}" + "".join(f"{m[h]:>13.2f}" for h in head) + f"{m['torch'] / m['normlab']:>15.3f}")
        steps = [(h, m[h] - m[p]) for p, h in zip(head, head[1:-1])]
        print(f"{'':<18}normlab over the operator: " + ", ".join(f"{h} {d:+.2f}" for h, d in steps)
              + f"; torch's layer over the operator {m['torch'] - m['operator']:+.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
