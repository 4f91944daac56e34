"""normlab: Batch Normalization and its whole family for PyTorch, done right, fast, and backed by evidence.

Parts: ``normlab.nn`` / ``normlab.functional`` (layers), ``normlab.reference`` (NumPy oracle),
``normlab.tools`` (model tools), ``normlab.kernels`` (fast CPU kernels), ``normlab.lab`` (experiments and claims),
``normlab.bench`` (benchmarks). ``import normlab`` loads the layers; ``tools``, ``lab`` and ``bench`` load on first
use as attributes (``normlab.tools.fold_batchnorm``), so importing the package never loads the lab.
"""

from . import functional, nn, reference

__version__ = "0.1.0"

__all__ = ["functional", "nn", "reference", "__version__"]

from .nn.registry import make_norm

__all__ += ["make_norm"]

#: subpackages reachable as attributes, imported on first access (PEP 562)
_LAZY_SUBPACKAGES = ("bench", "kernels", "lab", "tools")


def __getattr__(name: str):
    """``normlab.tools``, ``normlab.lab``, ``normlab.bench`` (and ``normlab.kernels``) without importing them first:
    the subpackage is imported on the first access. Raises ``AttributeError`` for any other name. Each import is
    written out (not built from ``name``) so that the import-cycle test sees these arrows too; absolute, because
    ``from . import x`` would ask this function for ``x`` again before importing it."""
    if name == "tools":
        import normlab.tools

        return normlab.tools
    if name == "lab":
        import normlab.lab

        return normlab.lab
    if name == "bench":
        import normlab.bench

        return normlab.bench
    if name == "kernels":
        import normlab.kernels

        return normlab.kernels
    raise AttributeError(f"module 'normlab' has no attribute {name!r}")

def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBPACKAGES))
