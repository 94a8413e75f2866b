"""Mean-only batch norm against independent computations (paper, section 4)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import weightnorm as wn
from weightnorm import functional as F

CASES = [
    (wn.MeanOnlyBatchNorm1d, (6, 3)),
    (wn.MeanOnlyBatchNorm1d, (6, 3, 7)),
    (wn.MeanOnlyBatchNorm2d, (4, 3, 5, 2)),
    (wn.MeanOnlyBatchNorm3d, (2, 3, 2, 3, 2)),
]
IDS = ["1d-2D", "1d-3D", "2d", "3d"]


def channel_means(x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean by an explicit loop over channels."""
    return torch.stack([x[:, c].reshape(-1).mean() for c in range(x.shape[1])])


def expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape((1, -1) + (1,) * (like.ndim - 2)).expand_as(like)


@pytest.mark.parametrize(("cls", "shape"), CASES, ids=IDS)
def test_train_forward_running_mean_and_eval(cls: type, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    bn = cls(3, momentum=0.3)
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(shape) * 2 + 4
    y = bn(x)
    mu = channel_means(x)
    torch.testing.assert_close(y, x - expand(mu, x) + expand(bn.bias.detach(), x))
    torch.testing.assert_close(bn.running_mean, 0.3 * mu)
    x2 = torch.randn(shape) - 1
    bn(x2)
    torch.testing.assert_close(bn.running_mean, 0.7 * (0.3 * mu) + 0.3 * channel_means(x2))
    bn.eval()
    x3 = torch.randn(shape)
    torch.testing.assert_close(
        bn(x3), x3 - expand(bn.running_mean, x3) + expand(bn.bias.detach(), x3)
    )


def test_momentum_matches_torch_batchnorm_convention() -> None:
    torch.manual_seed(0)
    ours, theirs = wn.MeanOnlyBatchNorm1d(3, momentum=0.2), nn.BatchNorm1d(3, momentum=0.2)
    cumulative_ours = wn.MeanOnlyBatchNorm1d(3, momentum=None)
    cumulative_theirs = nn.BatchNorm1d(3, momentum=None)
    for _ in range(4):
        x = torch.randn(10, 3) + 2
        for m in (ours, theirs, cumulative_ours, cumulative_theirs):
            m(x)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(cumulative_ours.running_mean, cumulative_theirs.running_mean)
    assert int(cumulative_ours.num_batches_tracked) == 4


@pytest.mark.parametrize(("cls", "shape"), CASES, ids=IDS)
def test_backward_centres_the_gradient(cls: type, shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    bn = cls(3)
    x = torch.randn(shape, requires_grad=True)
    upstream = torch.randn(shape)
    bn(x).backward(upstream)
    assert x.grad is not None
    assert bn.bias.grad is not None
    torch.testing.assert_close(x.grad, upstream - expand(channel_means(upstream), upstream))
    torch.testing.assert_close(bn.bias.grad, torch.stack([upstream[:, c].sum() for c in range(3)]))


def test_gradcheck_float64() -> None:
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c: F.mean_only_batch_norm(a, None, c, True), (x, b))


def test_without_running_stats_eval_uses_batch_mean() -> None:
    bn = wn.MeanOnlyBatchNorm2d(2, track_running_stats=False).eval()
    assert bn.running_mean is None
    x = torch.randn(3, 2, 4, 4) + 7
    torch.testing.assert_close(bn(x), x - expand(channel_means(x), x))


def test_state_dict_names_and_pickle() -> None:
    bn = wn.MeanOnlyBatchNorm1d(4)
    assert list(bn.state_dict()) == ["bias", "running_mean", "num_batches_tracked"]
    bn(torch.randn(5, 4))
    for clone in (copy.deepcopy(bn), pickle.loads(pickle.dumps(bn))):
        assert torch.equal(clone.running_mean, bn.running_mean)


def test_device_and_dtype() -> None:
    bn = wn.MeanOnlyBatchNorm1d(3, device="cpu", dtype=torch.float64)
    assert bn.bias.dtype == torch.float64
    assert bn.running_mean.dtype == torch.float64


def test_wrong_input_raises() -> None:
    with pytest.raises(wn.WeightNormError, match=r"expected 4D input.*got 3D"):
        wn.MeanOnlyBatchNorm2d(3)(torch.randn(2, 3, 4))
    with pytest.raises(wn.WeightNormError, match=r"expected 3 channels in dim 1.*\(2, 5\)"):
        wn.MeanOnlyBatchNorm1d(3)(torch.randn(2, 5))
    with pytest.raises(wn.WeightNormError, match="num_features must be a positive int"):
        wn.MeanOnlyBatchNorm1d(0)
    with pytest.raises(wn.WeightNormError, match=r"momentum must be in \[0, 1\]"):
        wn.MeanOnlyBatchNorm1d(3, momentum=1.5)


def test_sync_variant_without_process_group_is_plain() -> None:
    torch.manual_seed(0)
    plain = wn.MeanOnlyBatchNorm1d(3)
    sync = wn.SyncMeanOnlyBatchNorm.convert_sync_mean_only_batchnorm(copy.deepcopy(plain))
    assert isinstance(sync, wn.SyncMeanOnlyBatchNorm)
    x = torch.randn(6, 3, 4)
    torch.testing.assert_close(sync(x), plain(x))
    torch.testing.assert_close(sync.running_mean, plain.running_mean)


def test_convert_keeps_state_and_mode() -> None:
    net = nn.Sequential(wn.WNConv1d(2, 3, 1), wn.MeanOnlyBatchNorm1d(3))
    net[1](torch.randn(4, 3, 2) + 1)
    net.eval()
    running = net[1].running_mean.clone()
    converted = wn.SyncMeanOnlyBatchNorm.convert_sync_mean_only_batchnorm(net)
    assert converted is net
    assert isinstance(net[1], wn.SyncMeanOnlyBatchNorm)
    assert not net[1].training
    assert torch.equal(net[1].running_mean, running)
    assert bool(running.abs().sum() > 0)  # the state copied over is not just the initial zeros
