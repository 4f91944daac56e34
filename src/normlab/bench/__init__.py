"""Benchmarks used by ``normlab bench`` and ``benchmarks/``: a timing harness for shared machines and the
BatchNorm kernel grid. Figures are printed and written to JSON, never asserted."""
