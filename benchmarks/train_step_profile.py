"""Where a training step of the lab's CNN spends its time: normlab's BatchNorm vs torch.nn.BatchNorm2d in place.

    python benchmarks/train_step_profile.py [--batch 256] [--steps 10]

torch.profiler's self CPU time per operator over ``--steps`` SGD steps of the lab's ``cnn`` (conv16-BN-ReLU-pool-
conv32-BN-ReLU-pool, 1x28x28) with normlab's BN (dispatched) and with torch's; prints the BN layers' time per step
(normlab: the fused op and its backward; torch: native_batch_norm and its backward) and the whole step's. The
wall-clock comparison is `normlab bench`'s last table; this shows how much of the step BN is. Nothing is asserted.
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from normlab.bench.kernels import with_torch_batchnorm
from normlab.lab.models import build_model

BN_OPS = {"normlab": ("_EagerTrain", "_EagerTrainBackward", "normlab::batch_norm_train",
                      "normlab::batch_norm_train_backward", "aten::native_batch_norm",
                      "aten::native_batch_norm_backward"),
          "torch": ("aten::native_batch_norm", "aten::native_batch_norm_backward")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28)
    target = torch.randint(0, 10, (args.batch,))
    print(f"lab cnn, batch {args.batch}, {args.steps} steps; self CPU time per step (ms), torch.profiler:")
    for which in ("normlab", "torch"):
        model = build_model("cnn", (1, 28, 28), 10, norm="bn", channels=(16, 32))
        if which == "torch":
            model = with_torch_batchnorm(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), target).backward()
            opt.step()

        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / 1e3 / args.steps
        bn = sum(e.self_cpu_time_total for e in events if e.key in BN_OPS[which]) / 1e3 / args.steps
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:4]
        print(f"  {which:8} BN layers {bn:7.2f}   whole step {total:7.2f}   largest: "
              + ", ".join(f"{e.key} {e.self_cpu_time_total / 1e3 / args.steps:.2f}" for e in top))


if __name__ == "__main__":
    main()
