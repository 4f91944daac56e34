"""Where the numba kernels start to beat torch's operator, per layout: the numbers behind dispatch.AUTO_TABLE.

For each layout of the decision table (``channel_first``: NCHW at five channel x spatial shapes, 64x8x8 to 16x32x32,
the layout's crossover being its worst shape's; ``channels_last``: (N, 64, 14, 14) with NHWC strides; ``rows``: (N,
C) as after a Linear layer; and (N, L, C) with ``axis=-1``, which dispatch files under ``channels_last``) and a
geometric ladder of sizes (2^15 .. 2^24 values, x2 steps), it times a training forward+backward of
``normlab.kernels.batch_norm_train`` forced onto the kernels (``fast``) and onto torch's operator (``native``),
interleaved in the same rounds (:func:`normlab.bench.harness.interleaved`), and prints the ratio native / fast (> 1:
the kernels are faster). The crossover of a layout is the smallest size of the ladder from which the ratio stays >=
1.05 at every larger size ("never slower": below it, dispatch keeps torch's operator); ``-`` when no such size
exists (the table's ``None``).

    python benchmarks/crossover.py [--reps 15] [--dtype float32] [--max-log2 24] [--layouts channel_first,...]
                                    [--json PATH]

Run it on a quiet machine: under load the ratios move by 2-5x between runs (measured on the project's shared
2-core machine), which no threshold survives.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from normlab import kernels
from normlab.bench.harness import interleaved


def _nchw(c: int, h: int):
    """(N, c, h, h) holding about n values."""
    return lambda n: (max(n // (c * h * h), 1), c, h, h)


#: layout -> (shapes of the ladder: label -> size -> shape, channel axis, memory format). A layout with several
#: shapes gets the crossover of its worst shape: the channel-first kernels pay a cost per row of the spatial plane,
#: so short rows (8x8) cross over later than long ones.
LAYOUTS = {
    "channel_first": ({"64x8x8": _nchw(64, 8), "32x16x16": _nchw(32, 16), "16x32x32": _nchw(16, 32),
                       "64x14x14": _nchw(64, 14), "16x28x28": _nchw(16, 28)}, 1, None),
    "channels_last": ({"64x14x14": _nchw(64, 14)}, 1, torch.channels_last),
    "rows": ({"512": lambda n: (max(n // 512, 1), 512)}, 1, None),
    "nlc": ({"256x64": lambda n: (max(n // (256 * 64), 1), 256, 64)}, -1, None),
}


def _step(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dy: torch.Tensor, axis: int, backend: str):
    def run() -> None:
        with kernels.backend(backend):
            y, _ = kernels.batch_norm_train(x, w, b, 1e-5, axis=axis)
        y.backward(dy)
    return run


def measure(reps: int, dtype: torch.dtype, max_log2: int, layouts: list[str]) -> dict[str, list[tuple[int, float]]]:
    """Per layout and shape (``"<layout> <shape>"``), the ladder's (values, native / fast) pairs."""
    out: dict[str, list[tuple[int, float]]] = {}
    for name in layouts:
        shapes, axis, fmt = LAYOUTS[name]
        for label, shape_of in shapes.items():
            rows = []
            for k in range(15, max_log2 + 1):
                shape = shape_of(1 << k)
                x = torch.randn(shape, dtype=dtype)
                if fmt is not None:
                    x = x.contiguous(memory_format=fmt)
                x.requires_grad_()
                C = shape[axis]
                w = torch.ones(C, dtype=dtype, requires_grad=True)
                b = torch.zeros(C, dtype=dtype, requires_grad=True)
                dy = torch.randn_like(x)
                t = interleaved({v: _step(x, w, b, dy, axis, v) for v in ("fast", "native")}, reps=reps, warmup=2)
                rows.append((x.numel(), t["native"].median / t["fast"].median))
                print(f"  {name:<14}{str(tuple(shape)):<22}{x.numel():>10}  native/fast {rows[-1][1]:.2f}",
                      file=sys.stderr, flush=True)
            out[f"{name} {label}"] = rows
    return out


def crossover(rows: list[tuple[int, float]], margin: float = 1.05) -> int | None:
    """Smallest size from which every ratio (native / fast) is >= margin, else None."""
    best = None
    for n, ratio in reversed(rows):
        if ratio < margin:
            break
        best = n
    return best


def layout_crossover(per_shape: list[int | None]) -> int | None:
    """A layout's crossover: its worst shape's (None, never, if any shape never crosses over)."""
    return None if not per_shape or any(n is None for n in per_shape) else max(n for n in per_shape if n is not None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--max-log2", type=int, default=24, help="largest size of the ladder, 2^k values")
    parser.add_argument("--layouts", default=",".join(LAYOUTS),
                        help=f"comma-separated subset of {', '.join(LAYOUTS)}")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    if args.reps < 1 or not 15 <= args.max_log2 <= 30:
        print(f"crossover: expected --reps >= 1 and --max-log2 in 15..30 (the ladder starts at 2^15), got "
              f"{args.reps} and {args.max_log2}", file=sys.stderr)
        return 2
    layouts = [s.strip() for s in args.layouts.split(",") if s.strip()]
    unknown = [s for s in layouts if s not in LAYOUTS]
    if unknown or not layouts:
        print(f"crossover: --layouts: expected names among {', '.join(LAYOUTS)}, got {args.layouts!r}",
              file=sys.stderr)
        return 2
    if not kernels.numba_available():
        print("crossover: numba is not installed; there are no kernels to compare", file=sys.stderr)
        return 2
    results = measure(args.reps, getattr(torch, args.dtype), args.max_log2, layouts)
    print(f"crossover (native/fast >= 1.05 from this size on), {args.dtype}, {torch.get_num_threads()} threads:")
    for name, rows in results.items():
        n = crossover(rows)
        print(f"  {name:<24}{'-' if n is None else n:>10}   ({', '.join(f'{m}:{r:.2f}' for m, r in rows)})")
    for layout in layouts:
        n = layout_crossover([crossover(rows) for key, rows in results.items() if key.split(" ")[0] == layout])
        print(f"  => {layout:<21}{'-' if n is None else n:>10}   (its worst shape's; dispatch.AUTO_TABLE)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({k: [list(r) for r in v] for k, v in results.items()}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
