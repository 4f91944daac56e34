"""BatchNorm variants for small, non-i.i.d. or virtual batches (being written: see issue 3)."""

from __future__ import annotations

from .batchnorm import BatchNormBase

__all__ = ["BatchRenorm", "GhostBatchNorm", "MovingAverageBatchNorm", "BatchLayerNorm"]


class _Pending(BatchNormBase):
    def __init__(self, *args, **kwargs) -> None:
        raise NotImplementedError(f"{type(self).__name__} is not implemented yet in this commit")


class BatchRenorm(_Pending):
    pass


class GhostBatchNorm(_Pending):
    pass


class MovingAverageBatchNorm(_Pending):
    pass


class BatchLayerNorm(_Pending):
    pass
