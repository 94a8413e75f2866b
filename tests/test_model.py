"""Whole-model operations: apply_weight_norm, fold, replace_torch_weight_norm."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import weightnorm as wn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.rnn = nn.GRU(4, 6, batch_first=True)
        self.conv = nn.Conv1d(6, 6, 3, padding=1)
        self.up = nn.ConvTranspose1d(6, 4, 4, stride=2, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.rnn(self.embed(tokens))[0].transpose(1, 2)  # (batch, channels, length)
        h = self.up(torch.relu(self.conv(h)))
        return self.head(h.mean(-1))


def normed(model: nn.Module) -> set[str]:
    return {
        f"{q}.{n}" if q else n for q, m in model.named_modules() for n in wn.weight_norm_specs(m)
    }


def test_default_layers() -> None:
    model = wn.apply_weight_norm(Net())
    assert normed(model) == {"conv.weight", "up.weight", "head.weight"}
    assert model.up.weight_g.shape == (1, 4, 1)  # per output channel


def test_embedding_and_recurrent_options() -> None:
    model = wn.apply_weight_norm(Net(), embedding=True, recurrent=True)
    assert normed(model) == {
        "embed.weight",
        "rnn.weight_ih_l0",
        "rnn.weight_hh_l0",
        "conv.weight",
        "up.weight",
        "head.weight",
    }


def test_exclude_by_name_and_type() -> None:
    model = wn.apply_weight_norm(Net(), exclude=["head", "c*"])
    assert normed(model) == {"up.weight"}
    model = wn.apply_weight_norm(Net(), exclude=[nn.ConvTranspose1d])
    assert normed(model) == {"conv.weight", "head.weight"}
    with pytest.raises(wn.WeightNormError, match="exclude takes module names"):
        wn.apply_weight_norm(Net(), exclude=[3])  # type: ignore[list-item]


def test_outputs_unchanged_and_idempotent() -> None:
    torch.manual_seed(0)
    model = Net()
    tokens = torch.randint(0, 10, (2, 7))
    before = model(tokens)
    wn.apply_weight_norm(model, embedding=True, recurrent=True)
    torch.testing.assert_close(model(tokens), before)
    state = copy.deepcopy(model.state_dict())
    wn.apply_weight_norm(model, embedding=True, recurrent=True)
    assert list(model.state_dict()) == list(state)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.nn.utils.weight_norm is deprecated
def test_fold_removes_ours_and_both_of_torchs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        wn.WNConv1d(2, 4, 3),
        nn.utils.weight_norm(nn.Conv1d(4, 4, 3)),
        nn.utils.parametrizations.weight_norm(nn.ConvTranspose1d(4, 2, 3)),
    )
    x = torch.randn(1, 2, 9)
    before = model(x)
    with torch.no_grad():
        wn.fold(model)
    assert [type(m) for m in model] == [nn.Conv1d, nn.Conv1d, nn.ConvTranspose1d]
    for m in model:
        assert isinstance(m.weight, nn.Parameter)
        assert m.weight.requires_grad
        assert set(dict(m.named_parameters())) == {"weight", "bias"}
        assert not m._forward_pre_hooks
    torch.testing.assert_close(model(x), before)
    copy.deepcopy(model)  # torch's legacy weight norm made this fail


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("kind", ["legacy", "parametrize"])
@pytest.mark.parametrize("dim", [0, 1, None])
def test_replace_torch_weight_norm_keeps_outputs_and_values(kind: str, dim: int | None) -> None:
    torch.manual_seed(0)
    apply = nn.utils.weight_norm if kind == "legacy" else nn.utils.parametrizations.weight_norm
    model = nn.Sequential(apply(nn.ConvTranspose1d(3, 5, 4, stride=2), dim=dim), nn.Tanh())
    with torch.no_grad():  # make g differ from ||v||
        g = model[0].weight_g if kind == "legacy" else model[0].parametrizations.weight.original0
        g.mul_(torch.rand_like(g) + 0.5)
    g_before = g.detach().clone()
    x = torch.randn(2, 3, 6)
    before = model(x)
    wn.replace_torch_weight_norm(model)
    conv = model[0]
    assert wn.is_weight_normed(conv)
    assert not conv._forward_pre_hooks
    assert not hasattr(conv, "parametrizations")
    assert torch.equal(conv.weight_g.detach().reshape(-1), g_before.reshape(-1))
    torch.testing.assert_close(model(x), before)
    # what torch's own versions break: deepcopy and whole-model pickling
    torch.testing.assert_close(copy.deepcopy(model)(x), before)
    torch.testing.assert_close(pickle.loads(pickle.dumps(model))(x), before)


def test_apply_over_torch_weight_norm_points_to_replace() -> None:
    model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(2, 2)))
    with pytest.raises(wn.WeightNormError, match="replace_torch_weight_norm"):
        wn.apply_weight_norm(model)


def test_fold_shared_module_once() -> None:
    shared = wn.WNLinear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    x = torch.randn(2, 3)
    before = model(x)
    wn.fold(model)
    assert type(model[0]) is nn.Linear
    assert model[0] is model[2]
    torch.testing.assert_close(model(x), before)
