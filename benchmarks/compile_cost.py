"""First-call cost of the numba kernels: JIT compilation with a cold cache vs loading from a warm one.

Each measurement runs in a fresh Python process with ``NUMBA_CACHE_DIR`` pointing at a new, empty directory
(cold: every kernel the call needs is compiled and written there) and then again at the same directory (warm:
the kernels are loaded from the on-disk cache, as after the first run on a user's machine). A process times
``import normlab``, the first training-mode forward+backward of ``normlab.functional.batch_norm`` on the kernels
(``NORMLAB_KERNELS=fast``) for an NCHW input and then for a channels-last one (the second layout needs its own
kernels), and a second call of the same (the steady state), all with ``time.perf_counter``.

    python benchmarks/compile_cost.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

_CHILD = r"""
import json, time
t0 = time.perf_counter()
import torch
import normlab
from normlab import functional as F
t_import = time.perf_counter() - t0
out = {"import_s": t_import}
for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
    x = torch.randn(8, 16, 12, 12).contiguous(memory_format=fmt).requires_grad_()
    w, b = torch.ones(16, requires_grad=True), torch.zeros(16, requires_grad=True)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        F.batch_norm(x, None, None, w, b, training=True).sum().backward()
        times.append(time.perf_counter() - t0)
    out[name + "_first_s"], out[name + "_second_s"] = times
print(json.dumps(out))
"""


def run_once(cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, NORMLAB_KERNELS="fast")
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="cold/warm pairs (fresh cache directory each)")
    args = parser.parse_args(argv)
    cold, warm = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="normlab-numba-cache-") as d:
            cold.append(run_once(d))
            warm.append(run_once(d))
    print("first-call cost of the numba kernels (seconds, medians of", args.repeats, "fresh processes each)")
    print(f"{'':14}{'import':>9}{'NCHW 1st':>10}{'NCHW 2nd':>10}{'CL 1st':>9}{'CL 2nd':>9}")
    for label, runs in (("cold cache", cold), ("warm cache", warm)):
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{label:<14}{med['import_s']:>9.2f}{med['nchw_first_s']:>10.2f}{med['nchw_second_s']:>10.4f}"
              f"{med['channels_last_first_s']:>9.2f}{med['channels_last_second_s']:>9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
