"""normlab: Batch Normalization and its whole family for PyTorch, done right, fast, and backed by evidence.

Parts: ``normlab.nn`` / ``normlab.functional`` (layers), ``normlab.reference`` (NumPy oracle),
``normlab.tools`` (model tools), ``normlab.kernels`` (fast CPU kernels), ``normlab.lab`` (experiments and claims).
"""

from . import functional, nn, reference

__version__ = "0.1.0"

__all__ = ["functional", "nn", "reference", "__version__"]

from .nn.registry import make_norm

__all__ += ["make_norm"]
