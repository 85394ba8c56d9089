"""The end-of-call check every runner shares: samples that hold NaN or ±inf raise instead of passing as
black images. One reduction over the finished batch, before clipping (a clamp would hide +inf as 1)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["NonFiniteSampleError", "check_finite_samples"]


class NonFiniteSampleError(ValueError):
    """A sampling call produced NaN or inf (the model returned non-finite values, or the chain diverged)."""

    def __init__(self, bad: int, total: int, where: str = ""):
        self.bad, self.total, self.where = bad, total, where
        super().__init__(f"{where}{bad} of {total} samples are not finite (NaN or inf): the model returned "
                         "non-finite values or the chain diverged (pass check_finite=False for the raw output)")

    def __reduce__(self):  # picklable with its fields (torch.distributed gathers errors as objects)
        return type(self), (self.bad, self.total, self.where)


def check_finite_samples(x: torch.Tensor | np.ndarray) -> None:
    """Raise :class:`NonFiniteSampleError` when any sample (a slice along dim 0) holds NaN or inf; one
    device reduction and one host read."""
    if isinstance(x, np.ndarray):
        bad = int((~np.isfinite(x.reshape(len(x), -1))).any(axis=1).sum()) if x.size else 0
    else:
        bad = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1).sum()) if x.numel() else 0
    if bad:
        raise NonFiniteSampleError(bad, len(x))
