"""normlab's normalization layers, drop-in compatible with ``torch.nn``."""

from .batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormBase

__all__ = ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormBase"]

from .alternatives import GroupNorm, InstanceNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm, RMSNorm  # noqa: E402,E501
from .registry import make_norm, norm_specs, register_norm  # noqa: E402
from .variants import BatchLayerNorm, BatchRenorm, GhostBatchNorm, MovingAverageBatchNorm  # noqa: E402

__all__ += ["LayerNorm", "GroupNorm", "InstanceNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "RMSNorm"]
__all__ += ["make_norm", "norm_specs", "register_norm"]
__all__ += ["BatchRenorm", "GhostBatchNorm", "MovingAverageBatchNorm", "BatchLayerNorm"]
from .sequence import MaskedBatchNorm, TimeStepBatchNorm  # noqa: E402

__all__ += ["MaskedBatchNorm", "TimeStepBatchNorm"]
from .act import NormAct, NormAddAct  # noqa: E402
from .sync import convert_sync_batchnorm  # noqa: E402

__all__ += ["NormAct", "NormAddAct", "convert_sync_batchnorm"]
from .full_normalization import FullNormalization  # noqa: E402
from .running_average import RunningAverageNorm  # noqa: E402

__all__ += ["FullNormalization", "RunningAverageNorm"]
