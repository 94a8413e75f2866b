"""g and v are the module's truth at every instant (issue 27): a change to the weight is written
into them before the operation that made it returns, or refused at once; nothing is pending.

The stateful test drives a weight-normalized layer and an independent reference (plain tensors
g and v, updated eagerly by the formula) through random sequences of what users do, and checks
what every consumer reads after each step."""

from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from torch import nn
from torch.nn.utils import parameters_to_vector

import weightnorm as wn
from launch import launch
from truth_worker import ddp_init_worker


def formula(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """An independent ``g v/||v||`` per row of a Linear weight, in float64."""
    v64 = v.double()
    return (g.double().reshape(-1, 1) * v64 / v64.norm(dim=1, keepdim=True)).to(v.dtype)


def split(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, v) = (||w||, w)`` per row: what writing ``w`` into a layer must give."""
    return w.double().norm(dim=1).to(w.dtype), w.clone()


# --- the stateful property --------------------------------------------------------------------

INITS = {
    "normal": lambda w: nn.init.normal_(w, 0.0, 0.05),
    "uniform": lambda w: nn.init.uniform_(w, -0.3, 0.3),
    "kaiming": lambda w: nn.init.kaiming_uniform_(w, a=5**0.5),
    "orthogonal": nn.init.orthogonal_,
    "trunc_normal": lambda w: nn.init.trunc_normal_(w, std=0.2),
    "xavier": nn.init.xavier_normal_,
}


@settings(
    max_examples=30,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
class TruthMachine(RuleBasedStateMachine):
    """A WN Linear(5, 4) against reference tensors ``g``, ``v``; every rule changes both (or
    neither, when the library must refuse) and the invariants compare what consumers read."""

    @initialize(seed=st.integers(0, 2**16))
    def build(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.layer = wn.weight_norm(nn.Linear(5, 4))
        self.g = self.layer.weight_g.detach().reshape(-1).clone()
        self.v = self.layer.weight_v.detach().clone()
        self.generator = torch.Generator().manual_seed(seed)

    def _set_reference(self, w: torch.Tensor) -> None:
        self.g, self.v = split(w.detach().to(self.v.dtype))

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator).to(self.v.dtype)

    @rule(init=st.sampled_from(sorted(INITS)), grad=st.booleans())
    def initialize_the_weight(self, init: str, grad: bool) -> None:
        with torch.set_grad_enabled(grad):
            w = self.layer.weight
            INITS[init](w)
        self._set_reference(w)

    @rule(row=st.integers(0, 3), value=st.floats(-2, 2).filter(lambda x: abs(x) > 0.1))
    def write_a_row_through_a_view(self, row: int, value: float) -> None:
        with torch.no_grad():
            w = self.layer.weight
            w[row].fill_(value)
        self._set_reference(w)

    @rule(scale=st.floats(0.25, 4))
    def scale_through_data(self, scale: float) -> None:
        w = self.layer.weight.data
        w.mul_(scale)
        self._set_reference(w)

    @rule()
    def assign_data(self) -> None:
        """peft's merge: ``base_layer.weight.data = merged``."""
        new = self._randn(4, 5)
        self.layer.weight.data = new
        self._set_reference(new)

    @rule()
    def assign_the_weight(self) -> None:
        new = self._randn(4, 5)
        self.layer.weight = new
        self._set_reference(new)

    @rule(lr=st.floats(0.01, 0.5))
    def optimizer_step(self, lr: float) -> None:
        opt = torch.optim.SGD([self.layer.weight_g, self.layer.weight_v], lr=lr)
        grad_g, grad_v = self._randn(4, 1), self._randn(4, 5)
        self.layer.weight_g.grad, self.layer.weight_v.grad = grad_g, grad_v
        opt.step()
        self.g = self.g - lr * grad_g.reshape(-1)
        self.v = self.v - lr * grad_v

    @rule()
    def a_stale_weight_is_refused(self) -> None:
        w = self.layer.weight
        with torch.no_grad():
            self.layer.weight_g.mul_(1.5)
        self.g = self.g * 1.5
        with pytest.raises(wn.WeightNormError, match="read weight again"):
            nn.init.zeros_(w)

    @rule(kind=st.sampled_from(["deepcopy", "pickle", "torch.save", "state_dict"]))
    def copy_the_module(self, kind: str) -> None:
        if kind == "deepcopy":
            self.layer = copy.deepcopy(self.layer)
        elif kind == "pickle":
            self.layer = pickle.loads(pickle.dumps(self.layer))
        elif kind == "torch.save":
            buffer = io.BytesIO()
            torch.save(self.layer, buffer)
            buffer.seek(0)
            self.layer = torch.load(buffer, weights_only=False)
        else:
            fresh = wn.weight_norm(nn.Linear(5, 4)).to(self.v.dtype)
            fresh.load_state_dict(self.layer.state_dict())
            self.layer = fresh

    @rule(dtype=st.sampled_from([torch.float64, torch.float32]))
    def move(self, dtype: torch.dtype) -> None:
        self.layer.to(dtype)
        self.g, self.v = self.g.to(dtype), self.v.to(dtype)

    @rule()
    def functional_call_with_another_weight(self) -> None:
        other, x = self._randn(4, 5), self._randn(2, 5)
        out = torch.func.functional_call(self.layer, {"weight": other}, (x,))
        torch.testing.assert_close(out, x @ other.T + self.layer.bias)

    @precondition(lambda self: hasattr(self, "layer"))
    @invariant()
    def every_consumer_reads_the_reference(self) -> None:
        dtype = self.v.dtype
        tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
        named = dict(self.layer.named_parameters())
        torch.testing.assert_close(named["weight_g"].detach().reshape(-1), self.g, **tol)
        torch.testing.assert_close(named["weight_v"].detach(), self.v, **tol)
        state = self.layer.state_dict()
        torch.testing.assert_close(state["weight_v"], self.v, **tol)
        flat = parameters_to_vector(self.layer.parameters())
        torch.testing.assert_close(flat[4:8], self.g, **tol)  # [bias, weight_g, weight_v]
        torch.testing.assert_close(self.layer.weight.detach(), formula(self.g, self.v), **tol)
        ema = torch.optim.swa_utils.AveragedModel(self.layer)
        torch.testing.assert_close(ema.module.weight_v.detach(), self.v, **tol)


TestTruth = TruthMachine.TestCase


# --- what each consumer sees right after an in-place change -----------------------------------


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    mlp = nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    return wn.apply_weight_norm(mlp), torch.randn(256, 20) * 3 + 1


def _paper_cnn() -> tuple[nn.Module, torch.Tensor]:
    from weightnorm.experiments.models import paper_cnn

    cnn = paper_cnn(1, 10, widths=(8, 16), dropout=0.0, noise=0.0)
    return wn.apply_weight_norm(cnn), torch.randn(64, 1, 40) * 2


def _vocoder() -> tuple[nn.Module, torch.Tensor]:
    zoo = pytest.importorskip("weightnorm.experiments.zoo")
    spec = zoo.ZOO["speecht5-hifigan"]
    if zoo.missing_packages([spec.name]):
        pytest.skip(zoo.install_hint([spec.name]))
    model = wn.apply_weight_norm(wn.fold(spec.build()))  # (per output unit, ConvTranspose too)
    (x,), _ = spec.inputs(0)
    return model, x


@pytest.mark.parametrize("build", [_mlp, _paper_cnn, _vocoder], ids=["mlp", "paper-cnn", "hifigan"])
def test_the_papers_recipe_standardizes_every_unit(build: Any) -> None:
    """Section 3: v ~ N(0, 0.05) by nn.init (no no_grad), then data-dependent init: every unit
    of every normalized layer has mean 0 and std 1 on the init batch (0.2.0 gave std up to
    245: the init was still pending when data init read g and v)."""
    torch.manual_seed(0)
    model, x = build()
    layers = [m for m in model.modules() if wn.is_weight_normed(m)]
    for m in layers:
        nn.init.normal_(m.weight, 0, 0.05)
    wn.data_dependent_init(model, x)
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _a, out: seen.append(out)) for m in layers]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    assert len(seen) >= len(layers)
    for out in seen:
        axis = -1 if out.ndim == 2 else 1  # (batch, features) or (batch, channels, ...)
        units = out.movedim(axis, -1).reshape(-1, out.shape[axis]).double()
        zeros, ones = torch.zeros_like(units[0]), torch.ones_like(units[0])
        torch.testing.assert_close(units.mean(0), zeros, atol=1e-2, rtol=0)
        torch.testing.assert_close(units.std(0, unbiased=False), ones, atol=1e-2, rtol=0)


@pytest.mark.parametrize("move", ["to", "float", "double", "half-and-back"])
def test_a_move_right_after_an_init_keeps_it(move: str) -> None:
    """``model.apply(init); model.to(dev)``: 0.2.0 dropped the init (``_apply`` cleared it)."""
    layer = wn.weight_norm(nn.Linear(4, 3))
    nn.init.constant_(layer.weight, 0.5)
    if move == "to":
        layer.to("cpu", torch.float64)
    elif move == "float":
        layer.float()
    elif move == "double":
        layer.double()
    else:
        layer.half().float()
    v, g = layer.weight_v.detach().double(), layer.weight_g.detach().double().reshape(-1)
    torch.testing.assert_close(v, torch.full((3, 4), 0.5, dtype=torch.float64))
    torch.testing.assert_close(g, torch.ones(3, dtype=torch.float64))


def test_named_parameters_and_vector_see_an_init_at_once() -> None:
    layer = wn.weight_norm(nn.Linear(4, 3))
    nn.init.constant_(layer.weight, 0.5)  # no read of the weight after it
    params = dict(layer.named_parameters())
    assert torch.equal(params["weight_v"].detach(), torch.full((3, 4), 0.5))
    assert torch.equal(parameters_to_vector([layer.weight_g]), torch.ones(3))


def test_consumers_that_read_g_and_v_directly() -> None:
    """Fold, the optimizer-level conversion, forced weight norm, data init and an EMA built
    right after an init all start from it."""
    for consumer in ("fold", "optimizer", "ema", "remove"):
        layer = wn.weight_norm(nn.Linear(4, 3))
        nn.init.eye_(layer.weight)
        if consumer == "fold":
            assert torch.equal(wn.fold(layer).weight.detach(), torch.eye(3, 4))
        elif consumer == "remove":
            assert torch.equal(wn.remove_weight_norm(layer).weight.detach(), torch.eye(3, 4))
        elif consumer == "optimizer":
            plain = wn.fold(copy.deepcopy(layer))
            wn.optim.WeightNormOptimizer(plain, lambda p: torch.optim.SGD(p, lr=0.1))
            assert torch.equal(plain.weight.detach(), torch.eye(3, 4))
        else:
            ema = torch.optim.swa_utils.AveragedModel(layer)
            assert torch.equal(ema.module.weight_v.detach(), torch.eye(3, 4))


def test_init_inside_an_rnn_and_a_conv_transpose() -> None:
    lstm = wn.weight_norm(nn.LSTM(3, 4), "weight_hh_l0")
    nn.init.orthogonal_(lstm.weight_hh_l0)
    q = lstm.weight_hh_l0.detach()
    torch.testing.assert_close(q.T @ q, torch.eye(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(lstm.weight_hh_l0_v.detach(), q)
    assert lstm._flat_weights[1] is not None
    torch.testing.assert_close(lstm._flat_weights[1], q)  # its cache between forwards
    up = wn.WNConvTranspose1d(4, 6, 3)
    nn.init.constant_(up.weight, 0.25)  # 4 * 3 entries per output channel
    torch.testing.assert_close(up.weight_g.detach().reshape(-1), torch.full((6,), 0.25 * 12**0.5))


def test_a_computed_weight_is_an_ordinary_tensor_elsewhere() -> None:
    layer = wn.weight_norm(nn.Linear(4, 3))
    w = layer.weight
    out = layer(torch.randn(2, 4))
    assert type(out) is torch.Tensor
    assert type(w.clone()) is torch.Tensor
    assert type(w * 2) is torch.Tensor
    assert repr(w).startswith("tensor(")
    for param in (nn.Parameter(layer.weight), nn.Parameter(layer.weight.detach())):
        assert type(param) is nn.Parameter  # a plain Parameter: no longer tied
        with torch.no_grad():
            param.mul_(0)
        assert layer.weight_g.abs().min() > 0
    if hasattr(nn, "Buffer"):  # (torch >= 2.5)
        buffer_ = nn.Buffer(layer.weight)
        assert type(buffer_) is torch.Tensor
        with torch.no_grad():
            buffer_.mul_(0)
        assert layer.weight_g.abs().min() > 0
    detached = layer.weight.detach()  # a value, not a handle on the module
    detached.zero_()
    assert layer.weight_g.abs().min() > 0
    other = nn.Linear(4, 3)
    other.register_buffer("anchor", layer.weight.detach())  # e.g. a teacher's weight kept
    other.load_state_dict({**other.state_dict(), "anchor": torch.zeros(3, 4)})
    assert layer.weight_g.abs().min() > 0  # the load did not reach the teacher
    buffer = io.BytesIO()
    torch.save(layer.weight.detach(), buffer)  # the module is not pickled with it
    assert len(buffer.getvalue()) < 2000
    buffer.seek(0)
    assert type(torch.load(buffer, weights_only=True)) is torch.Tensor
    assert type(copy.deepcopy(layer.weight.detach())) is torch.Tensor
    torch.testing.assert_close(layer.weight, layer.weight_v)  # (compares with a Parameter)


def test_deepcopy_of_several_computed_weights() -> None:
    """Each copy is its own weight's (the memo is keyed by the weight, not by a passing alias)."""
    layers = [wn.weight_norm(nn.Linear(3, 2)) for _ in range(4)]
    with torch.no_grad():
        weights = [m.weight for m in layers]
    copies = copy.deepcopy(weights)
    assert len({id(c) for c in copies}) == 4
    for c, w in zip(copies, weights, strict=True):
        assert type(c) is torch.Tensor
        assert torch.equal(c, w)
    pair = copy.deepcopy([weights[0], weights[0]])
    assert pair[0] is pair[1]  # (one tensor twice stays one tensor)


def test_reading_under_inference_mode_changes_nothing() -> None:
    """Only an in-place change is written back (an inference tensor has no version counter)."""
    layer = wn.weight_norm(nn.Linear(4, 3))
    with torch.no_grad():
        layer.weight_v.mul_(5)  # ||v|| != g: a write-back would show
    v = layer.weight_v.detach().clone()
    with torch.inference_mode():
        w = layer.weight
        _ = (w.shape, w.dtype, w.T, w * 2, w[0], w.sum(), repr(w))
        layer(torch.randn(2, 4))
    assert torch.equal(layer.weight_v.detach(), v)
    with torch.inference_mode():
        torch.mul(torch.ones(3, 4), 2.0, out=layer.weight)  # an out= write is a change
    assert torch.equal(layer.weight_v.detach(), torch.full((3, 4), 2.0))


def test_data_assignment_on_a_view_is_refused() -> None:
    layer = wn.weight_norm(nn.Linear(4, 3))
    g = layer.weight_g.detach().clone()
    with pytest.raises(wn.WeightNormError, match="assign the whole weight"):
        layer.weight[0].data = torch.zeros(4)
    assert torch.equal(layer.weight_g.detach(), g)


def test_a_weight_read_before_removal_is_refused() -> None:
    layer = wn.weight_norm(nn.Linear(4, 3))
    w = layer.weight
    wn.remove_weight_norm(layer)
    with pytest.raises(wn.WeightNormError, match="read weight again"), torch.no_grad():
        w.zero_()
    assert layer.weight.abs().sum() > 0


def test_a_forward_leaves_nothing_in_the_module() -> None:
    """No pending record, no hook, no cache: a module's state after a training step is its
    state before (but for gradients)."""
    layer = wn.weight_norm(nn.Conv1d(2, 3, 3))
    before = set(layer.__dict__)
    layer(torch.randn(2, 2, 7)).sum().backward()
    nn.init.normal_(layer.weight)
    assert set(layer.__dict__) == before
    assert not layer._forward_pre_hooks
    assert not layer._forward_hooks


def test_inference_mode_init_is_written() -> None:
    layer = wn.weight_norm(nn.Linear(4, 3))
    with torch.inference_mode():
        nn.init.constant_(layer.weight, 2.0)
    assert torch.equal(layer.weight_v.detach(), torch.full((3, 4), 2.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_a_zero_row_gives_finite_gradients_in_every_dtype(dtype: torch.dtype) -> None:
    """Issue 27, item 5: fp16 gave inf in grad_v (fp32 ~4e11)."""
    layer = wn.weight_norm(nn.Linear(4, 3)).to(dtype)
    with torch.no_grad():
        layer.weight_v[1].zero_()
    out = layer(torch.randn(2, 4, dtype=dtype))
    out.float().sum().backward()
    assert torch.isfinite(layer.weight_v.grad).all()
    assert torch.isfinite(layer.weight_g.grad).all()
    assert torch.isfinite(out).all()


# --- DDP: replicas initialized differently end equal ------------------------------------------


def test_ddp_replicas_are_equal_after_a_per_rank_init(tmp_path: Path) -> None:
    """Two gloo ranks seeded differently, nn.init on the weights, then DDP: DDP broadcasts
    rank 0's g and v, and nothing written later makes the replicas differ (0.2.0: by 4.3)."""
    launch(ddp_init_worker, 2, (str(tmp_path),), timeout=240)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert list(first) == list(second)
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda **kw: nn.Linear(4, 3, **kw), "weight"),
        (lambda **kw: nn.Conv1d(2, 3, 3, **kw), "weight"),
        (lambda **kw: nn.LSTM(3, 4, **kw), "weight_hh_l0"),
    ],
    ids=["linear", "conv1d", "lstm"],
)
def test_reset_parameters_draws_v_as_a_plain_weight_and_sets_g(make: Any, name: str) -> None:
    """``to_empty`` then ``reset_parameters`` (the meta-device recipe): ``v`` is what the plain
    layer draws with the same seed, ``g = ||v||`` (an LSTM's g not drawn from its uniform)."""
    plain = make()
    module = wn.weight_norm(make(device="meta"), name)
    module.to_empty(device="cpu")
    for m in (plain, module):
        torch.manual_seed(0)
        m.reset_parameters()
    v, g = getattr(module, name + "_v").detach(), getattr(module, name + "_g").detach()
    assert torch.equal(v, getattr(plain, name).detach())
    torch.testing.assert_close(g.reshape(-1), v.flatten(1).norm(dim=1))
    torch.testing.assert_close(getattr(module, name).detach(), v)


def test_reset_parameters_of_a_layer_normalized_twice_over() -> None:
    """A WN layer with a second name normalized (two owners of the override in its classes)."""
    layer = wn.weight_norm(wn.WNLinear(4, 3), "bias", dim=None)
    layer.reset_parameters()
    torch.testing.assert_close(layer.weight.detach(), layer.weight_v.detach())


@pytest.mark.filterwarnings("ignore:DTensor random operators:UserWarning")  # (on a CPU mesh)
def test_fsdp2_construction_after_an_init_and_its_meta_recipe(tmp_path: Path) -> None:
    """fully_shard right after nn.init shards the initialized g and v; a change to the sharded
    (DTensor) weight reaches them; and the meta-device recipe (build on meta, fully_shard,
    to_empty, reset_parameters) initializes the sharded v and g (one rank)."""
    fsdp = pytest.importorskip("torch.distributed.fsdp")
    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("torch.distributed.fsdp.fully_shard (FSDP2) is public from torch 2.6 on")
    fully_shard = fsdp.fully_shard

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1
    )
    try:
        model = wn.apply_weight_norm(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)))
        nn.init.constant_(model[0].weight, 0.5)
        fully_shard(model)
        v = model[0].weight_v.full_tensor()
        assert torch.equal(v, torch.full((6, 4), 0.5))
        assert torch.equal(model[0].weight_g.full_tensor().reshape(-1), torch.ones(6))
        # after sharding: an init of the (DTensor) weight, and an assignment, reach g and v
        nn.init.constant_(model[2].weight, 0.25)
        assert torch.equal(model[2].weight_v.full_tensor(), torch.full((2, 6), 0.25))
        model[0].weight.data.mul_(4)
        assert torch.equal(model[0].weight_g.full_tensor().reshape(-1), torch.full((6,), 4.0))
        model[2].weight = torch.ones(2, 6)
        assert torch.equal(model[2].weight_v.full_tensor(), torch.ones(2, 6))
        with torch.device("meta"):
            meta = wn.apply_weight_norm(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)))
        fully_shard(meta)
        meta.to_empty(device="cpu")
        for m in meta.modules():
            if wn.is_weight_normed(m):
                m.reset_parameters()
        g, v = meta[0].weight_g.full_tensor().reshape(-1), meta[0].weight_v.full_tensor()
        torch.testing.assert_close(g, v.norm(dim=1))
        bound = 1 / 4**0.5  # nn.Linear's kaiming_uniform_(a=sqrt(5)) draws in +-1/sqrt(fan_in)
        assert v.abs().max() <= bound
        assert v.std() > bound / 4  # (drawn, not the zeros or garbage of to_empty)
        assert torch.isfinite(meta(torch.randn(3, 4))).all()
    finally:
        torch.distributed.destroy_process_group()


def test_the_forward_reads_the_computed_tensor_and_other_code_a_computed_weight() -> None:
    """Inside the module's own call its forward's read is the computed tensor (an input of the
    layer's computation: no Python call per operation on it, nothing kept as a Python object by
    the graph); every other read, a tied module's included, is a ComputedWeight."""
    seen: list[type] = []

    class Reads(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(type(self.weight))
            return super().forward(x)

    layer = wn.weight_norm(Reads(4, 3))
    layer(torch.randn(2, 4)).sum().backward()
    assert seen == [torch.Tensor]
    assert type(layer.weight) is wn.ComputedWeight
    assert "_wn_in_call" not in layer.__dict__  # (the mark ends with the call)
    layer.register_forward_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        layer(torch.randn(2, 4))
    assert "_wn_in_call" not in layer.__dict__  # (also when the call raises)
