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
    # torch's parametrization is gone; what is left is the view torch's removal functions read
    assert "parametrizations" not in conv._modules
    assert not nn.utils.parametrize.is_parametrized(conv)
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


# --- folding torch's weight norms: bit-exact, and finite on zero vectors (issue 11, item 4) ----

# (layer, torch's dim): first/last dims take torch's fused kernel, a middle dim and the whole
# tensor (dim=None) its composite formula; ConvTranspose with torch's default dim=0 is per input
TORCH_FOLD_CASES = [
    pytest.param(lambda: nn.Linear(5, 4), (2, 5), 0, id="linear-0"),
    pytest.param(lambda: nn.Linear(5, 4), (2, 5), 1, id="linear-1"),
    pytest.param(lambda: nn.Conv1d(3, 4, 3), (2, 3, 6), 0, id="conv1d-0"),
    pytest.param(lambda: nn.Conv1d(3, 4, 3), (2, 3, 6), 1, id="conv1d-1"),
    pytest.param(lambda: nn.Conv2d(2, 4, 3), (1, 2, 5, 5), None, id="conv2d-None"),
    pytest.param(lambda: nn.ConvTranspose1d(3, 5, 4), (2, 3, 6), 0, id="convtranspose1d-0"),
    pytest.param(lambda: nn.ConvTranspose1d(3, 5, 4), (2, 3, 6), 1, id="convtranspose1d-1"),
]


def _torch_normed(make: object, dim: int | None, kind: str, zero_unit: bool) -> nn.Module:
    """A layer under torch's weight norm, g off ||v||, optionally one unit of v zero (the whole
    tensor for dim=None); built from a seed, since torch's legacy version cannot be deepcopied."""
    torch.manual_seed(0)
    layer = make()  # type: ignore[operator]
    if kind == "legacy":
        nn.utils.weight_norm(layer, dim=dim)
        g, v = layer.weight_g, layer.weight_v
    else:
        nn.utils.parametrizations.weight_norm(layer, dim=dim)
        g, v = layer.parametrizations.weight.original0, layer.parametrizations.weight.original1
    with torch.no_grad():
        g.mul_(torch.rand_like(g) + 0.5)
        if zero_unit:
            if dim is None:
                v.zero_()
            else:
                v.select(dim, 1).zero_()
    return layer


def _torch_removal(layer: nn.Module, kind: str) -> torch.Tensor:
    if kind == "legacy":
        nn.utils.remove_weight_norm(layer)
    else:
        nn.utils.parametrize.remove_parametrizations(layer, "weight")
    return layer.weight.detach()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.nn.utils.weight_norm is deprecated
@pytest.mark.parametrize("kind", ["legacy", "parametrize"])
@pytest.mark.parametrize(("make", "shape", "dim"), TORCH_FOLD_CASES)
def test_fold_of_torch_weight_norm_is_bit_identical_to_torchs_removal(
    make: object, shape: tuple[int, ...], dim: int | None, kind: str
) -> None:
    """Issue 11, item 4: making the fold eps-safe must not change a non-degenerate weight by a
    single bit against torch's own removal."""
    ours = wn.fold(_torch_normed(make, dim, kind, zero_unit=False)).weight.detach()
    theirs = _torch_removal(_torch_normed(make, dim, kind, zero_unit=False), kind)
    assert torch.equal(ours, theirs)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("kind", ["legacy", "parametrize"])
@pytest.mark.parametrize(("make", "shape", "dim"), TORCH_FOLD_CASES)
def test_fold_of_torch_weight_norm_with_a_zero_vector_is_finite(
    make: object, shape: tuple[int, ...], dim: int | None, kind: str
) -> None:
    """Issue 11, item 4: wn.fold of a torch weight norm went through torch._weight_norm (no eps)
    and gave NaN for a zero v; the README promises finite. The zero unit folds to zero, every
    other unit to torch's value bit for bit."""
    layer = _torch_normed(make, dim, kind, zero_unit=True)
    w = wn.fold(layer).weight.detach()
    assert torch.isfinite(w).all()
    zero = w if dim is None else w.select(dim, 1)
    assert torch.equal(zero, torch.zeros_like(zero))
    theirs = _torch_removal(_torch_normed(make, dim, kind, zero_unit=True), kind)
    kept = ~torch.isnan(theirs)
    assert torch.equal(w[kept], theirs[kept])
    assert torch.isfinite(layer(torch.randn(shape))).all()


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("kind", ["legacy", "parametrize"])
def test_fold_of_torch_weight_norm_on_an_rnn_refreshes_its_cache(kind: str) -> None:
    """Issue 11, item 3, for torch's weight norms: after wn.fold the RNN's cache of weights
    (``_flat_weights``) holds the Parameter again, not torch's computed weight."""
    torch.manual_seed(0)
    rnn = nn.LSTM(3, 4)
    num_params = len(rnn._flat_weights)
    apply = nn.utils.weight_norm if kind == "legacy" else nn.utils.parametrizations.weight_norm
    apply(rnn, "weight_hh_l0")
    x = torch.randn(5, 2, 3)
    before = rnn(x)[0]
    wn.fold(rnn)
    assert type(rnn) is nn.LSTM
    assert sum(isinstance(p, nn.Parameter) for p in rnn._flat_weights) == num_params
    assert rnn._flat_weights[1] is rnn.weight_hh_l0
    torch.testing.assert_close(rnn(x)[0], before)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(0.5)
    reference = nn.LSTM(3, 4)
    reference.load_state_dict(rnn.state_dict())
    for _ in range(2):
        out = rnn(x)[0]
        torch.testing.assert_close(out, reference(x)[0])
        out.sum().backward()
