"""wn.weight_norm / wn.remove_weight_norm on single modules: the contract of DESIGN.md."""

from __future__ import annotations

import copy
import gc
import inspect
import io
import pickle
import warnings
import weakref
from typing import Any, cast

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.multiprocessing.reductions import StorageWeakRef

import weightnorm as wn
from conftest import Case
from weightnorm import functional as F


def test_outputs_unchanged_when_applied(case: Case) -> None:
    layer = case.build()
    x = case.input()
    before = layer(x)
    wn.weight_norm(layer)
    torch.testing.assert_close(layer(x), before)


def test_parameter_names_order_and_keepdim_g_shape() -> None:
    """Issue 21, item 2: the parameters come in torch's order (its legacy hook and its
    parametrize give the same for a layer), so an optimizer state saved with torch's weight
    norm maps onto ours by position; g has torch's shape (0-d for the whole tensor)."""
    conv = wn.weight_norm(nn.Conv2d(3, 8, 3))
    assert [n for n, _ in conv.named_parameters()] == ["bias", "weight_g", "weight_v"]
    assert conv.weight_g.shape == (8, 1, 1, 1)
    assert list(conv.state_dict()) == ["bias", "weight_g", "weight_v"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates its legacy hook
        legacy = nn.utils.weight_norm(nn.Conv2d(3, 8, 3))
    parametrized = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 8, 3))
    for theirs in (legacy, parametrized):
        shapes = [p.shape for p in theirs.parameters()]
        assert [p.shape for p in conv.parameters()] == shapes
    assert wn.weight_norm(nn.Linear(3, 5), dim=1).weight_g.shape == (1, 3)
    whole = wn.weight_norm(nn.Linear(3, 5), dim=None)
    assert whole.weight_g.shape == ()
    assert (
        whole.weight_g.shape
        == nn.utils.parametrizations.weight_norm(
            nn.Linear(3, 5), dim=None
        ).parametrizations.weight.original0.shape
    )


def test_default_is_one_g_per_output_unit(case: Case) -> None:
    layer = wn.weight_norm(case.build())
    with torch.no_grad():
        layer.weight_g.copy_(torch.rand_like(layer.weight_g) + 0.5)
    g = layer.weight_g.detach().reshape(-1)
    outputs = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    assert g.numel() == outputs
    torch.testing.assert_close(case.unit_norms(layer.weight.detach()), g)


def test_convtranspose_differs_from_torch_default() -> None:
    # torch's dim=0 on a ConvTranspose normalizes per *input* channel: one g per in_channel
    theirs = nn.utils.parametrizations.weight_norm(nn.ConvTranspose1d(3, 5, 4))
    ours = wn.weight_norm(nn.ConvTranspose1d(3, 5, 4))
    assert theirs.parametrizations.weight.original0.shape == (3, 1, 1)
    assert ours.weight_g.shape == (1, 5, 1)


def test_weight_is_current_without_forward() -> None:
    layer = wn.weight_norm(nn.Linear(4, 3))
    with torch.no_grad():
        layer.weight_g.mul_(2.0)
    v = layer.weight_v.detach()
    expected = layer.weight_g.detach() * v / v.norm(dim=1, keepdim=True)
    torch.testing.assert_close(layer.weight, expected)


def test_weight_is_current_after_optimizer_steps_and_constraint_holds() -> None:
    torch.manual_seed(0)
    layer = wn.weight_norm(nn.Linear(6, 4))
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        layer(torch.randn(8, 6)).pow(2).mean().backward()
        opt.step()
    w = layer.weight.detach()
    torch.testing.assert_close(w.norm(dim=1), layer.weight_g.detach().abs().reshape(-1))
    torch.testing.assert_close(
        layer(torch.ones(1, 6)), torch.ones(1, 6) @ w.T + layer.bias.detach()
    )


def test_zero_weight_row_gives_finite_outputs_and_gradients() -> None:
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight[1] = 0.0
    wn.weight_norm(layer)
    out = layer(torch.randn(5, 4))
    assert torch.isfinite(out).all()
    out.sum().backward()
    for p in layer.parameters():
        assert p.grad is not None
        assert torch.isfinite(p.grad).all()


def _assert_same_module(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert torch.equal(a(x), b(x))


def test_deepcopy_is_bit_exact_and_independent(case: Case) -> None:
    layer = wn.weight_norm(case.build())
    clone = copy.deepcopy(layer)
    _assert_same_module(layer, clone, case.input())
    with torch.no_grad():
        clone.weight_g.mul_(3.0)
    assert not torch.equal(clone.weight, layer.weight)
    assert wn.is_weight_normed(clone)


def test_pickle_and_torch_save_whole_module(case: Case) -> None:
    layer = wn.weight_norm(case.build())
    layer(case.input())  # a forward leaves a handed-out w behind; it must not matter
    restored = pickle.loads(pickle.dumps(layer))
    _assert_same_module(layer, restored, case.input())
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    _assert_same_module(layer, loaded, case.input())
    assert type(loaded) is type(layer)


def test_state_dict_round_trip_is_bit_exact(case: Case) -> None:
    source = wn.weight_norm(case.build())
    target = wn.weight_norm(case.build())
    target.load_state_dict(source.state_dict())
    _assert_same_module(source, target, case.input())


def test_loads_torch_parametrize_keys(case: Case) -> None:
    theirs = nn.utils.parametrizations.weight_norm(
        case.build(), dim=wn.default_dim(case.build())[0]
    )
    ours = wn.weight_norm(case.build())
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours.weight, theirs.weight)
    x = case.input()
    torch.testing.assert_close(ours(x), theirs(x))


def test_loads_plain_weight(case: Case) -> None:
    plain = case.build()
    ours = wn.weight_norm(case.build())
    ours.load_state_dict(plain.state_dict())
    torch.testing.assert_close(ours.weight, plain.weight.detach())
    assert torch.equal(ours.weight_v, plain.weight)  # v = w exactly
    torch.testing.assert_close(
        ours.weight_g.detach().reshape(-1), case.unit_norms(plain.weight.detach())
    )


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.nn.utils.weight_norm is deprecated
def test_loads_legacy_convtranspose_checkpoint_normalized_per_input_channel() -> None:
    torch.manual_seed(0)
    legacy = nn.utils.weight_norm(nn.ConvTranspose1d(4, 6, 3))  # g per input channel: (4, 1, 1)
    with torch.no_grad():
        legacy.weight_g.mul_(torch.rand_like(legacy.weight_g) + 0.5)
    x = torch.randn(2, 4, 5)
    ours = wn.weight_norm(nn.ConvTranspose1d(4, 6, 3))  # g per output channel: (1, 6, 1)
    ours.load_state_dict(legacy.state_dict())
    assert ours.weight_g.shape == (1, 6, 1)
    torch.testing.assert_close(ours(x), legacy(x))


def test_removal_restores_plain_parameter_and_class(case: Case) -> None:
    layer = case.build()
    cls = type(layer)
    wn.weight_norm(layer)
    with torch.no_grad():
        layer.weight_g.mul_(1.5)
    expected = layer.weight.detach().clone()
    v = layer.weight_v
    wn.remove_weight_norm(layer)
    assert type(layer) is cls
    assert isinstance(layer.weight, nn.Parameter)
    assert layer.weight is v  # the same object: an optimizer that held v keeps training it
    assert torch.equal(layer.weight.detach(), expected)
    assert "weight_g" not in dict(layer.named_parameters())


@pytest.mark.parametrize(
    "context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"]
)
def test_removal_under_no_grad_leaves_a_parameter(context: type) -> None:
    layer = wn.weight_norm(nn.Conv1d(2, 3, 3))
    expected = layer.weight.detach().clone()
    with context():
        wn.remove_weight_norm(layer)
    assert isinstance(layer.weight, nn.Parameter)
    assert "weight" in layer._parameters
    assert "weight" not in layer._buffers
    assert layer.weight.requires_grad
    torch.testing.assert_close(layer.weight.detach(), expected)
    # the folded layer trains again
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(1, 2, 8)).sum().backward()
    before = layer.weight.detach().clone()
    opt.step()
    assert not torch.equal(layer.weight.detach(), before)


def test_existing_optimizer_keeps_training_after_removal() -> None:
    layer = wn.weight_norm(nn.Linear(3, 2))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    wn.remove_weight_norm(layer)
    layer(torch.randn(4, 3)).sum().backward()
    before = layer.weight.detach().clone()
    opt.step()
    assert not torch.equal(layer.weight.detach(), before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_keep_g_in_float32(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(16, 4).to(dtype)
    reference = layer.weight.detach().clone()
    wn.weight_norm(layer)
    assert layer.weight_g.dtype == torch.float32
    assert layer.weight_v.dtype == dtype
    assert layer.weight.dtype == dtype
    torch.testing.assert_close(layer.weight.detach(), reference)
    # a small update to g is representable
    with torch.no_grad():
        layer.weight_g.add_(1e-4)
    assert layer.weight_g.dtype == torch.float32
    layer.float().to(dtype)  # .to(dtype) keeps g in float32 too
    assert layer.weight_g.dtype == torch.float32


def test_half_conversion_keeps_g_values_exact() -> None:
    layer = wn.weight_norm(nn.Linear(4, 3))
    g = layer.weight_g.detach().clone()
    layer.half()
    assert layer.weight_g.dtype == torch.float32
    assert torch.equal(layer.weight_g.detach(), g)
    assert layer.weight_v.dtype == torch.float16


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_weights(cls: type[nn.RNNBase]) -> None:
    torch.manual_seed(0)
    rnn = cls(3, 4, num_layers=2, batch_first=True)
    x = torch.randn(2, 5, 3)
    before = rnn(x)[0]
    for name in ("weight_ih_l0", "weight_hh_l0", "weight_hh_l1"):
        wn.weight_norm(rnn, name)
    torch.testing.assert_close(rnn(x)[0], before)
    # the forward really uses the normalized weight: changing g changes the output
    with torch.no_grad():
        rnn.weight_hh_l0_g.mul_(0.0)
    reference = cls(3, 4, num_layers=2, batch_first=True)
    reference.load_state_dict(wn.fold(copy.deepcopy(rnn)).state_dict())
    torch.testing.assert_close(rnn(x)[0], reference(x)[0])
    rnn(x)[0].sum().backward()
    assert rnn.weight_hh_l0_v.grad is not None


def test_recurrent_forward_computes_each_weight_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # regression: torch's RNN refresh read a computed weight four times per forward
    from weightnorm import _reparam

    calls: list[str] = []
    compute = _reparam._compute

    def counting(module: nn.Module, name: str, *args: object) -> torch.Tensor:
        calls.append(name)
        return compute(module, name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(_reparam, "_compute", counting)
    rnn = wn.weight_norm(nn.LSTM(3, 4), "weight_hh_l0")
    x = torch.randn(5, 2, 3)
    rnn(x)
    calls.clear()
    rnn(x)
    assert calls == ["weight_hh_l0"]


# --- recurrent modules: the cache of weights nn.RNNBase keeps (issue 11, item 3) ---------------

RNNS = [
    pytest.param(lambda: nn.LSTM(3, 4), id="lstm"),
    pytest.param(lambda: nn.LSTM(3, 4, proj_size=2), id="lstm_proj"),
    pytest.param(lambda: nn.GRU(3, 4), id="gru"),
    pytest.param(lambda: nn.RNN(3, 4, bias=False), id="rnn_no_bias"),
]


def _parameters_in_cache(rnn: nn.RNNBase) -> int:
    return sum(isinstance(p, nn.Parameter) for p in rnn._flat_weights)


@pytest.mark.filterwarnings("ignore:LSTM with projections:UserWarning")
@pytest.mark.parametrize("make", RNNS)
@pytest.mark.parametrize("name", ["weight_ih_l0", "weight_hh_l0"])
def test_rnn_cache_holds_the_current_weight(make: Any, name: str) -> None:
    """Issue 11, item 3: an RNN weight-normalized by wn.weight_norm held v, not the weight, in
    ``_flat_weights``, and after removal the stale computed weight, which the next forward then
    used (a second backward failed). torch's test_rnn_weight_norm pins the counts checked here."""
    torch.manual_seed(0)
    rnn = make()
    num_params = len(rnn._flat_weights)
    i = rnn._flat_weights_names.index(name)
    x = torch.randn(5, 2, 3)
    before = rnn(x)[0]

    wn.weight_norm(rnn, name)
    assert _parameters_in_cache(rnn) == num_params - 1
    assert torch.equal(rnn._flat_weights[i], getattr(rnn, name))
    normed = rnn(x)[0]
    torch.testing.assert_close(normed, before)
    assert _parameters_in_cache(rnn) == num_params - 1  # after a forward too
    with torch.no_grad():
        getattr(rnn, name + "_g").mul_(2.0)
    rnn(x)
    assert torch.equal(rnn._flat_weights[i], getattr(rnn, name))

    wn.remove_weight_norm(rnn, name)
    assert _parameters_in_cache(rnn) == num_params
    assert name in rnn._parameters
    assert rnn._flat_weights[i] is rnn._parameters[name]
    assert name in dict(rnn.named_parameters())
    assert {name + "_g", name + "_v"}.isdisjoint(dict(rnn.named_parameters()))
    # the forward uses the restored Parameter, not a stale computed weight
    with torch.no_grad():
        getattr(rnn, name).mul_(0.5)
    reference = make()
    reference.load_state_dict(rnn.state_dict())
    for _ in range(2):  # a stale weight's graph made the second backward fail
        out = rnn(x)[0]
        torch.testing.assert_close(out, reference(x)[0])
        out.sum().backward()


def test_rnn_outputs_unchanged_by_apply_and_remove() -> None:
    """Issue 11, item 3: outputs are the same before, during and after weight norm of an RNN."""
    torch.manual_seed(0)
    rnn = nn.LSTM(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    before = rnn(x)[0]
    wn.apply_weight_norm(rnn, recurrent=True)
    normed = rnn(x)[0]
    torch.testing.assert_close(normed, before)
    wn.fold(rnn)
    assert type(rnn) is nn.LSTM
    assert _parameters_in_cache(rnn) == len(rnn._flat_weights)
    torch.testing.assert_close(rnn(x)[0], normed)


def test_rnn_cache_after_deepcopy_pickle_and_to() -> None:
    """Issue 11, item 3: copies (whose cache __getstate__ stores as v) and ``.to()`` rebuild the
    cache of an RNN with the computed weights."""
    torch.manual_seed(0)
    rnn = wn.apply_weight_norm(nn.LSTM(3, 4, num_layers=2), recurrent=True)
    num_params = len(rnn._flat_weights)
    normed = [n for n in rnn._flat_weights_names if wn.is_weight_normed(rnn, n)]
    assert len(normed) == 4
    x = torch.randn(5, 2, 3)
    out = rnn(x)[0]
    for clone in (copy.deepcopy(rnn), pickle.loads(pickle.dumps(rnn))):
        assert _parameters_in_cache(clone) == num_params - len(normed)
        for n in normed:
            i = clone._flat_weights_names.index(n)
            assert torch.equal(clone._flat_weights[i], getattr(clone, n))
        assert torch.equal(clone(x)[0], out)
        clone(x)[0].sum().backward()
    rnn.double()
    assert _parameters_in_cache(rnn) == num_params - len(normed)
    assert all(w.dtype == torch.float64 for w in rnn._flat_weights)
    torch.testing.assert_close(rnn(x.double())[0], out.double())


def test_embedding() -> None:
    emb = wn.weight_norm(nn.Embedding(10, 4))
    idx = torch.tensor([[1, 2], [3, 9]])
    out = emb(idx)
    torch.testing.assert_close(out.norm(dim=-1), emb.weight_g.reshape(-1)[idx])


def test_nn_init_on_weight_takes_effect() -> None:
    # torch's parametrize version silently ignores this
    layer = wn.weight_norm(nn.Linear(4, 3))
    nn.init.constant_(layer.weight, 0.5)
    torch.testing.assert_close(layer.weight, torch.full((3, 4), 0.5))
    torch.testing.assert_close(layer.weight_g.detach(), torch.full((3, 1), 1.0))
    nn.init.eye_(layer.weight)
    assert torch.equal(layer.state_dict()["weight_v"], torch.eye(3, 4))


@pytest.mark.parametrize("grad", [True, False])
def test_nn_init_then_a_copy_keeps_the_init(grad: bool) -> None:
    """``init_weights(model); ema = copy.deepcopy(model)`` (or ``torch.save(model)``) with no
    read of the weight in between: the copy has the initialized weights."""
    layer = wn.weight_norm(nn.Linear(4, 3))
    with torch.set_grad_enabled(grad):
        nn.init.constant_(layer.weight, 0.5)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    for copied in (copy.deepcopy(layer), torch.load(buffer, weights_only=False)):
        torch.testing.assert_close(copied.weight, torch.full((3, 4), 0.5))
        torch.testing.assert_close(copied.weight_v, torch.full((3, 4), 0.5))


@pytest.mark.parametrize(
    "make", [lambda: wn.weight_norm(nn.Linear(4, 3)), lambda: wn.WNLinear(4, 3)]
)
def test_the_weight_read_by_forward_is_not_kept_between_steps(make: Any) -> None:
    """w lives as long as the graph needs it (as with parametrize), not until the next forward:
    a kept copy of every weight would add the model's size to a step's memory."""
    layer = make()
    kept: list[weakref.ref[torch.Tensor]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not t.is_leaf and t.numel() == 12:  # the w (or w.t()) F.linear saves for backward
            kept.append(weakref.ref(t if t._base is None else t._base))
        return t

    x = torch.randn(2, 4, requires_grad=True)  # so that F.linear saves w for grad_x
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    assert len(kept) == 1
    assert kept[0]() is not None
    out.sum().backward()
    del out
    gc.collect()
    assert kept[0]() is None
    # read outside forward, the weight is still kept for an in-place edit to write back
    nn.init.constant_(layer.weight, 0.25)
    torch.testing.assert_close(layer(torch.ones(1, 4)) - layer.bias, torch.ones(1, 3))


@pytest.mark.parametrize(
    "make",
    [
        lambda: wn.weight_norm(nn.Conv1d(2, 3, 3)),
        lambda: wn.WNConvTranspose1d(2, 3, 3),
        lambda: wn.weight_norm(nn.LSTM(2, 3), "weight_hh_l0"),
    ],
)
def test_forward_leaves_no_state_and_is_not_wrapped(make: Any) -> None:
    """Issue 14: the class's forward is torch's own function (no per-call wrapper or depth
    counter). Issue 27: nothing is kept of a weight handed out (no watch, no hook on its
    autograd node): after a training step and a read outside forward, the module's attributes
    are what they were, and an RNN's own cache holds plain tensors."""
    module = make()
    root = wn.fold(make()).__class__
    assert type(module).forward is root.forward
    before = dict(module.__dict__)
    x = torch.randn(2, 2, 5) if not isinstance(module, nn.LSTM) else torch.randn(5, 1, 2)
    out = module(x)
    (out[0] if isinstance(out, tuple) else out).sum().backward()
    name = next(iter(wn.weight_norm_specs(module)))
    w = getattr(module, name)  # outside forward: a tied weight, a logger, nn.init
    assert w.grad_fn is not None
    assert set(module.__dict__) == set(before)
    for key, value in before.items():
        if key != "_flat_weights":
            assert module.__dict__[key] is value, key
    if isinstance(module, nn.LSTM):
        assert all(type(t) in (torch.Tensor, nn.Parameter) for t in module._flat_weights)


@pytest.mark.parametrize(
    "make",
    [
        lambda: wn.weight_norm(nn.Conv1d(2, 3, 3)),
        lambda: wn.WNLinear(5, 3),
        lambda: wn.weight_norm(nn.LSTM(5, 3), "weight_ih_l0"),
    ],
)
def test_training_steps_leave_no_tensor_behind(make: Any) -> None:
    """A reference cycle through an autograd node (Python's collector cannot see into one)
    would keep every weight of every step alive: count the tensors Python holds around 20
    steps, with and without a graph, with the collector off."""
    module = make()
    x = torch.randn(1, 5) if isinstance(module, nn.Linear) else torch.randn(3, 2, 5)
    if isinstance(module, nn.Conv1d):
        x = torch.randn(2, 2, 5)

    def step() -> None:
        out = module(x)
        (out[0] if isinstance(out, tuple) else out).sum().backward()
        with torch.no_grad():
            module(x)
        getattr(module, next(iter(wn.weight_norm_specs(module))))

    step()
    gc.collect()
    gc.disable()
    try:
        before = sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects())
        for _ in range(20):
            step()
        after = sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects())
    finally:
        gc.enable()
    assert after - before <= 1, f"{after - before} tensors left behind by 20 steps"


def test_a_weight_read_in_forward_is_freed_when_the_backward_pass_releases_it() -> None:
    """Nothing but the graph holds a weight read in forward: the consumer's backward releases
    it, before the weight norm's own backward allocates grad_v (0.2.0's watch held it until
    then and raised the MLP's peak step memory by 8%)."""
    layer = wn.weight_norm(nn.Linear(64, 64))
    x = torch.randn(8, 64, requires_grad=True)  # (so that linear saves the weight)
    w = layer.weight
    storage = StorageWeakRef(w.untyped_storage())
    freed: list[bool] = []
    cast(Any, w.grad_fn).register_prehook(lambda _: freed.append(storage.expired()))
    out = nn.functional.linear(x, w)
    del w
    out.sum().backward()
    assert freed == [True]


def test_forward_keeps_its_signature_and_recovers_from_errors() -> None:
    layer = wn.weight_norm(nn.Conv1d(2, 3, 3))
    assert inspect.signature(layer.forward) == inspect.signature(nn.Conv1d(2, 3, 3).forward)
    layer(torch.randn(2, 2, 7)).sum().backward()
    with pytest.raises(RuntimeError, match=r"expected input.* to have 2 channels"):
        layer(torch.randn(2, 5, 7))  # wrong channel count
    nn.init.constant_(layer.weight, 1.0)  # outside forward again: written back
    torch.testing.assert_close(layer.state_dict()["weight_v"], torch.ones(3, 2, 3))


def test_assigning_the_weight_reparameterizes_it() -> None:
    layer = wn.weight_norm(nn.Linear(2, 2))
    g_object = layer.weight_g
    layer.weight = nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
    assert layer.weight_g is g_object
    torch.testing.assert_close(layer.weight_g.detach().reshape(-1), torch.tensor([5.0, 2.0]))
    torch.testing.assert_close(layer.weight, torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
    with pytest.raises(wn.WeightNormError, match=r"tensor of shape \(2, 2\), got shape \(3,\)"):
        layer.weight = torch.ones(3)


def test_parity_with_torch_parametrize(case: Case) -> None:
    torch.manual_seed(0)
    base = case.build()
    dim = wn.default_dim(base)[0]
    if case.id.endswith("grouped") and "transpose" in case.id:
        pytest.skip("torch cannot express per-output-unit norm of a grouped ConvTranspose")
    ours = wn.weight_norm(copy.deepcopy(base))
    theirs = nn.utils.parametrizations.weight_norm(copy.deepcopy(base), dim=dim)
    x = case.input()
    out_ours, out_theirs = ours(x), theirs(x)
    torch.testing.assert_close(out_ours, out_theirs)
    grad = torch.randn_like(out_ours)
    out_ours.backward(grad)
    out_theirs.backward(grad)
    pt = theirs.parametrizations.weight
    torch.testing.assert_close(ours.weight_g.grad, pt.original0.grad)
    torch.testing.assert_close(ours.weight_v.grad, pt.original1.grad)


def test_gradcheck_through_every_layer_type(case: Case) -> None:
    layer = wn.weight_norm(case.build(torch.float64))
    x = case.input().double().requires_grad_(True)
    g = layer.weight_g.detach().clone().requires_grad_(True)
    v = layer.weight_v.detach().clone().requires_grad_(True)

    def fn(g_: torch.Tensor, v_: torch.Tensor, x_: torch.Tensor) -> torch.Tensor:
        return functional_call(layer, {"weight_g": g_, "weight_v": v_}, (x_,))

    assert torch.autograd.gradcheck(fn, (g, v, x))


def test_torch_func_grad_matches_autograd() -> None:
    torch.manual_seed(0)
    layer = wn.weight_norm(nn.Linear(3, 2))
    x = torch.randn(4, 3)
    params = {k: p.detach() for k, p in layer.named_parameters()}

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(layer, p, (x,)).pow(2).sum()

    grads = torch.func.grad(loss)(params)
    layer(x).pow(2).sum().backward()
    for k, p in layer.named_parameters():
        torch.testing.assert_close(grads[k], p.grad)


# --- torch.func.functional_call with the computed weight (issue 11, item 5) -------------------


def test_functional_call_with_the_weight_uses_it_and_leaves_g_and_v_alone(case: Case) -> None:
    """Issue 11, item 5: functional_call(m, {"weight": W}, x) wrote W into g and v (through
    __setattr__), W got no gradient and the backward failed with an in-place modification error.
    Now W is the weight inside the call, gradients reach W, and g and v are untouched."""
    layer = wn.weight_norm(case.build())
    g, v = layer.weight_g, layer.weight_v
    g0, v0, w0 = g.detach().clone(), v.detach().clone(), layer.weight.detach().clone()
    plain = wn.fold(copy.deepcopy(layer))
    x = case.input()
    W = torch.randn_like(w0, requires_grad=True)
    W_ref = W.detach().clone().requires_grad_(True)

    out = functional_call(layer, {"weight": W}, (x,))
    expected = functional_call(plain, {"weight": W_ref}, (x,))
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(W.grad, W_ref.grad)
    assert layer.weight_g is g
    assert layer.weight_v is v
    assert torch.equal(g.detach(), g0)
    assert torch.equal(v.detach(), v0)
    assert g.grad is None
    assert v.grad is None
    assert torch.equal(layer.weight.detach(), w0)  # g v/||v|| again
    assert layer._parameters["weight"] is None  # nothing left swapped in
    # a plain assignment still reparameterizes
    layer.weight = w0 * 2.0
    torch.testing.assert_close(layer.weight_g.detach(), g0 * 2.0)


@pytest.mark.parametrize("inner", ["other", "same"])
def test_nested_functional_call_with_the_weight(inner: str) -> None:
    """Issue 11, item 5: nested functional_calls swap the weight in and back out, innermost
    first, each seeing its own tensor; afterwards the weight is computed from g and v again."""
    torch.manual_seed(0)
    layer = wn.weight_norm(nn.Linear(3, 2))
    g0, v0 = layer.weight_g.detach().clone(), layer.weight_v.detach().clone()
    w1 = torch.randn(2, 3, requires_grad=True)
    w2 = w1 if inner == "same" else torch.randn(2, 3, requires_grad=True)

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            seen = self.layer.weight
            inner_out = functional_call(self.layer, {"weight": w2}, (x,))
            assert self.layer.weight is seen
            return self.layer(x), inner_out, seen

    x = torch.randn(4, 3)
    out, inner_out, seen = functional_call(Probe(), {"layer.weight": w1}, (x,))
    assert seen is w1
    torch.testing.assert_close(out, x @ w1.T + layer.bias)
    torch.testing.assert_close(inner_out, x @ w2.T + layer.bias)
    (out.sum() + inner_out.sum()).backward()
    assert w1.grad is not None
    assert w2.grad is not None
    assert torch.equal(layer.weight_g.detach(), g0)
    assert torch.equal(layer.weight_v.detach(), v0)
    torch.testing.assert_close(layer.weight, g0 * v0 / v0.norm(dim=1, keepdim=True))
    assert layer._parameters["weight"] is None  # nothing left swapped in


def test_functional_call_with_g_and_v() -> None:
    """Issue 11, item 5: functional_call with {"weight_g": G, "weight_v": V} (through
    ``_parameters``) computes the weight from G and V, with gradients to both."""
    torch.manual_seed(0)
    layer = wn.weight_norm(nn.Linear(3, 2))
    g0, v0 = layer.weight_g.detach().clone(), layer.weight_v.detach().clone()
    G = torch.rand(2, 1, requires_grad=True)
    V = torch.randn(2, 3, requires_grad=True)
    x = torch.randn(4, 3)
    out = functional_call(layer, {"weight_g": G, "weight_v": V}, (x,))
    torch.testing.assert_close(out, x @ F.weight_norm(V, G).T + layer.bias)
    out.sum().backward()
    assert G.grad is not None
    assert V.grad is not None
    assert torch.equal(layer.weight_g.detach(), g0)
    assert torch.equal(layer.weight_v.detach(), v0)


def test_func_grad_and_vmap_over_functional_call_with_the_weight() -> None:
    """Issue 11, item 5: torch.func.grad and vmap over functional_call(m, {"weight": W})."""
    torch.manual_seed(0)
    layer = wn.weight_norm(nn.Linear(3, 2))
    x = torch.randn(4, 3)
    b = layer.bias.detach()
    W = torch.randn(2, 3)

    def loss(w: torch.Tensor) -> torch.Tensor:
        return functional_call(layer, {"weight": w}, (x,)).pow(2).sum()

    W_ref = W.clone().requires_grad_(True)
    (x @ W_ref.T + b).pow(2).sum().backward()
    torch.testing.assert_close(torch.func.grad(loss)(W), W_ref.grad)

    Ws = torch.randn(5, 2, 3)
    out = torch.func.vmap(lambda w: functional_call(layer, {"weight": w}, (x,)))(Ws)
    torch.testing.assert_close(out, torch.stack([x @ w.T + layer.bias for w in Ws]))
    per_sample = torch.func.vmap(torch.func.grad(loss))(Ws)
    torch.testing.assert_close(per_sample[1], torch.func.grad(loss)(Ws[1]))
    assert layer._parameters["weight"] is None  # nothing left swapped in


def test_ensembling_with_stack_module_state_and_vmap() -> None:
    """Issue 11, item 5: model ensembling (stack_module_state, vmap over functional_call)."""
    torch.manual_seed(0)
    models = [nn.Sequential(wn.WNLinear(3, 5), nn.Tanh(), wn.WNLinear(5, 2)) for _ in range(3)]
    params, buffers = torch.func.stack_module_state(models)  # type: ignore[arg-type]
    base = copy.deepcopy(models[0])
    x = torch.randn(4, 3)

    def run(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))

    out = torch.func.vmap(run)(params, buffers)
    torch.testing.assert_close(out, torch.stack([m(x) for m in models]))


def test_functional_call_with_a_recurrent_weight() -> None:
    """Issue 11, item 5: an RNN reads its weights through its cache: the swapped one is used."""
    torch.manual_seed(0)
    rnn = wn.weight_norm(nn.LSTM(3, 4), "weight_hh_l0")
    g0 = rnn.weight_hh_l0_g.detach().clone()
    W = torch.randn(16, 4, requires_grad=True)
    x = torch.randn(5, 2, 3)
    out = functional_call(rnn, {"weight_hh_l0": W}, (x,))[0]
    reference = nn.LSTM(3, 4)
    state = wn.fold(copy.deepcopy(rnn)).state_dict()
    state["weight_hh_l0"] = W.detach()
    reference.load_state_dict(state)
    torch.testing.assert_close(out, reference(x)[0])
    out.sum().backward()
    assert W.grad is not None
    assert torch.equal(rnn.weight_hh_l0_g.detach(), g0)


def test_functional_call_fills_the_parameter_slot() -> None:
    """Issue 20: no frame inspection. A normalized weight keeps its slot in ``_parameters``
    (None); torch's swap_tensor fills it for the call (tests/test_torch_internals pins that it
    writes ``_parameters`` directly), the property returns what fills it, and every copy of
    the module has its own empty slot."""
    layer = wn.weight_norm(nn.Linear(3, 2))
    assert "weight" in layer._parameters
    assert layer._parameters["weight"] is None
    assert "weight" not in dict(layer.named_parameters())
    assert "weight" not in layer.state_dict()
    W = torch.randn(2, 3)
    seen: list[torch.Tensor] = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self) -> None:
            seen.append(self.layer.weight)
            seen.append(self.layer._parameters["weight"])

    functional_call(Probe(), {"layer.weight": W}, ())
    assert seen[0] is W
    assert seen[1] is W
    assert layer._parameters["weight"] is None
    for other in (copy.deepcopy(layer), copy.copy(layer), pickle.loads(pickle.dumps(layer))):
        assert other._parameters["weight"] is None
    assert wn.WNLinear(3, 2)._parameters["weight"] is None
    assert wn.remove_weight_norm(layer)._parameters["weight"] is layer.weight


@pytest.mark.slow
def test_compiled_functional_call_with_the_weight() -> None:
    """Issue 11, item 5, under torch.compile (the swap itself runs outside the graph). swap_tensor
    reads the weight before it swaps: that compiled read must not be reused inside the call."""
    torch.manual_seed(0)
    layer = wn.weight_norm(nn.Linear(3, 2))
    g0, v0 = layer.weight_g.detach().clone(), layer.weight_v.detach().clone()
    x = torch.randn(4, 3)
    compiled = torch.compile(lambda w, x_: functional_call(layer, {"weight": w}, (x_,)))
    for _ in range(2):  # the second call, with another W, runs the cached code
        W = torch.randn(2, 3, requires_grad=True)
        out = compiled(W, x)
        torch.testing.assert_close(out, x @ W.T + layer.bias)
        out.sum().backward()
        assert W.grad is not None
        torch.testing.assert_close(W.grad, torch.ones(4, 2).T @ x)
    assert torch.equal(layer.weight_g.detach(), g0)
    assert torch.equal(layer.weight_v.detach(), v0)
    assert layer.weight_g.grad is None
    assert layer.weight_v.grad is None
    torch.testing.assert_close(layer.weight, g0 * v0 / v0.norm(dim=1, keepdim=True))
    assert layer._parameters["weight"] is None


# --- misuse -----------------------------------------------------------------------------------


def test_applying_twice_raises() -> None:
    layer = wn.weight_norm(nn.Linear(2, 2))
    with pytest.raises(wn.WeightNormError, match="already weight-normalized"):
        wn.weight_norm(layer)


def test_applying_over_torch_weight_norm_raises() -> None:
    layer = nn.utils.parametrizations.weight_norm(nn.Linear(2, 2))
    with pytest.raises(wn.WeightNormError, match="torch's parametrize weight norm"):
        wn.weight_norm(layer)


def test_unknown_parameter_name_raises() -> None:
    with pytest.raises(wn.WeightNormError, match=r"no parameter 'wieght'.*weight, bias"):
        wn.weight_norm(nn.Linear(2, 2), "wieght")


@pytest.mark.parametrize("cls", [nn.Embedding, nn.EmbeddingBag])
def test_sparse_embedding_raises(cls: type[nn.Module]) -> None:
    """A sparse gradient cannot flow through g * v/||v|| (computed whole): refused up front,
    where torch's weight norm crashes in the backward."""
    with pytest.raises(wn.WeightNormError, match=r"sparse=True.*expected sparse=False"):
        wn.weight_norm(cls(10, 4, sparse=True))
    torch_wn = nn.utils.parametrizations.weight_norm(nn.Embedding(10, 4, sparse=True))
    with pytest.raises(RuntimeError):
        torch_wn(torch.tensor([1, 2])).sum().backward()
    layer = wn.weight_norm(cls(10, 4))  # the dense one works
    out = layer(torch.tensor([[1, 2]])) if cls is nn.EmbeddingBag else layer(torch.tensor([1, 2]))
    out.sum().backward()
    assert layer.weight_v.grad is not None


def test_missing_bias_raises() -> None:
    with pytest.raises(wn.WeightNormError, match="bias is None"):
        wn.weight_norm(nn.Linear(2, 2, bias=False), "bias")


def test_lazy_module_raises() -> None:
    with pytest.raises(wn.WeightNormError, match=r"uninitialized.*forward pass"):
        wn.weight_norm(nn.LazyLinear(3))


@pytest.mark.parametrize("dim", [2, -3, 7])
def test_dim_out_of_range_raises(dim: int) -> None:
    with pytest.raises(wn.WeightNormError, match=rf"shape \(2, 3\).*got {dim}"):
        wn.weight_norm(nn.Linear(3, 2), dim=dim)


def test_bad_dim_type_raises() -> None:
    with pytest.raises(wn.WeightNormError, match="dim must be an int, None or 'output'"):
        wn.weight_norm(nn.Linear(3, 2), dim="input")  # type: ignore[arg-type]


def test_removal_where_there_is_none_raises() -> None:
    with pytest.raises(wn.WeightNormError, match="not weight-normalized"):
        wn.remove_weight_norm(nn.Linear(2, 2))


def test_not_a_module_raises() -> None:
    with pytest.raises(TypeError, match=r"expected an nn\.Module, got Tensor"):
        wn.weight_norm(torch.ones(2))  # type: ignore[type-var]


def test_negative_dim_means_last_dimension() -> None:
    layer = wn.weight_norm(nn.Linear(3, 2), dim=-1)
    assert layer.weight_g.shape == (1, 3)
    assert wn.weight_norm_specs(layer)["weight"].dim == 1


def test_several_parameters_of_one_module() -> None:
    layer = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    before = layer(x)
    wn.weight_norm(layer, "weight")
    wn.weight_norm(layer, "bias", dim=None)
    torch.testing.assert_close(layer(x), before)
    clone = pickle.loads(pickle.dumps(layer))
    torch.testing.assert_close(clone(x), before)
    wn.remove_weight_norm(layer, "weight")
    assert wn.is_weight_normed(layer, "bias")
    assert not wn.is_weight_normed(layer)
    wn.remove_weight_norm(layer, "bias")
    assert type(layer) is nn.Linear
    torch.testing.assert_close(layer(x), before)


def test_g_shape_matches_functional(case: Case) -> None:
    layer = case.build()
    dim, groups = wn.default_dim(layer)
    wn.weight_norm(layer)
    assert layer.weight_g.shape == F.g_shape(layer.weight_v.shape, dim, groups)
