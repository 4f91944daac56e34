"""Operations on whole models: fold batch norm for inference, recalibrate statistics (PreciseBN), convert and
freeze norms, record activation statistics, export to ONNX.

The ONNX export needs the optional ``normlab[export]`` extra (onnx, onnxruntime), imported only when called.
"""

from .convert import convert_norm, freeze, is_frozen, unfreeze
from .export import ExportResult, export_onnx
from .fold import FoldReport, fold_batchnorm, fold_into, plan_fold
from .inspect import RedundantBias, find_redundant_biases  # noqa: F401 - public: normlab.tools.find_redundant_biases
from .recalibrate import recalibrate
from .record import ActivationRecorder, LayerRecord

__all__ = [
    "ActivationRecorder",
    "ExportResult",
    "FoldReport",
    "LayerRecord",
    "convert_norm",
    "export_onnx",
    "fold_batchnorm",
    "fold_into",
    "freeze",
    "is_frozen",
    "plan_fold",
    "recalibrate",
    "unfreeze",
]
