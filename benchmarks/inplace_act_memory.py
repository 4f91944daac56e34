"""Peak training memory of a conv stack with BatchNorm + activation: standard vs In-Place ABN (normlab.nn.NormAct).

    python benchmarks/inplace_act_memory.py [--depth 8] [--batch 16] [--channels 32] [--size 64] [--json out.json]

Two measurements per variant, each in a fresh Python subprocess (so one variant's freed memory cannot hide the
next one's peak):

* ``peak RSS delta``: the process's peak resident set size (``resource.getrusage(...).ru_maxrss``, a high-water
  mark kept by the kernel) after one forward + backward step, minus its value just before the step (model and
  input already built). This is what the machine actually paid, allocator overheads included.
* ``saved for backward``: the bytes of the distinct tensor storages autograd keeps between forward and backward,
  counted with ``torch.autograd.graph.saved_tensors_hooks`` during a forward pass: the part of the peak that the
  in-place mode targets, free of allocator noise.

Variants: ``torch BN + ReLU`` (torch.nn.BatchNorm2d + ReLU(inplace=True), the usual baseline), ``normlab standard``
(NormAct(BatchNorm2d, leaky_relu)), ``normlab in-place ABN`` (the same with inplace_abn=True). Nothing is asserted:
the script prints figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

VARIANTS = ("torch BN + ReLU", "normlab standard", "normlab in-place ABN")


def build(variant: str, depth: int, channels: int):
    import torch
    from torch import nn

    from normlab.nn import BatchNorm2d, NormAct

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers.append(nn.Conv2d(channels, channels, 3, padding=1, bias=False))
        if variant == "torch BN + ReLU":
            layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        else:
            layers.append(NormAct(BatchNorm2d(channels), activation="leaky_relu",
                                  inplace_abn=variant == "normlab in-place ABN"))
    return nn.Sequential(*layers)


def child(variant: str, depth: int, batch: int, channels: int, size: int) -> dict:
    import torch

    torch.set_num_threads(1)
    model = build(variant, depth, channels)
    x = torch.randn(batch, channels, size, size)
    # one small warm-up step so that lazy one-time allocations (kernels, thread pools) are not counted
    model(x[:2]).sum().backward()
    model.zero_grad(set_to_none=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model(x).sum().backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    del y
    return {
        "variant": variant,
        "peak_rss_delta_mb": (after - before) / 1024.0,  # ru_maxrss is in KiB on Linux
        "saved_for_backward_mb": sum(storages.values()) / 2**20,
        "activation_mb": x.numel() * x.element_size() / 2**20,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    dims = (args.depth, args.batch, args.channels, args.size)
    if args.child:
        print(json.dumps(child(args.child, *dims)))
        return 0
    rows = []
    for variant in VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, "--child", variant, "--depth", str(args.depth), "--batch", str(args.batch),
             "--channels", str(args.channels), "--size", str(args.size)],
            check=True, capture_output=True, text=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    act = rows[0]["activation_mb"]
    print(f"conv3x3 -> BN -> activation, x{args.depth}; "
          f"input ({args.batch}, {args.channels}, {args.size}, {args.size}) "
          f"float32 = {act:.1f} MiB per activation; one training step, fresh process per variant")
    print(f"{'variant':<24}{'peak RSS delta (MiB)':>22}{'saved for backward (MiB)':>27}")
    for r in rows:
        print(f"{r['variant']:<24}{r['peak_rss_delta_mb']:>22.1f}{r['saved_for_backward_mb']:>27.1f}")
    base = rows[0]
    inplace = rows[-1]
    rss = inplace["peak_rss_delta_mb"] / base["peak_rss_delta_mb"]
    print(f"in-place ABN vs torch BN + ReLU: peak RSS delta x{rss:.2f}, "
          f"saved tensors x{inplace['saved_for_backward_mb'] / base['saved_for_backward_mb']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
