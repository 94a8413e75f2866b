"""Mean-only batch normalization (Salimans & Kingma 2016, section 4), plain and synchronized.

``y = x - mean(x) + bias``: the per-channel minibatch mean is subtracted, nothing is divided.
With weight norm fixing the scale of the pre-activations, this fixes their mean with far gentler
noise than full batch norm; the paper credits the combination for its best CIFAR-10 result.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import functional as F
from ._errors import WeightNormError

__all__ = [
    "MeanOnlyBatchNorm1d",
    "MeanOnlyBatchNorm2d",
    "MeanOnlyBatchNorm3d",
    "SyncMeanOnlyBatchNorm",
]


class _MeanOnlyBatchNorm(nn.Module):
    _input_ndims: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        momentum: float | None = 0.1,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise WeightNormError(f"num_features must be a positive int, got {num_features!r}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise WeightNormError(f"momentum must be in [0, 1] or None, got {momentum!r}")
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.momentum = momentum
        self.track_running_stats = track_running_stats
        self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        self.running_mean: Tensor | None
        self.num_batches_tracked: Tensor | None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        """Zero the running mean and the count of tracked batches."""
        if self.running_mean is not None and self.num_batches_tracked is not None:
            self.running_mean.zero_()
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics and the bias to zero."""
        self.reset_running_stats()
        nn.init.zeros_(self.bias)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim not in self._input_ndims:
            dims = " or ".join(f"{d}D" for d in self._input_ndims)
            raise WeightNormError(
                f"{type(self).__name__} expected {dims} input (batch, channels, ...), "
                f"got {x.ndim}D input of shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.num_features:
            raise WeightNormError(
                f"{type(self).__name__}({self.num_features}) expected {self.num_features} "
                f"channels in dim 1, got input of shape {tuple(x.shape)}"
            )

    def _momentum(self) -> float:
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as torch.nn.BatchNorm
                return 1.0 / float(self.num_batches_tracked)
        return 0.0 if self.momentum is None else self.momentum

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        momentum = self._momentum()
        use_batch = self.training or self.running_mean is None
        return F.mean_only_batch_norm(x, self.running_mean, self.bias, use_batch, momentum)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, momentum={self.momentum}, "
            f"track_running_stats={self.track_running_stats}"
        )


class MeanOnlyBatchNorm1d(_MeanOnlyBatchNorm):
    r"""Mean-only batch norm over a 2D ``(N, C)`` or 3D ``(N, C, L)`` input.

    .. math::
        y = x - \mathrm{E}[x] + \beta

    the mean per channel over the batch (and length), no division by a standard deviation
    (Salimans & Kingma 2016, section 4). In training the batch mean is used and the running mean
    updated as in :class:`torch.nn.BatchNorm1d`
    (``running = (1 - momentum) * running + momentum * mean``; ``momentum=None`` is a cumulative
    average); in evaluation the running mean is subtracted. The backward pass centres the
    gradient: ``grad_x = grad_y - mean(grad_y)``.

    Args:
        num_features (int): channels ``C``.
        momentum (float or None, optional): weight of the new batch mean. Default: ``0.1``.
        track_running_stats (bool, optional): keep ``running_mean``; without it evaluation
            also uses batch means. Default: ``True``.
        device, dtype: as in ``torch.nn``.

    Example::

        >>> import torch, weightnorm as wn
        >>> bn = wn.MeanOnlyBatchNorm1d(3)
        >>> y = bn(torch.randn(8, 3) + 5.0)
        >>> bool(y.mean(0).abs().max() < 1e-5)
        True
    """

    _input_ndims = (2, 3)


class MeanOnlyBatchNorm2d(_MeanOnlyBatchNorm):
    """Mean-only batch norm over a 4D ``(N, C, H, W)`` input; see :class:`MeanOnlyBatchNorm1d`.

    Example::

        >>> import torch, weightnorm as wn
        >>> wn.MeanOnlyBatchNorm2d(4)(torch.randn(2, 4, 5, 5)).shape
        torch.Size([2, 4, 5, 5])
    """

    _input_ndims = (4,)


class MeanOnlyBatchNorm3d(_MeanOnlyBatchNorm):
    """Mean-only batch norm over a 5D ``(N, C, D, H, W)`` input; see :class:`MeanOnlyBatchNorm1d`.

    Example::

        >>> import torch, weightnorm as wn
        >>> wn.MeanOnlyBatchNorm3d(2)(torch.randn(2, 2, 3, 3, 3)).shape
        torch.Size([2, 2, 3, 3, 3])
    """

    _input_ndims = (5,)


class SyncMeanOnlyBatchNorm(_MeanOnlyBatchNorm):
    """Mean-only batch norm whose training mean is taken over every process of a group.

    Under ``torch.distributed`` (DDP) each rank's batch is centred with the mean of the union
    of all ranks' batches, and the gradient is centred with the global mean gradient, exactly as
    one process would on the concatenated batch. Without an initialized process group it
    behaves as :class:`MeanOnlyBatchNorm1d`. Accepts inputs of 2 to 5 dimensions.

    Convert a model with :meth:`convert_sync_mean_only_batchnorm`.

    Example::

        >>> import torch, weightnorm as wn
        >>> net = torch.nn.Sequential(wn.WNConv1d(2, 4, 3), wn.MeanOnlyBatchNorm1d(4))
        >>> net = wn.SyncMeanOnlyBatchNorm.convert_sync_mean_only_batchnorm(net)
        >>> type(net[1]).__name__
        'SyncMeanOnlyBatchNorm'
    """

    _input_ndims = (2, 3, 4, 5)

    def __init__(
        self,
        num_features: int,
        momentum: float | None = 0.1,
        track_running_stats: bool = True,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, momentum, track_running_stats, device, dtype)
        self.process_group = process_group

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        momentum = self._momentum()
        use_batch = self.training or self.running_mean is None
        if not use_batch or not _distributed(self.process_group):
            return F.mean_only_batch_norm(x, self.running_mean, self.bias, use_batch, momentum)
        dims = [0, *range(2, x.ndim)]
        shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        torch.distributed.all_reduce(count, group=self.process_group)
        # differentiable all-reduce: the backward sums the gradients of every rank too
        total: Tensor = _AllReduceSum.apply(x.sum(dim=dims), self.process_group)  # type: ignore[no-untyped-call]
        mean = total / count.to(x.dtype)
        if self.running_mean is not None:
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
        return x - mean.reshape(shape) + self.bias.reshape(shape)

    @classmethod
    def convert_sync_mean_only_batchnorm(
        cls, module: nn.Module, process_group: Any = None
    ) -> nn.Module:
        """Replace every mean-only batch norm in ``module`` by a synchronized one (same state).

        Returns the converted module (a new object if ``module`` itself was a mean-only BN).
        """
        if isinstance(module, _MeanOnlyBatchNorm) and not isinstance(module, cls):
            sync = cls(
                module.num_features,
                module.momentum,
                module.track_running_stats,
                process_group,
                device=module.bias.device,
                dtype=module.bias.dtype,
            )
            sync.load_state_dict(module.state_dict())
            sync.train(module.training)
            return sync
        for name, child in module.named_children():
            converted = cls.convert_sync_mean_only_batchnorm(child, process_group)
            if converted is not child:
                setattr(module, name, converted)
        return module


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the backward sums the incoming gradients over ranks as well."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = x.clone()
        torch.distributed.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        out = grad.clone()
        torch.distributed.all_reduce(out, group=ctx.group)
        return out, None


def _distributed(group: Any) -> bool:
    dist = torch.distributed
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1)
