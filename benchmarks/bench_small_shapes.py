"""normlab's BatchNorm against torch eager at small shapes, where per-call overhead decides (float32, CPU).

For each shape: the layer (``normlab.nn.BatchNorm1d/2d`` vs ``torch.nn.BatchNorm1d/2d``) and the functional
(``normlab.functional.batch_norm`` vs ``torch.nn.functional.batch_norm``), in training mode forward,
forward+backward, and eval forward; interleaved rounds, medians, ratio = normlab / torch (> 1 is slower; the
target of issue 7 is <= 1.1). Dispatch as configured (``NORMLAB_KERNELS``, default ``auto``).

    PYTHONPATH=src python benchmarks/bench_small_shapes.py [--reps 30] [--shapes 256x128 "8x512x7x7 CL"] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch

from normlab import functional as NF
from normlab import nn as nlnn
from normlab.bench.harness import interleaved

SHAPES = ["256x128", "32x128", "8x512x7x7", "8x512x7x7 CL", "32x256x14x14", "32x256x14x14 CL"]


def parse(name: str) -> tuple[tuple[int, ...], bool]:
    dims, _, layout = name.partition(" ")
    return tuple(int(d) for d in dims.split("x")), layout == "CL"


def candidates(shape: tuple[int, ...], channels_last: bool, mode: str) -> dict:
    torch.manual_seed(0)
    C = shape[1]
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(x)
    ours = (nlnn.BatchNorm2d if len(shape) == 4 else nlnn.BatchNorm1d)(C)
    theirs = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(C)
    for layer in (ours, theirs):
        layer.train(mode != "eval")
    w, b = torch.ones(C, requires_grad=True), torch.zeros(C, requires_grad=True)
    buffers = {k: (torch.zeros(C), torch.ones(C)) for k in ("ours", "theirs")}
    training = mode != "eval"
    xg = x.detach().clone().requires_grad_(mode == "fwd+bwd")

    def run(forward, params):
        if mode == "fwd+bwd":
            return lambda: torch.autograd.grad(forward(), params, dy)

        def call():
            with torch.no_grad():
                return forward()
        return call

    return {
        "module normlab": run(lambda: ours(xg), (xg, ours.weight, ours.bias)),
        "module torch": run(lambda: theirs(xg), (xg, theirs.weight, theirs.bias)),
        "functional normlab": run(lambda: NF.batch_norm(xg, *buffers["ours"], w, b, training=training), (xg, w, b)),
        "functional torch": run(
            lambda: torch.nn.functional.batch_norm(xg, *buffers["theirs"], w, b, training=training), (xg, w, b)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--shapes", nargs="*", default=SHAPES)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    head = (f"{'shape':<17}{'mode':<9}{'module nl':>11}{'torch':>9}{'ratio':>7}"
            f"{'functional nl':>15}{'torch':>9}{'ratio':>7}")
    print(f"medians in us (float32, torch threads={torch.get_num_threads()}); ratio = normlab / torch (target <= 1.1)")
    print(head)
    print("-" * len(head))
    for name in args.shapes:
        shape, cl = parse(name)
        for mode in ("fwd", "fwd+bwd", "eval"):
            timed = interleaved(candidates(shape, cl, mode), reps=args.reps, warmup=5)
            t = {k: v.median * 1e6 for k, v in timed.items()}
            print(f"{name:<17}{mode:<9}{t['module normlab']:>11.1f}{t['module torch']:>9.1f}"
                  f"{t['module normlab'] / t['module torch']:>7.2f}{t['functional normlab']:>15.1f}"
                  f"{t['functional torch']:>9.1f}{t['functional normlab'] / t['functional torch']:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
