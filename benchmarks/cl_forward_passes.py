"""Why the channels-last training forward (no backward) is slower on the kernels than on torch: each step in tensor
passes, the numbers behind ``dispatch.AUTO_TABLE_FORWARD_ONLY``.

For NCHW and channels-last float32 inputs it times, interleaved in the same rounds (medians):

* ``copy``        — ``x`` copied into an existing tensor, 2 passes (read x, write y): the unit;
* ``torch fwd``   — torch's training forward (``torch.batch_norm``, statistics then normalize; a fresh output);
* ``torch eval``  — torch's normalize alone (fixed statistics, 2 passes of work; a fresh output);
* ``kernel fwd``  — normlab's training forward on the kernels (``kernels.batch_norm_train``, backend ``fast``);
* ``k stats``     — the kernels' statistics sweep alone (channels-last: ``mc_moments``, 1 pass of reads);
* ``k apply``     — the kernels' apply sweep alone (channels-last: ``mc_apply``, 2 passes).

and prints each as time and as passes (time / copy time x 2), from the medians and from the minima (under load
the minimum is the least disturbed round). A step at copy speed per pass is memory-bound; above
it, it is bound by its arithmetic or its access pattern.

    python benchmarks/cl_forward_passes.py [--reps 15] [--threads 1] [--shapes 32x64x56x56,64x64x56x56]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from normlab import kernels
from normlab.bench.harness import interleaved
from normlab.kernels import _layout
from normlab.kernels import _numba as K


def candidates(x: torch.Tensor) -> dict:
    C = x.shape[1]
    w, b = torch.ones(C), torch.zeros(C)
    rm, rv = torch.zeros(C), torch.ones(C)
    xs, p = _layout.prepare(x, 1)
    xv = _layout.view(xs, p)
    y = torch.empty_like(xs)
    yv = _layout.view(y, p)
    m = _layout.empty_mask(p)
    mean, var, count = (np.empty((1, p.c)) for _ in range(3))
    scale, shift = np.ones((1, p.c)), np.zeros((1, p.c))
    none = np.empty((0,) * xv.ndim, dtype=xv.dtype)
    copy_to = torch.empty_like(x)

    def kernel_fwd():
        with kernels.backend("fast"), torch.no_grad():
            return kernels.batch_norm_train(x, w, b, 1e-5)[0]

    out = {
        "copy": lambda: copy_to.copy_(x),  # into an existing tensor: a fresh one would add its page faults
        "torch fwd": lambda: torch.batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5, False),
        "torch eval": lambda: torch.batch_norm(x, w, b, rm, rv, False, 0.1, 1e-5, False),
        "kernel fwd": kernel_fwd,
    }
    if p.kind == _layout.NCS:
        out["k stats"] = lambda: K.ncs_moments(xv, m, 1, mean, var, count)
        out["k apply"] = lambda: K.ncs_apply(xv, m, 1, mean, scale, shift, 0, 0.0, none, yv)
    else:
        out["k stats"] = lambda: K.mc_moments(xv, m, 1, mean, var, count)
        out["k apply"] = lambda: K.mc_apply(xv, m, 1, mean, scale, shift, 0, 0.0, none, yv)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0, help="torch and numba threads (0: as they are)")
    ap.add_argument("--shapes", default="32x64x56x56,64x64x56x56")
    args = ap.parse_args(argv)
    if args.threads:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    print(f"threads torch={torch.get_num_threads()}; {args.reps} interleaved rounds; passes = time / copy x 2")
    for spec in args.shapes.split(","):
        shape = tuple(int(s) for s in spec.split("x"))
        for name, fmt in (("NCHW", torch.contiguous_format), ("CL", torch.channels_last)):
            x = torch.randn(shape).contiguous(memory_format=fmt)
            t = interleaved(candidates(x), reps=args.reps, warmup=2)
            for stat in ("median", "min"):
                copy = getattr(t["copy"], stat)
                print(f"{spec} {name:4s} {stat:6s} " + "  ".join(
                    f"{k} {getattr(v, stat) * 1e3:.2f} ms ({2 * getattr(v, stat) / copy:.1f})" for k, v in t.items()),
                    flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
