"""The WN* layer classes: torch.nn constructors, one mechanism with wn.weight_norm."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import weightnorm as wn

PAIRS = [
    (wn.WNLinear, nn.Linear, (5, 3), (2, 5)),
    (wn.WNConv1d, nn.Conv1d, (2, 4, 3), (1, 2, 9)),
    (wn.WNConv2d, nn.Conv2d, (2, 4, 3), (1, 2, 6, 6)),
    (wn.WNConv3d, nn.Conv3d, (2, 3, 2), (1, 2, 3, 3, 3)),
    (wn.WNConvTranspose1d, nn.ConvTranspose1d, (2, 4, 3), (1, 2, 5)),
    (wn.WNConvTranspose2d, nn.ConvTranspose2d, (2, 4, 3), (1, 2, 4, 4)),
    (wn.WNConvTranspose3d, nn.ConvTranspose3d, (2, 3, 2), (1, 2, 2, 2, 2)),
]
IDS = [p[0].__name__ for p in PAIRS]


@pytest.mark.parametrize(("ours", "plain", "args", "shape"), PAIRS, ids=IDS)
def test_equals_weight_norm_on_the_torch_layer(
    ours: type[nn.Module], plain: type[nn.Module], args: tuple[int, ...], shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    layer = ours(*args)
    torch.manual_seed(0)
    reference = wn.weight_norm(plain(*args))
    assert isinstance(layer, plain)
    assert type(layer) is ours
    assert list(layer.state_dict()) == list(reference.state_dict())
    for key, value in layer.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key
    x = torch.randn(shape)
    assert torch.equal(layer(x), reference(x))


@pytest.mark.parametrize(("ours", "plain", "args", "shape"), PAIRS, ids=IDS)
def test_fold_gives_the_torch_class(
    ours: type[nn.Module], plain: type[nn.Module], args: tuple[int, ...], shape: tuple[int, ...]
) -> None:
    layer = ours(*args)
    x = torch.randn(shape)
    before = layer(x)
    wn.remove_weight_norm(layer)
    assert type(layer) is plain
    torch.testing.assert_close(layer(x), before)


@pytest.mark.parametrize(("ours", "plain", "args", "shape"), PAIRS, ids=IDS)
def test_pickle_and_deepcopy(
    ours: type[nn.Module], plain: type[nn.Module], args: tuple[int, ...], shape: tuple[int, ...]
) -> None:
    layer = ours(*args)
    x = torch.randn(shape)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert type(clone) is ours
        assert torch.equal(clone(x), layer(x))


def test_torch_keyword_arguments_device_and_dtype() -> None:
    layer = wn.WNConv1d(
        4, 8, kernel_size=3, stride=2, padding=1, dilation=1, groups=2, bias=False,
        padding_mode="reflect", device="cpu", dtype=torch.float64,
    )  # fmt: skip
    assert layer.bias is None
    assert layer.groups == 2
    assert layer.padding_mode == "reflect"
    assert layer.weight_v.dtype == torch.float64
    assert layer.weight_g.dtype == torch.float64
    assert layer(torch.randn(1, 4, 10, dtype=torch.float64)).shape == (1, 8, 5)


def test_bfloat16_layer_keeps_g_in_float32() -> None:
    layer = wn.WNLinear(4, 2, dtype=torch.bfloat16)
    assert layer.weight_g.dtype == torch.float32
    assert layer(torch.randn(3, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_dim_and_eps_keywords() -> None:
    layer = wn.WNLinear(4, 2, dim=None, eps=1e-6)
    assert wn.weight_norm_specs(layer)["weight"] == wn.WeightNormSpec((2, 4), dim=None, eps=1e-6)


def test_grouped_convtranspose_normalizes_per_output_channel() -> None:
    layer = wn.WNConvTranspose1d(4, 6, 3, groups=2)
    assert layer.weight_g.shape == (2, 1, 3, 1)
    with torch.no_grad():
        layer.weight_g.copy_(torch.arange(1.0, 7.0).reshape(2, 1, 3, 1))
    w = layer.weight.detach()
    # output channel 4 = group 1, column 1: rows 2-3, column 1
    torch.testing.assert_close(w[2:4, 1].norm(), torch.tensor(5.0))


def test_subclass_of_a_layer_keeps_its_class_on_fold() -> None:
    class Mine(wn.WNLinear):
        def scaled(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * self(x)

    layer = Mine(3, 2)
    wn.remove_weight_norm(layer)
    assert type(layer) is Mine
    assert isinstance(layer.weight, nn.Parameter)
    assert layer.scaled(torch.ones(1, 3)).shape == (1, 2)
    wn.weight_norm(layer)
    assert wn.is_weight_normed(layer)
