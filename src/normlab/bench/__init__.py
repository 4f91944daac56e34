"""Benchmarks used by ``normlab bench`` and ``benchmarks/``: a timing harness for shared machines, the
BatchNorm kernel grid (:mod:`.kernels`) and whole-model training steps (:mod:`.models`). Figures are printed and
written to JSON, never asserted."""
