"""Operations on whole models: fold batch norm for inference, recalibrate statistics (PreciseBN), convert and
freeze norms, record activation statistics, export to ONNX, fuse batch norm with the ReLU after it (training).

The ONNX export needs the optional ``normlab[export]`` extra (onnx, onnxruntime), imported only when called.
"""

from .convert import convert_norm, freeze, is_frozen, unfreeze
from .export import ExportResult, export_onnx
from .fold import FoldReport, fold_batchnorm, fold_into, plan_fold
from .fuse import FuseReport, fuse_norm_act, plan_fuse_norm_act
from .inspect import RedundantBias, find_redundant_biases
from .recalibrate import recalibrate
from .record import ActivationRecorder, LayerRecord

__all__ = [
    "ActivationRecorder",
    "ExportResult",
    "FoldReport",
    "FuseReport",
    "LayerRecord",
    "RedundantBias",
    "convert_norm",
    "export_onnx",
    "find_redundant_biases",
    "fold_batchnorm",
    "fold_into",
    "fuse_norm_act",
    "freeze",
    "is_frozen",
    "plan_fold",
    "plan_fuse_norm_act",
    "recalibrate",
    "unfreeze",
]
