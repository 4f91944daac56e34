"""Time normlab's BatchNorm kernels against torch eager, a composite and the memory roofline.

    python benchmarks/bench_kernels.py [--quick] [--reps 15] [--compile] [--json out.json]

Same as ``normlab bench``: prints a table of medians and ratios, writes JSON. Nothing is asserted.
"""

import sys

from normlab.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
