"""Worker for test_sync.py: one process of a 2-process gloo group (also imported by the test for the cases).

Run as ``python _sync_worker.py RANK WORLD STORE_FILE OUT_FILE``.
"""

from __future__ import annotations

import sys

import torch

from normlab.nn import (
    BatchLayerNorm,
    BatchNorm,
    BatchRenorm,
    GhostBatchNorm,
    MaskedBatchNorm,
    NormAct,
    TimeStepBatchNorm,
    convert_sync_batchnorm,
)

STEPS = 2
N = 8


# name -> (builder, input shape, split of the batch over the 2 ranks, uses a mask)
CASES = {
    "bn": (lambda: BatchNorm(3), (N, 3, 4), (3, 5), False),
    "torch_bn": (lambda: torch.nn.Sequential(torch.nn.BatchNorm1d(3, momentum=0.3)), (N, 3, 4), (5, 3), False),
    "brn": (lambda: BatchRenorm(3, r_max=1.2, d_max=0.2, warmup_steps=0, r_max_steps=0, d_max_steps=0), (N, 3, 4), (3, 5), False),
    "masked": (lambda: MaskedBatchNorm(3, axis=-1), (N, 5, 3), (3, 5), True),
    "ghost": (lambda: GhostBatchNorm(3, virtual_batch_size=2), (N, 3, 4), (4, 4), False),
    "timestep": (lambda: TimeStepBatchNorm(3, max_steps=2, per_step_affine=True), (N, 3, 3), (2, 6), False),
    "bln": (lambda: BatchLayerNorm(3), (N, 3, 4), (3, 5), False),
    "inplace_abn": (lambda: NormAct(BatchNorm(3), activation="leaky_relu", inplace_abn=True), (N, 3, 4), (3, 5), False),
}


def data(name):
    shape = CASES[name][1]
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(*shape, generator=g, dtype=torch.float64) * 2 + s for s in range(STEPS)]
    gs = [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(STEPS)]
    masks = [torch.rand(shape[0], shape[1], generator=g) > 0.3 for _ in range(STEPS)]
    for m in masks:
        m[:, :2] = True
    return xs, gs, masks


def build(name):
    model = CASES[name][0]()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
    return model.double()


def run(name, model, lo, hi):
    """Train STEPS steps on the batch slice [lo, hi); record outputs, input grads, param grads, final buffers."""
    xs, gs, masks = data(name)
    uses_mask = CASES[name][3]
    out = {"y": [], "dx": [], "dp": []}
    for step in range(STEPS):
        x = xs[step][lo:hi].clone().requires_grad_()
        inp = x * 1.0  # NormAct in-place overwrites its input: give it a non-leaf
        y = model(inp, mask=masks[step][lo:hi]) if uses_mask else model(inp)
        (y * gs[step][lo:hi]).sum().backward()
        out["y"].append(y.detach().clone())
        out["dx"].append(x.grad.clone())
        out["dp"].append([p.grad.clone() for p in model.parameters()])
        model.zero_grad()
    out["state"] = {k: v.clone() for k, v in model.state_dict().items()}
    return out


RECAL_SPLIT = (3, 5)


def recalibrate_case(lo, hi, synchronized):
    """normlab.tools.recalibrate over 3 batches, each process on its slice [lo, hi); returns the state_dict."""
    from normlab.tools import recalibrate

    torch.manual_seed(2)
    model = torch.nn.Sequential(BatchNorm(3), torch.nn.Conv1d(3, 3, 1), torch.nn.BatchNorm1d(3)).double().eval()
    if synchronized:
        model = convert_sync_batchnorm(model)
    g = torch.Generator().manual_seed(11)
    batches = [torch.randn(N, 3, 4, generator=g, dtype=torch.float64) * (k + 1) + k for k in range(3)]
    recalibrate(model, [b[lo:hi] for b in batches], progress=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


def main(rank: int, world: int, store: str, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        results = {}
        for name, (_, _, split, _) in CASES.items():
            model = convert_sync_batchnorm(build(name))
            lo = sum(split[:rank])
            results[name] = run(name, model, lo, lo + split[rank])
        lo = sum(RECAL_SPLIT[:rank])
        results["recalibrate"] = recalibrate_case(lo, lo + RECAL_SPLIT[rank], synchronized=True)
        torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
