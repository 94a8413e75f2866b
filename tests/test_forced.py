"""Beyond the paper: forced weight normalization (EDM2), fixed gains, and what to log.

Every value is checked against an independent computation: per-unit norms and weights from an
explicit unit index (not the library's layout code), gradients from plain autograd on that
formula, angles from ``acos`` in float64.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import weightnorm as wn
from forced_worker import batch as ddp_batch
from forced_worker import build_model as ddp_model
from forced_worker import worker as ddp_worker
from launch import launch
from weightnorm import functional as F

RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])


# --- an independent reference -------------------------------------------------------------


def arch(dtype: torch.dtype = torch.float32) -> nn.Module:
    """Conv1d (units are rows), grouped ConvTranspose1d (units are slices of columns), Linear."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 6, 3, padding=1), nn.Tanh(),
        nn.ConvTranspose1d(6, 4, 4, stride=2, padding=1, groups=2), nn.Tanh(),
        nn.Flatten(), nn.Linear(4 * 16, 3),
    ).to(dtype)  # fmt: skip


LAYERS = (0, 2, 5)
#: sqrt of each layer's elements per output unit: 2*3, 6/2*4, 64
SQRT_FAN_IN = {"0.weight": math.sqrt(6), "2.weight": math.sqrt(12), "5.weight": 8.0}
X = torch.randn(8, 2, 8, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(2))


def net(dtype: torch.dtype = torch.float32) -> nn.Module:
    return wn.apply_weight_norm(arch(dtype))


def unit_index(module: nn.Module, shape: torch.Size) -> torch.Tensor:
    """The output unit of every element of the weight, written out from the layer's layout."""
    rest = [1] * (len(shape) - 2)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):  # (in, out/groups, k...)
        cin, cout_g = shape[0], shape[1]
        group = torch.arange(cin).reshape(-1, 1, *rest) // (cin // module.groups)
        column = torch.arange(cout_g).reshape(1, -1, *rest)
        return (group * cout_g + column).expand(shape).contiguous()
    return torch.arange(shape[0]).reshape(-1, 1, *rest).expand(shape).contiguous()


def unit_sums(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over each output unit (differentiable)."""
    idx = unit_index(module, t.shape).reshape(-1)
    return torch.zeros(int(idx.max()) + 1, dtype=t.dtype).index_add(0, idx, t.reshape(-1))


def unit_norms(module: nn.Module, v: torch.Tensor) -> torch.Tensor:
    return unit_sums(module, v**2).sqrt()


def unit_cosines(module: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return unit_sums(module, a * b) / (unit_norms(module, a) * unit_norms(module, b))


def unit_angles(module: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """acos of the cosine, float64 (accurate for well-separated directions only)."""
    return torch.acos(unit_cosines(module, a.double(), b.double()).clamp(-1, 1))


def formula(module: nn.Module, v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``g v / ||v||`` per output unit (differentiable)."""
    idx = unit_index(module, v.shape)
    return g.reshape(-1)[idx] * v / unit_norms(module, v)[idx]


def reference_output(model: nn.Module, x: torch.Tensor, **tensors: torch.Tensor) -> torch.Tensor:
    """The output of a plain network with the weights computed by :func:`formula`."""
    params: dict[str, torch.Tensor] = {}
    for i in LAYERS:
        layer = model[i]
        v = tensors.get(f"{i}.v", layer.weight_v)
        g = tensors.get(f"{i}.g", layer.weight_g)
        params[f"{i}.weight"] = formula(layer, v, g)
        params[f"{i}.bias"] = layer.bias
    plain = arch(layer.weight_v.dtype)
    return torch.func.functional_call(plain, params, (x,))  # type: ignore[no-any-return]


def assert_norms(model: nn.Module, expected: dict[str, float], rtol: float) -> None:
    for i in LAYERS:
        layer = model[i]
        norms = unit_norms(layer, layer.weight_v.detach())
        torch.testing.assert_close(
            norms, torch.full_like(norms, expected[f"{i}.weight"]), rtol=rtol, atol=0
        )


def loss_of(model: nn.Module) -> torch.Tensor:
    return nn.functional.cross_entropy(model(X.to(next(model.parameters()).dtype)), Y)


def train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_of(model)
        loss.backward()
        return loss

    if isinstance(opt, torch.optim.LBFGS):
        opt.step(closure)
    else:
        closure()
        opt.step()


Factory = Callable[..., torch.optim.Optimizer]

#: every torch.optim optimizer that takes dense gradients of any shape (Muon, 2-D parameters
#: only, has its own test; SparseAdam takes sparse gradients only, and a weight-normalized
#: embedding's are dense: every row of v enters w)
OPTIMIZERS: dict[str, Factory] = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=0.05),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
    "adamax": lambda p: torch.optim.Adamax(p, lr=0.05),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1),
    "adadelta": lambda p: torch.optim.Adadelta(p, lr=1.0),
    "nadam": lambda p: torch.optim.NAdam(p, lr=0.05),
    "radam": lambda p: torch.optim.RAdam(p, lr=0.05),
    "asgd": lambda p: torch.optim.ASGD(p, lr=0.05),
    "rprop": lambda p: torch.optim.Rprop(p, lr=0.01),
    "lbfgs": lambda p: torch.optim.LBFGS(p, lr=0.5, max_iter=4),
}
if hasattr(torch.optim, "Adafactor"):  # (torch >= 2.5)
    OPTIMIZERS["adafactor"] = lambda p: torch.optim.Adafactor(p, lr=0.05)


def directions(model: nn.Module) -> dict[int, torch.Tensor]:
    return {i: model[i].weight_v.detach().clone() for i in LAYERS}


def max_angle(model: nn.Module, before: dict[int, torch.Tensor]) -> float:
    """The largest angle any unit turned by since ``before`` (acos, float64: separated here)."""
    return max(
        float(unit_angles(model[i], before[i], model[i].weight_v.detach()).max()) for i in LAYERS
    )


# --- forced weight normalization of modules -------------------------------------------------


@DTYPES
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_norm_is_held_after_every_step(name: str, dtype: torch.dtype) -> None:
    model = net(dtype)
    opt = OPTIMIZERS[name](model.parameters())
    forced = wn.force_weight_norm(model, opt)
    assert forced.norms == pytest.approx(SQRT_FAN_IN, rel=1e-15)
    assert_norms(model, SQRT_FAN_IN, RTOL[dtype])  # from step 0
    for _ in range(3):
        before = directions(model)
        train_step(model, opt)
        assert_norms(model, SQRT_FAN_IN, RTOL[dtype])
        assert max_angle(model, before) > 1e-4  # the step did turn the weights
    # the forward is g v/||v||, computed independently
    torch.testing.assert_close(
        model(X.to(dtype)), reference_output(model, X.to(dtype)), rtol=RTOL[dtype] * 10, atol=0
    )


@pytest.mark.parametrize("norm", [1.0, 0.25, "sqrt_fan_in"])
def test_registration_leaves_the_function_unchanged(norm: float | str) -> None:
    model = net(torch.float64)
    before = model(X.double()).detach()
    forced = wn.force_weight_norm(model, torch.optim.SGD(model.parameters(), lr=0.1), norm=norm)
    expected = SQRT_FAN_IN if norm == "sqrt_fan_in" else dict.fromkeys(SQRT_FAN_IN, norm)
    assert forced.norms == pytest.approx(expected, rel=1e-15)
    assert_norms(model, expected, 1e-12)  # type: ignore[arg-type]
    torch.testing.assert_close(model(X.double()), before, rtol=1e-12, atol=1e-14)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon is new in 2.9")
def test_muon_on_a_network_of_matrices() -> None:
    torch.manual_seed(0)  # (Muon steps 2-D parameters only: bias-free Linear layers, g (out, 1))
    layers = [nn.Linear(6, 8, bias=False), nn.Tanh(), nn.Linear(8, 3, bias=False)]
    model = wn.apply_weight_norm(nn.Sequential(*layers))
    opt = torch.optim.Muon(model.parameters(), lr=0.05)
    forced = wn.force_weight_norm(model, opt, norm=1.0)
    x = torch.randn(16, 6)
    for _ in range(3):
        before = model[0].weight_v.detach().clone()
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        for i in (0, 2):
            norms = model[i].weight_v.detach().norm(dim=1)
            torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-6, atol=0)
        assert not torch.equal(before, model[0].weight_v.detach())
    assert forced.norms == {"0.weight": 1.0, "2.weight": 1.0}


def test_gradients_are_the_projected_ones() -> None:
    """After forcing, grad_v is still autograd's gradient of g v/||v|| (paper eq. 3): orthogonal
    to v, and set by ||v|| = sqrt(fan_in)."""
    model = net(torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    wn.force_weight_norm(model, opt)
    for _ in range(2):
        train_step(model, opt)
    opt.zero_grad()
    loss_of(model).backward()
    leaves = {}
    for i in LAYERS:
        leaves[f"{i}.v"] = model[i].weight_v.detach().clone().requires_grad_(True)
        leaves[f"{i}.g"] = model[i].weight_g.detach().clone().requires_grad_(True)
    reference = nn.functional.cross_entropy(reference_output(model, X.double(), **leaves), Y)
    grads = dict(zip(leaves, torch.autograd.grad(reference, list(leaves.values())), strict=True))
    for i in LAYERS:
        layer = model[i]
        torch.testing.assert_close(layer.weight_v.grad, grads[f"{i}.v"], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(layer.weight_g.grad, grads[f"{i}.g"], rtol=1e-10, atol=1e-13)
        cosine = unit_cosines(layer, layer.weight_v.detach(), layer.weight_v.grad)
        assert float(cosine.abs().max()) < 1e-12


def test_with_an_lr_scheduler() -> None:
    """The hook and a scheduler compose: the run equals one whose lr is set by hand."""
    model, by_hand = net(), net()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    opt_by_hand = torch.optim.Adam(by_hand.parameters(), lr=0.05)
    wn.force_weight_norm(model, opt)
    wn.force_weight_norm(by_hand, opt_by_hand)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for step in range(4):
        train_step(model, opt)
        scheduler.step()
        train_step(by_hand, opt_by_hand)
        opt_by_hand.param_groups[0]["lr"] = 0.05 * 0.5 ** (step + 1)
        assert_norms(model, SQRT_FAN_IN, 1e-6)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 / 16)
    for a, b in zip(model.state_dict().values(), by_hand.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_step_skipped_by_grad_scaler_is_not_renormalized() -> None:
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    wn.force_weight_norm(model, opt)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(loss_of(model)).backward()
    model[0].weight_v.grad[0, 0, 0] = math.inf  # (an overflow: the scaler skips the step)
    before = model[0].weight_v.detach().clone()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(model[0].weight_v.detach(), before)
    opt.zero_grad()
    scaler.scale(loss_of(model)).backward()
    scaler.step(opt)
    scaler.update()
    assert not torch.equal(model[0].weight_v.detach(), before)
    assert_norms(model, SQRT_FAN_IN, 1e-6)


def _save(*objects: object) -> bytes:
    buffer = io.BytesIO()
    torch.save([o.state_dict() for o in objects], buffer)  # type: ignore[attr-defined]
    return buffer.getvalue()


def _load(data: bytes) -> list[dict]:  # type: ignore[type-arg]
    return torch.load(io.BytesIO(data), weights_only=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize("order", ["force-then-load", "load-then-force"])
@pytest.mark.parametrize("name", ["adam", "sgd-momentum", "lbfgs"])
def test_resume_is_bit_exact(name: str, order: str) -> None:
    model = net()
    opt = OPTIMIZERS[name](model.parameters())
    wn.force_weight_norm(model, opt)
    for _ in range(3):
        train_step(model, opt)
    checkpoint = _save(model, opt)
    for _ in range(3):
        train_step(model, opt)

    resumed = wn.apply_weight_norm(arch())
    with torch.no_grad():  # a fresh model: other values (checked to be overwritten)
        for p in resumed.parameters():
            p.mul_(2.0)
    resumed_opt = OPTIMIZERS[name](resumed.parameters())
    model_state, opt_state = _load(checkpoint)
    if order == "force-then-load":
        wn.force_weight_norm(resumed, resumed_opt)
    resumed.load_state_dict(model_state)
    resumed_opt.load_state_dict(opt_state)
    if order == "load-then-force":
        wn.force_weight_norm(resumed, resumed_opt)  # leaves weights at their norm bit for bit
    for _ in range(3):
        train_step(resumed, resumed_opt)
    for (key, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_remove_stops_forcing() -> None:
    model = net(torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    forced = wn.force_weight_norm(model, opt)
    train_step(model, opt)
    forced.remove()
    assert not forced.active
    assert "removed" in repr(forced)
    train_step(model, opt)  # plain weight norm: ||v|| grows (grad_v is orthogonal to v)
    norms = unit_norms(model[0], model[0].weight_v.detach())
    assert bool((norms > SQRT_FAN_IN["0.weight"] * (1 + 1e-10)).all())
    wn.force_weight_norm(model, opt)  # and forcing can start again
    assert_norms(model, SQRT_FAN_IN, 1e-12)


def test_only_what_the_optimizer_updates_is_forced() -> None:
    model = net()
    opt = torch.optim.SGD([*model[0].parameters(), *model[5].parameters()], lr=0.1)
    forced = wn.force_weight_norm(model, opt)
    assert list(forced.norms) == ["0.weight", "5.weight"]
    untouched = model[2].weight_v.detach().clone()
    train_step(model, opt)
    assert torch.equal(model[2].weight_v.detach(), untouched)


def test_an_in_place_change_to_a_read_weight_is_applied_before_forcing() -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    wn.force_weight_norm(model, opt)
    nn.init.orthogonal_(model[5].weight)  # (written back into g and v at the next read)
    train_step(model, opt)
    assert_norms(model, SQRT_FAN_IN, 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_model(backend: str) -> None:
    torch._dynamo.reset()  # (no graph cached by another test: any recompile below is ours)
    eager, model = net(), net()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    opt, eager_opt = (torch.optim.Adam(m.parameters(), lr=0.05) for m in (model, eager))
    wn.force_weight_norm(model, opt)
    wn.force_weight_norm(eager, eager_opt)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(4):
            for m, o in ((compiled, opt), (eager, eager_opt)):
                o.zero_grad()
                nn.functional.cross_entropy(m(X), Y).backward()
                o.step()
            assert_norms(model, SQRT_FAN_IN, 1e-6)
    for a, b in zip(model.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # (two fresh processes: some 10 s here)
def test_ddp_ranks_stay_identical(tmp_path: Path) -> None:
    steps = 3
    launch(ddp_worker, 2, (str(tmp_path), steps), timeout=240)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key in ranks[0]["state"]:
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
    for a, b in zip(ranks[0]["angles"], ranks[1]["angles"], strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    state = ranks[0]["state"]
    for i, key in ((0, "module.0.weight"), (2, "module.2.weight"), (5, "module.5.weight")):
        norm = float(ranks[0]["norms"][key])
        layer = ddp_model()[i]
        norms = unit_norms(layer, state[f"{i}.weight_v"])
        torch.testing.assert_close(norms, torch.full_like(norms, norm), rtol=1e-6, atol=0)
    assert torch.equal(state["5.weight_g"], torch.ones(5, 1))  # the fixed gain stayed fixed
    # and equal to one process trained on the union of the ranks' batches
    torch.set_num_threads(1)
    single = ddp_model()
    opt = torch.optim.Adam(single.parameters(), lr=0.05)
    wn.force_weight_norm(single, opt)
    x, y = ddp_batch()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(single(x), y).backward()
        opt.step()
    for key, value in single.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6, msg=key)


# --- fixed gains ------------------------------------------------------------------------------


def mp_net(dtype: torch.dtype = torch.float32, gain: float = 1.0) -> nn.Module:
    return wn.apply_weight_norm(arch(dtype), gain=gain)


def test_fixed_gain_has_no_trainable_g_and_computes_c_v_over_norm() -> None:
    model = mp_net(torch.float64, gain=0.5)
    assert all(not n.endswith("_g") for n, _ in model.named_parameters())
    assert [n for n, _ in model.named_buffers()] == ["0.weight_g", "2.weight_g", "5.weight_g"]
    assert list(model.state_dict())[:3] == ["0.bias", "0.weight_v", "0.weight_g"]
    for i in LAYERS:
        layer = model[i]
        assert not layer.weight_g.requires_grad
        assert bool((layer.weight_g == 0.5).all())
        norms = unit_norms(layer, layer.weight.detach())
        torch.testing.assert_close(norms, torch.full_like(norms, 0.5))
        assert "gain=0.5" in repr(layer)
        assert wn.weight_norm_specs(layer)["weight"].gain == 0.5
    torch.testing.assert_close(model(X.double()), reference_output(model, X.double()))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    stepped = {id(p) for group in opt.param_groups for p in group["params"]}
    assert all(id(model[i].weight_g) not in stepped for i in LAYERS)  # g is not among them
    train_step(model, opt)
    assert bool((model[5].weight_g == 0.5).all())


def test_fixed_gain_state_dict_copy_pickle_and_moves() -> None:
    model = mp_net()
    out = model(X)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(other(X), out)
        assert [n for n, _ in other.named_buffers()] == [n for n, _ in model.named_buffers()]
    fresh = mp_net(gain=2.0)
    fresh.load_state_dict(model.state_dict())  # the gain is loaded with the state dict
    assert torch.equal(fresh(X), out)
    learned = net()
    learned.load_state_dict(model.state_dict())  # an ordinary weight-norm checkpoint
    assert torch.equal(learned(X), out)
    assert learned[0].weight_g.requires_grad
    converted = wn.convert_state_dict(model.state_dict(), to="plain")
    torch.testing.assert_close(converted["0.weight"], model[0].weight.detach())
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert half[0].weight_g.dtype == torch.float32
    assert half[0].weight_v.dtype == torch.bfloat16
    assert "0.weight_g" in dict(half.named_buffers())


def test_fixed_gain_removal_and_fold() -> None:
    model = mp_net(torch.float64, gain=0.5)
    expected = model(X.double()).detach()
    v = model[0].weight_v
    wn.remove_weight_norm(model[0])
    assert type(model[0]) is nn.Conv1d
    assert model[0].weight is v
    assert [n for n, _ in model[0].named_parameters()] == ["weight", "bias"]
    assert not list(model[0].named_buffers())
    wn.fold(model)
    assert all(type(model[i]) in (nn.Conv1d, nn.ConvTranspose1d, nn.Linear) for i in LAYERS)
    torch.testing.assert_close(model(X.double()), expected, rtol=1e-12, atol=1e-14)


def test_fixed_gain_assignment_sets_the_direction_only() -> None:
    layer = wn.weight_norm(nn.Linear(4, 3), gain=2.0)
    target = torch.randn(3, 4)
    layer.weight = target
    torch.testing.assert_close(
        layer.weight.detach(), 2.0 * target / target.norm(dim=1, keepdim=True)
    )
    nn.init.orthogonal_(layer.weight)
    torch.testing.assert_close(layer.weight.detach().norm(dim=1), torch.full((3,), 2.0))


def test_fixed_gain_layers_and_data_init() -> None:
    layer = wn.WNConv1d(2, 4, 3, gain=1.0)
    assert "weight_g" in dict(layer.named_buffers())
    model = nn.Sequential(layer, nn.ReLU(), wn.WNLinear(4, 2))
    with pytest.raises(wn.WeightNormError, match="fixed gain"):
        wn.data_dependent_init(model, torch.randn(8, 2, 3))


@pytest.mark.parametrize("gain", [0.0, -1.0, math.inf, math.nan])
def test_bad_fixed_gain_values(gain: float) -> None:
    with pytest.raises(wn.WeightNormError, match="positive finite number"):
        wn.weight_norm(nn.Linear(2, 2), gain=gain)


@pytest.mark.parametrize("gain", ["1.0", True, [1.0]])
def test_bad_fixed_gain_types(gain: object) -> None:
    with pytest.raises(TypeError, match="gain must be None"):
        wn.weight_norm(nn.Linear(2, 2), gain=gain)  # type: ignore[arg-type]


def test_edm2_magnitude_preserving_layer() -> None:
    """EDM2's MP layer: fixed gain 1, forced ||v|| = sqrt(fan_in); w has unit-norm rows, so a
    unit-variance input gives unit-variance outputs, and stays so after steps."""
    torch.manual_seed(0)
    layer = wn.WNLinear(256, 64, bias=False, gain=1.0)
    opt = torch.optim.Adam(layer.parameters(), lr=0.01)
    wn.force_weight_norm(layer, opt)
    x = torch.randn(4096, 256)
    for _ in range(3):
        opt.zero_grad()
        layer(x).pow(3).mean().backward()
        opt.step()
        torch.testing.assert_close(layer.weight_v.detach().norm(dim=1), torch.full((64,), 16.0))
        torch.testing.assert_close(layer.weight.detach().norm(dim=1), torch.ones(64))
    assert 0.9 < float(layer(x).detach().var()) < 1.1


@pytest.mark.parametrize("fan_in", [16, 1024])
def test_sqrt_fan_in_makes_adams_angular_step_about_lr(fan_in: int) -> None:
    """The reason for EDM2's norm (docs of force_weight_norm): Adam moves every element by about
    lr, so a unit of norm sqrt(fan_in) turns by about lr radians whatever its fan-in."""
    torch.manual_seed(0)
    layer = wn.WNLinear(fan_in, 32, bias=False, gain=1.0)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-3)
    wn.force_weight_norm(layer, opt)
    tracker = wn.AngularStepTracker(layer, opt)
    x, target = torch.randn(64, fan_in), torch.randn(64, 32)
    for _ in range(5):
        opt.zero_grad()
        (layer(x) - target).pow(2).mean().backward()
        opt.step()
        assert 0.5e-3 < tracker.last()["weight"].mean < 1.5e-3


# --- the optimizer-level mode -----------------------------------------------------------------

ELEMENTWISE = ["sgd-momentum", "adam", "adamw", "rprop", "adagrad"]


def packed(name: str) -> Factory:
    """The torch.optim class behind a factory of OPTIMIZERS, as WeightNormOptimizer takes it."""
    return lambda groups: OPTIMIZERS[name](groups)


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n != "lbfgs"])
def test_optimizer_level_norm_is_held(name: str) -> None:
    plain = arch()
    opt = wn.optim.WeightNormOptimizer(plain, OPTIMIZERS[name], forced="sqrt_fan_in")
    assert opt.forced_norms() == pytest.approx(SQRT_FAN_IN, rel=1e-15)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(plain(X), Y).backward()
        opt.step()
        for key, (g, v) in opt.weight_norm_parameters().items():
            layer = plain[int(key.split(".")[0])]
            norms = unit_norms(layer, v.detach())
            torch.testing.assert_close(
                norms, torch.full_like(norms, SQRT_FAN_IN[key]), rtol=1e-6, atol=0
            )
            torch.testing.assert_close(
                layer.weight.detach(), formula(layer, v.detach(), g.detach())
            )


@pytest.mark.parametrize("gain", [None, 1.0])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_optimizer_level_forced_follows_the_modules(name: str, gain: float | None) -> None:
    """The same trajectory, float64: modules + force_weight_norm vs WeightNormOptimizer(forced)."""
    modules = wn.apply_weight_norm(arch(torch.float64), gain=gain)
    modules_opt = OPTIMIZERS[name](modules.parameters())
    wn.force_weight_norm(modules, modules_opt)
    plain = arch(torch.float64)
    if gain is not None:
        with torch.no_grad():
            for i in LAYERS:  # the function the modules' fixed gain computes
                plain[i].weight.copy_(modules[i].weight)
    opt = wn.optim.WeightNormOptimizer(plain, packed(name), gain=gain, forced="sqrt_fan_in")
    stepped = sum(p.numel() for g in opt.inner.param_groups for p in g["params"])
    assert stepped == sum(p.numel() for p in modules.parameters())  # a fixed g is not stepped
    for _ in range(5):
        train_step(modules, modules_opt)
        opt.zero_grad()
        nn.functional.cross_entropy(plain(X.double()), Y).backward()
        opt.step()
    for i in LAYERS:
        torch.testing.assert_close(
            plain[i].weight, modules[i].weight.detach(), rtol=1e-9, atol=1e-12
        )
        g, v = opt.weight_norm_parameters()[f"{i}.weight"]
        torch.testing.assert_close(v, modules[i].weight_v.detach(), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g, modules[i].weight_g.detach(), rtol=1e-9, atol=1e-12)


def test_from_model_keeps_a_fixed_gain_fixed() -> None:
    modules = mp_net(torch.float64, gain=0.5)
    model = copy.deepcopy(modules)
    opt = wn.optim.WeightNormOptimizer.from_model(model, packed("adam"), forced=1.0)
    assert all(s.gain == 0.5 for s in opt.specs().values())
    modules_opt = torch.optim.Adam(modules.parameters(), lr=0.05)
    wn.force_weight_norm(modules, modules_opt, norm=1.0)
    for _ in range(3):
        train_step(modules, modules_opt)
        opt.zero_grad()
        nn.functional.cross_entropy(model(X.double()), Y).backward()
        opt.step()
    for i in LAYERS:
        g, _ = opt.weight_norm_parameters()[f"{i}.weight"]
        assert bool((g == 0.5).all())
        torch.testing.assert_close(
            model[i].weight, modules[i].weight.detach(), rtol=1e-9, atol=1e-12
        )


def test_optimizer_level_forced_resume_is_bit_exact() -> None:
    def build() -> tuple[nn.Module, wn.optim.WeightNormOptimizer]:
        plain = arch()
        return plain, wn.optim.WeightNormOptimizer(plain, packed("adam"), forced=1.0)

    def step(plain: nn.Module, opt: wn.optim.WeightNormOptimizer) -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(plain(X), Y).backward()
        opt.step()

    model, opt = build()
    for _ in range(3):
        step(model, opt)
    checkpoint = _save(model, opt)
    for _ in range(3):
        step(model, opt)
    resumed, resumed_opt = build()
    model_state, opt_state = _load(checkpoint)
    resumed.load_state_dict(model_state)
    resumed_opt.load_state_dict(opt_state)
    for _ in range(3):
        step(resumed, resumed_opt)
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("forced", "error"),
    [(0.0, wn.WeightNormError), (-2.0, wn.WeightNormError), (math.nan, wn.WeightNormError),
     ("sqrt", wn.WeightNormError), (True, TypeError)],
)  # fmt: skip
def test_optimizer_level_bad_forced(forced: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="forced: norm must be a positive finite number"):
        wn.optim.WeightNormOptimizer(arch(), torch.optim.SGD, forced=forced, lr=0.1)  # type: ignore[arg-type]


# --- what to log ------------------------------------------------------------------------------


def test_weight_norm_stats_against_independent_values() -> None:
    model = net()
    wn.weight_norm(model[0], "bias", dim=None)  # any parameter, any dim
    stats = wn.weight_norm_stats(model)
    assert list(stats) == ["0.weight", "0.bias", "2.weight", "5.weight"]
    for i in LAYERS:
        s = stats[f"{i}.weight"]
        torch.testing.assert_close(s.v_norm, unit_norms(model[i], model[i].weight_v.detach()))
        assert torch.equal(s.g, model[i].weight_g.detach().reshape(-1))
        assert s.learned_gain
    summary = stats["5.weight"].summary()
    norms = unit_norms(model[5], model[5].weight_v.detach()).double()
    assert summary["v_norm_max"] == pytest.approx(float(norms.max()))
    assert summary["v_norm_mean"] == pytest.approx(float(norms.mean()))
    assert summary["v_norm_min"] == pytest.approx(float(norms.min()))
    g = model[5].weight_g.detach().double()
    for key, value in (("g_min", g.min()), ("g_mean", g.mean()), ("g_max", g.max())):
        assert summary[key] == pytest.approx(float(value)), key
    assert not wn.weight_norm_stats(mp_net())["0.weight"].learned_gain


def test_v_norm_only_grows_under_weight_norm_and_stays_when_forced() -> None:
    """Paper section 2.1: grad_v is orthogonal to v, so under plain SGD ||v|| only grows."""
    for forced in (False, True):
        model = net(torch.float64)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        if forced:
            wn.force_weight_norm(model, opt)
        before = wn.weight_norm_stats(model)
        for _ in range(3):
            train_step(model, opt)
            after = wn.weight_norm_stats(model)
            for key in before:
                if forced:
                    torch.testing.assert_close(
                        after[key].v_norm, before[key].v_norm, rtol=1e-12, atol=0
                    )
                else:
                    assert bool((after[key].v_norm >= before[key].v_norm).all())
                    assert bool((after[key].v_norm > before[key].v_norm).any())
            before = after


def test_weight_norm_stats_of_the_optimizer_level_mode() -> None:
    plain = arch()
    opt = wn.optim.WeightNormOptimizer(plain, packed("adam"), gain=1.0)
    stats = wn.weight_norm_stats(opt)
    for key, (_, v) in opt.weight_norm_parameters().items():
        layer = plain[int(key.split(".")[0])]
        torch.testing.assert_close(stats[key].v_norm, unit_norms(layer, v.detach()))
        assert bool((stats[key].g == 1.0).all())
        assert not stats[key].learned_gain


def test_tracker_angles_against_acos() -> None:
    model = net(torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    wn.force_weight_norm(model, opt)
    tracker = wn.AngularStepTracker(model, opt)
    assert tracker.last() == {}
    for _ in range(2):
        before = directions(model)
        train_step(model, opt)
        angles = tracker.last()
        assert list(angles) == ["0.weight", "2.weight", "5.weight"]
        for i in LAYERS:
            expected = unit_angles(model[i], before[i], model[i].weight_v.detach())
            step = angles[f"{i}.weight"]
            torch.testing.assert_close(step.per_unit, expected, rtol=1e-9, atol=1e-12)
            assert step.max == pytest.approx(float(expected.max()), rel=1e-9)
            assert step.mean == pytest.approx(float(expected.mean()), rel=1e-9)
            assert step.summary() == pytest.approx(
                {"angle_mean": float(expected.mean()), "angle_max": float(expected.max())}, rel=1e-9
            )
    tracker.remove()
    train_step(model, opt)
    assert tracker.last()["0.weight"].per_unit is angles["0.weight"].per_unit  # not updated


def test_tracker_reports_zero_when_the_optimizer_changes_nothing() -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    tracker = wn.AngularStepTracker(model, opt)
    train_step(model, opt)
    assert list(tracker.last()) == ["0.weight", "2.weight", "5.weight"]  # (all() of nothing)
    assert all(bool((s.per_unit == 0).all()) for s in tracker.last().values())


def test_tracker_with_the_optimizer_level_mode() -> None:
    plain = arch(torch.float64)
    opt = wn.optim.WeightNormOptimizer(plain, packed("adam"), forced="sqrt_fan_in")
    tracker = wn.AngularStepTracker(plain, opt)
    before = {k: v.detach().clone() for k, (_, v) in opt.weight_norm_parameters().items()}
    opt.zero_grad()
    nn.functional.cross_entropy(plain(X.double()), Y).backward()
    opt.step()
    for key, (_, v) in opt.weight_norm_parameters().items():
        layer = plain[int(key.split(".")[0])]
        expected = unit_angles(layer, before[key], v.detach())
        torch.testing.assert_close(tracker.last()[key].per_unit, expected, rtol=1e-9, atol=1e-12)
        assert float(expected.min()) > 1e-4
    with pytest.raises(wn.WeightNormError, match="trains none of this model's parameters"):
        wn.AngularStepTracker(arch(), opt)


# --- the math ---------------------------------------------------------------------------------

#: zero, or at least 1e-3 in size: a unit is zero or well above eps (below eps, w = g v/eps
#: depends on ||v||, and renormalizing it changes w)
finite = st.one_of(st.just(0.0), st.floats(1e-3, 10), st.floats(-10, -1e-3))


@st.composite
def tensor_and_dim(draw: st.DrawFn) -> tuple[torch.Tensor, int | None]:
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    n = int(torch.Size(shape).numel())
    values = draw(st.lists(finite, min_size=n, max_size=n))
    dim = draw(st.sampled_from([None, *range(len(shape))]))
    return torch.tensor(values, dtype=torch.float64).reshape(shape), dim


@settings(deadline=None)  # (the first example, cold, takes most of a second)
@given(tensor_and_dim(), st.floats(1e-3, 1e3))
def test_renormalize_sets_every_unit_and_keeps_directions(
    data: tuple[torch.Tensor, int | None], c: float
) -> None:
    v, dim = data
    w = F.weight_norm(v, torch.ones(F.g_shape(v.shape, dim), dtype=v.dtype), dim)
    out = F.renormalize_(v.clone(), c, dim)
    # the units written out independently of the library's layout code: rows of dim moved first
    rows = out.reshape(1, -1) if dim is None else out.movedim(dim, 0).reshape(v.shape[dim], -1)
    before = v.reshape(1, -1) if dim is None else v.movedim(dim, 0).reshape(v.shape[dim], -1)
    nonzero_rows = before.norm(dim=1) > 1e-6
    torch.testing.assert_close(
        rows[nonzero_rows].norm(dim=1),
        torch.full_like(rows[nonzero_rows][:, 0], c),
        rtol=1e-12,
        atol=0,
    )
    assert bool((rows[~nonzero_rows] == 0).all())
    kept = before[nonzero_rows]  # and each direction is kept
    torch.testing.assert_close(
        rows[nonzero_rows] / c, kept / kept.norm(dim=1, keepdim=True), rtol=1e-12, atol=1e-12
    )
    norms = F.norm_except_dim(v, dim)
    after = F.norm_except_dim(out, dim)
    nonzero = norms > 1e-6
    torch.testing.assert_close(
        after[nonzero], torch.full_like(after[nonzero], c), rtol=1e-12, atol=0
    )
    assert bool((after[norms == 0] == 0).all())  # a zero unit stays zero
    torch.testing.assert_close(
        F.weight_norm(out, torch.ones_like(norms), dim), w, rtol=1e-12, atol=1e-12
    )
    again = F.renormalize_(out.clone(), c, dim, rtol=F.settled_rtol(out.dtype))
    assert torch.equal(again, out)  # at its norm already: left bit for bit


def test_renormalize_grouped_layout_and_half_precision() -> None:
    v = torch.randn(6, 4, 3)  # a grouped ConvTranspose (in=6, out/groups=4, k=3), groups 2
    layer = nn.ConvTranspose1d(6, 8, 3, groups=2)
    F.renormalize_(v, "sqrt_fan_in", 1, groups=2)
    torch.testing.assert_close(unit_norms(layer, v), torch.full((8,), 3.0), rtol=1e-6, atol=0)
    h = torch.randn(5, 7, dtype=torch.bfloat16)
    F.renormalize_(h, 2.0)
    torch.testing.assert_close(h.float().norm(dim=1), torch.full((5,), 2.0), rtol=1e-2, atol=0)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.floats(0.1, math.pi - 0.1))
def test_angle_between_against_acos(seed: int, n: int, angle: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(3, n + 1, generator=gen, dtype=torch.float64)
    noise = torch.randn(3, n + 1, generator=gen, dtype=torch.float64)
    ortho = noise - (noise * a).sum(1, keepdim=True) / (a * a).sum(1, keepdim=True) * a
    ua, uo = a / a.norm(dim=1, keepdim=True), ortho / ortho.norm(dim=1, keepdim=True)
    b = (math.cos(angle) * ua + math.sin(angle) * uo) * 3.0  # at `angle` from a, by design
    got = F.angle_between(a, b).reshape(-1)
    expected = torch.acos((ua * b).sum(1) / b.norm(dim=1))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        got, torch.full((3,), angle, dtype=torch.float64), rtol=1e-9, atol=1e-12
    )
    torch.testing.assert_close(F.angle_between(b, a * 7.0).reshape(-1), got, rtol=1e-12, atol=1e-14)


def test_angle_between_small_angles_and_edge_cases() -> None:
    a = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[math.cos(1e-9), math.sin(1e-9)]], dtype=torch.float64)
    assert float(F.angle_between(a, b)) == pytest.approx(1e-9, rel=1e-6)  # acos gives 0 here
    assert float(torch.acos((a * b).sum())) == 0.0
    zero = torch.zeros(1, 2)
    assert float(F.angle_between(zero, zero)) == 0.0
    assert float(F.angle_between(zero, torch.ones(1, 2))) == pytest.approx(math.pi / 2)
    with pytest.raises(ValueError, match="one shape"):
        F.angle_between(torch.ones(2, 3), torch.ones(3, 2))


def test_forced_norm_and_unit_size() -> None:
    assert F.unit_size((6, 4, 3), 1, groups=2) == 9
    assert F.forced_norm("sqrt_fan_in", (8, 16)) == 4.0
    assert F.forced_norm(2, (8, 16)) == 2.0
    assert F.forced_norm("sqrt_fan_in", (3, 4), None) == math.sqrt(12)


# --- misuse -----------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", [0.0, -1.0, math.inf, math.nan, "unit", "sqrt_fanin"])
def test_bad_norm_values(norm: object) -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(
        wn.WeightNormError,
        match=r"norm must be a positive finite number or one of \('sqrt_fan_in',\), got",
    ):
        wn.force_weight_norm(model, opt, norm=norm)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="norm must be"):
        F.renormalize_(torch.ones(2, 2), norm)  # type: ignore[arg-type]


@pytest.mark.parametrize("norm", [None, True, [1.0], torch.tensor(1.0)])
def test_bad_norm_types(norm: object) -> None:
    model = net()
    with pytest.raises(TypeError, match="norm must be a positive finite number"):
        wn.force_weight_norm(model, torch.optim.SGD(model.parameters(), lr=0.1), norm=norm)  # type: ignore[arg-type]


def test_a_model_without_weight_norm() -> None:
    plain = arch()
    with pytest.raises(
        wn.WeightNormError,
        match="needs a model with weight-normalized parameters, got a Sequential with none",
    ):
        wn.force_weight_norm(plain, torch.optim.SGD(plain.parameters(), lr=0.1))
    theirs = torch.nn.utils.parametrizations.weight_norm(nn.Linear(3, 2))
    with pytest.raises(wn.WeightNormError, match="replace_torch_weight_norm"):
        wn.force_weight_norm(theirs, torch.optim.SGD(theirs.parameters(), lr=0.1))
    with pytest.raises(wn.WeightNormError, match="with none"):
        wn.weight_norm_stats(plain)
    with pytest.raises(wn.WeightNormError, match="no Linear/Conv/ConvTranspose weight"):
        wn.AngularStepTracker(nn.Sequential(nn.ReLU()), torch.optim.SGD([nn.Parameter(X)]))


def test_tracker_of_a_plain_model_against_acos() -> None:
    """Issue 20: the tracker refused plain models, so the effective-LR experiment measured its
    baseline by hand. A plain model's Linear/Conv/ConvTranspose weights are tracked per output
    unit (a ConvTranspose per output channel, groups included)."""
    plain = arch(torch.float64)
    opt = torch.optim.SGD(plain.parameters(), lr=0.5)
    tracker = wn.AngularStepTracker(plain, opt)
    before = {n: p.detach().clone() for n, p in plain.named_parameters()}
    train_step(plain, opt)
    last = tracker.last()
    assert sorted(last) == sorted(f"{i}.weight" for i in LAYERS)
    for i in LAYERS:
        name = f"{i}.weight"
        expected = unit_angles(plain[i], before[name], plain[i].weight.detach())
        assert bool((expected > 1e-4).all())  # (well separated: acos is accurate there)
        torch.testing.assert_close(last[name].per_unit, expected, rtol=1e-6, atol=1e-9)
    tracker.remove()


def test_an_optimizer_that_owns_none_of_them() -> None:
    model = net()
    other = torch.optim.SGD(arch().parameters(), lr=0.1)
    with pytest.raises(
        wn.WeightNormError, match=r"owns none of the model's 3 weight-normalized v \(0.weight_v"
    ):
        wn.force_weight_norm(model, other)
    with pytest.raises(wn.WeightNormError, match="owns none"):
        wn.AngularStepTracker(model, other)


def test_registering_twice() -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    forced = wn.force_weight_norm(model, opt)
    with pytest.raises(
        wn.WeightNormError,
        match=r"0.weight_v is already forced by ForcedWeightNorm\(3 weights, active\)",
    ):
        wn.force_weight_norm(model, opt, norm=1.0)
    with pytest.raises(wn.WeightNormError, match="already forced"):  # also from another optimizer
        wn.force_weight_norm(model, torch.optim.Adam(model.parameters()))
    forced.remove()
    wn.force_weight_norm(model, opt, norm=1.0)


def test_wrong_types_and_the_optimizer_level_mode() -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"expected a torch\.optim\.Optimizer, got list"):
        wn.force_weight_norm(model, list(model.parameters()))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"expected an nn\.Module as the model, got dict"):
        wn.force_weight_norm({}, opt)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"expected an nn\.Module or a WeightNormOptimizer"):
        wn.weight_norm_stats([model])  # type: ignore[arg-type]
    plain = arch()
    level = wn.optim.WeightNormOptimizer(plain, torch.optim.SGD, lr=0.1)
    with pytest.raises(wn.WeightNormError, match=r"WeightNormOptimizer\(\.\.\., forced=norm\)"):
        wn.force_weight_norm(plain, level)
    with pytest.raises(wn.WeightNormError, match="pass the optimizer"):
        wn.weight_norm_stats(plain)
