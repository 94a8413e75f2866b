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
            fresh = wn.weight_norm(nn.Linear(5, 4))
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


def test_the_papers_recipe_standardizes_every_unit() -> None:
    """Section 3: v ~ N(0, 0.05) by nn.init (no no_grad), then data-dependent init: every unit
    of every layer has mean 0 and std 1 on the init batch (0.2.0 gave std up to 245)."""
    torch.manual_seed(0)
    mlp = wn.apply_weight_norm(
        nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    )
    for m in mlp:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.05)
    x = torch.randn(256, 20) * 3 + 1
    wn.data_dependent_init(mlp, x)
    h = x
    with torch.no_grad():
        for m in mlp:
            h = m(h)
            if isinstance(m, nn.Linear):
                units = h.shape[1]
                std = h.std(0, unbiased=False)
                torch.testing.assert_close(h.mean(0), torch.zeros(units), atol=1e-2, rtol=0)
                torch.testing.assert_close(std, torch.ones(units), atol=1e-2, rtol=0)


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
    param = nn.Parameter(layer.weight.detach())  # a plain Parameter: no longer tied
    assert type(param) is nn.Parameter
    with torch.no_grad():
        param.mul_(0)
    assert layer.weight_g.abs().min() > 0
    buffer = io.BytesIO()
    torch.save(layer.weight.detach(), buffer)  # the module is not pickled with it
    assert len(buffer.getvalue()) < 2000
    buffer.seek(0)
    assert type(torch.load(buffer, weights_only=True)) is torch.Tensor
    assert type(copy.deepcopy(layer.weight.detach())) is torch.Tensor
    torch.testing.assert_close(layer.weight, layer.weight_v)  # (compares with a Parameter)


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
