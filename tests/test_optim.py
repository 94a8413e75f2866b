"""The optimizer-level weight norm: same trajectory as the reparameterized model, exact resume."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import weightnorm as wn


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 6, 3, padding=1), nn.Tanh(),
        nn.ConvTranspose1d(6, 4, 4, stride=2, padding=1, groups=2), nn.Tanh(),
        nn.Flatten(), nn.Linear(4 * 16, 3),
    )  # fmt: skip


X = torch.randn(8, 2, 8, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(2))

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda groups: torch.optim.SGD(groups, lr=0.1),
    "sgd-momentum": lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda groups: torch.optim.Adam(groups, lr=0.01),
    # torch.optim classes: every g and v in one flat tensor (``flat``'s default for them)
    "sgd-packed": functools.partial(torch.optim.SGD, lr=0.1),
    "sgd-momentum-packed": functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
    "adam-packed": functools.partial(torch.optim.Adam, lr=0.01),
    "adamw-packed": functools.partial(torch.optim.AdamW, lr=0.01, weight_decay=0.1),
}


def loss(model: nn.Module) -> torch.Tensor:
    return nn.functional.cross_entropy(model(X), Y)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_trajectory_equals_the_reparameterized_model(name: str) -> None:
    make = OPTIMIZERS[name]
    reparam = wn.apply_weight_norm(net())
    reparam_opt = make(list(reparam.parameters()))
    plain = net()
    plain_opt = wn.optim.WeightNormOptimizer(plain, make)
    packed = name.endswith("-packed")
    assert len(plain_opt.inner.param_groups[0]["params"]) == (1 if packed else 6)
    for _ in range(6):
        for model, opt in ((reparam, reparam_opt), (plain, plain_opt)):
            opt.zero_grad()
            loss(model).backward()
            opt.step()
    for a, b in zip(reparam, plain, strict=True):
        if isinstance(b, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)):
            torch.testing.assert_close(b.weight, a.weight.detach(), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(b.bias, a.bias, atol=1e-5, rtol=1e-4)


def test_flat_is_the_default_for_torch_optim_classes_only() -> None:
    def count(opt: wn.optim.WeightNormOptimizer) -> int:
        return len(opt.inner.param_groups[0]["params"])

    flat = wn.optim.WeightNormOptimizer(net(), torch.optim.Adam, lr=0.1)
    assert count(flat) == 1
    (param,) = flat.inner.param_groups[0]["params"]
    g0, v = flat.weight_norm_parameters()["0.weight"]
    assert g0.untyped_storage().data_ptr() == param.untyped_storage().data_ptr()
    assert v.untyped_storage().data_ptr() == param.untyped_storage().data_ptr()
    assert param.numel() == sum(g.numel() + v.numel() for g, v in
                                flat.weight_norm_parameters().values())  # fmt: skip
    custom = wn.optim.WeightNormOptimizer(net(), lambda gr: torch.optim.Adam(gr, lr=0.1))
    assert count(custom) == 6
    forced = wn.optim.WeightNormOptimizer(net(), torch.optim.Adam, flat=False, lr=0.1)
    assert count(forced) == 6


def test_flat_keeps_half_precision_v_apart_from_float32_g() -> None:
    model = nn.Linear(4, 3).to(torch.bfloat16)
    opt = wn.optim.WeightNormOptimizer(model, torch.optim.SGD, lr=0.1)
    params = opt.inner.param_groups[0]["params"]
    assert sorted(str(p.dtype) for p in params) == ["torch.bfloat16", "torch.float32"]
    model(torch.randn(2, 4, dtype=torch.bfloat16)).float().pow(2).sum().backward()
    opt.step()
    g, v = opt.weight_norm_parameters()["weight"]
    torch.testing.assert_close(
        model.weight.float(), (g * v.float() / v.float().norm(dim=1, keepdim=True)),
        atol=1e-2, rtol=1e-2,
    )  # fmt: skip


@pytest.mark.parametrize("flat", [True, False])
def test_a_weight_without_gradient(flat: bool) -> None:
    """The last layer unused in a step: separate g and v are not stepped; flat ones take a
    zero-gradient step (plain SGD: unchanged)."""
    model = net()
    opt = wn.optim.WeightNormOptimizer(model, torch.optim.SGD, flat=flat, lr=0.1)
    loss(model).backward()  # a full step first: its gradients must not be stepped again
    opt.step()
    opt.zero_grad()
    before = model[5].weight.detach().clone()
    model[0](X).pow(2).mean().backward()  # only the first layer gets a gradient
    opt.step()
    assert torch.equal(model[5].weight, before)
    assert not torch.equal(model[0].weight, net()[0].weight)


def test_weights_stay_normalized_and_g_is_the_norm() -> None:
    plain = net()
    opt = wn.optim.WeightNormOptimizer(plain, torch.optim.Adam, lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        loss(plain).backward()
        opt.step()
    g, v = opt.weight_norm_parameters()["0.weight"]
    w = plain[0].weight.detach()
    torch.testing.assert_close(w.norm(dim=(1, 2)), g.detach().abs().flatten())
    torch.testing.assert_close(
        w / w.norm(dim=(1, 2), keepdim=True), v / v.norm(dim=(1, 2), keepdim=True)
    )


def test_checkpoint_and_resume_exactly() -> None:
    model = net()
    opt = wn.optim.WeightNormOptimizer(model, torch.optim.Adam, lr=0.01)

    def train(m: nn.Module, o: torch.optim.Optimizer, steps: int) -> None:
        for _ in range(steps):
            o.zero_grad()
            loss(m).backward()
            o.step()

    train(model, opt, 3)
    checkpoint = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    train(model, opt, 3)

    resumed = net()
    resumed_opt = wn.optim.WeightNormOptimizer(resumed, torch.optim.Adam, lr=0.01)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["opt"])
    train(resumed, resumed_opt, 3)
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_works_with_lr_schedulers() -> None:
    model = net()
    opt = wn.optim.WeightNormOptimizer(model, torch.optim.SGD, lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.zero_grad()
    loss(model).backward()
    opt.step()
    scheduler.step()
    assert all(group["lr"] == 0.5 for group in opt.inner.param_groups)


def test_misuse_raises() -> None:
    with pytest.raises(wn.WeightNormError, match=r"already weight-normalized.*from_model"):
        wn.optim.WeightNormOptimizer(wn.apply_weight_norm(net()), torch.optim.SGD, lr=0.1)
    with pytest.raises(wn.WeightNormError, match="no Linear"):
        wn.optim.WeightNormOptimizer(nn.Sequential(nn.ReLU()), torch.optim.SGD, lr=0.1)
    opt = wn.optim.WeightNormOptimizer(net(), torch.optim.SGD, lr=0.1)
    with pytest.raises(wn.WeightNormError, match="expected a WeightNormOptimizer state dict"):
        opt.load_state_dict({"state": {}})


# --------------------------------------------------------------------------------------------
# Issue 11, item 2: the optimizer selected layers by type only (10 layers of Wav2Vec2 where the
# model normalizes 1, its positional conv with dim=2; 62 of Vits where it has 38). It now takes
# names/patterns (``params=``) and takes over a model's own weight norms (``from_model``).
# --------------------------------------------------------------------------------------------


class Zoo(nn.Module):
    """The layouts a published model normalizes, and parameters it leaves plain."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)  # plain
        self.conv = nn.Conv1d(4, 6, 3, padding=1)  # dim 0
        self.pos = nn.Conv1d(6, 6, 5, padding=2, groups=2)  # dim 2, as wav2vec2's pos conv
        self.up = nn.ConvTranspose1d(6, 4, 4, stride=2, padding=1, groups=2)
        self.proj = nn.Linear(4 * 16, 5)  # dim None: the whole tensor
        self.head = nn.Linear(5, 3)  # plain

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens).transpose(1, 2)
        x = torch.tanh(self.conv(x))
        x = x + torch.tanh(self.pos(x))
        x = torch.tanh(self.up(x))
        return self.head(torch.tanh(self.proj(x.flatten(1))))


TOKENS = torch.randint(0, 7, (8, 8), generator=torch.Generator().manual_seed(3))
TARGETS = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(4))
KINDS = ["legacy", "parametrize", "ours", "mixed"]
NORMALIZED = ("conv", "pos", "up", "proj")


def zoo_loss(model: nn.Module) -> torch.Tensor:
    return nn.functional.cross_entropy(model(TOKENS), TARGETS)


def g_v(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """g and v of ``module.weight`` under any of the three weight norms."""
    if hasattr(module, "parametrizations"):
        plist = module.parametrizations.weight
        return plist.original0, plist.original1
    return module.weight_g, module.weight_v


def build(kind: str) -> nn.Module:
    """A float64 Zoo normalized by ``kind``, each v rescaled so that ||v|| != g."""
    torch.manual_seed(0)
    model = Zoo().double()
    legacy, parametrize = nn.utils.weight_norm, nn.utils.parametrizations.weight_norm
    if kind in ("legacy", "parametrize"):
        apply = legacy if kind == "legacy" else parametrize
        apply(model.conv)
        apply(model.pos, dim=2)
        apply(model.up)  # torch's default: dim 0, per INPUT channel of a ConvTranspose
        apply(model.proj, dim=None)
    elif kind == "ours":
        model.conv = wn.WNConv1d(4, 6, 3, padding=1).double()
        wn.weight_norm(model.pos, dim=2)
        wn.weight_norm(model.up)  # per output channel, groups=2
        wn.weight_norm(model.proj, dim=None)
    else:
        model.conv = wn.WNConv1d(4, 6, 3, padding=1).double()
        parametrize(model.pos, dim=2)
        legacy(model.up)
        wn.weight_norm(model.proj, dim=None)
    with torch.no_grad():
        for i, name in enumerate(NORMALIZED):
            g, v = g_v(getattr(model, name))
            v.mul_((0.2, 3.0, 0.5, 7.0)[i])  # w unchanged; the trajectory depends on ||v||
            g.mul_(1.3)
    return model


def expected_dims(kind: str) -> dict[str, int | None]:
    return {
        "conv.weight": 0,
        "pos.weight": 2,
        "up.weight": 1 if kind == "ours" else 0,
        "proj.weight": None,
    }


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        zoo_loss(model).backward()
        opt.step()


def unit_norms(v: torch.Tensor, dim: int | None) -> torch.Tensor:
    """||v|| per unit along ``dim`` (keep-dim), independently of the library."""
    if dim is None:
        return v.norm().reshape([1] * v.ndim)
    return v.norm(dim=[d for d in range(v.ndim) if d != dim], keepdim=True)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.nn.utils.weight_norm is deprecated
@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_from_model_follows_the_reparameterized_trajectory(kind: str, flat: bool) -> None:
    """Issue 11 item 2: from_model takes over exactly the model's weight norms (dims included:
    wav2vec2's dim=2, dim=None, torch's per-input-channel ConvTranspose, our grouped one) with
    their g and v, and training the folded model follows the reparameterized one's trajectory."""
    reference = build(kind)
    reference_opt = torch.optim.Adam(reference.parameters(), lr=0.05)
    model = build(kind)
    opt = wn.optim.WeightNormOptimizer.from_model(model, torch.optim.Adam, flat=flat, lr=0.05)
    assert opt.dims() == expected_dims(kind)
    assert set(opt.weight_norm_parameters()) == set(expected_dims(kind))
    assert opt.specs()["up.weight"].groups == (2 if kind == "ours" else 1)
    assert len(opt.inner.param_groups[0]["params"]) == (1 if flat else 8)
    # folded in place: plain layers, plain parameter names
    assert all(type(m) in (Zoo, nn.Embedding, nn.Conv1d, nn.ConvTranspose1d, nn.Linear)
               for m in model.modules())  # fmt: skip
    assert not any(wn.weight_norm_specs(m) for m in model.modules())
    assert sorted(n for n, _ in model.named_parameters()) == sorted(
        n for n, _ in Zoo().named_parameters()
    )
    # the same g and v (v keeps its norm), copies owned by the optimizer; w = g v/||v||
    for name in NORMALIZED:
        g, v = opt.weight_norm_parameters()[f"{name}.weight"]
        ref_g, ref_v = g_v(getattr(reference, name))
        assert torch.equal(g.flatten(), ref_g.detach().flatten())
        assert torch.equal(v, ref_v.detach())
        w = getattr(model, name).weight
        assert isinstance(w, nn.Parameter)
        assert w.untyped_storage().data_ptr() != v.untyped_storage().data_ptr()
        dim, groups = opt.dims()[f"{name}.weight"], opt.specs()[f"{name}.weight"].groups
        norms = wn.functional.norm_except_dim(v, dim, groups=groups)
        assert not torch.allclose(norms.flatten(), g.flatten())  # so taking g, v from w fails
        if groups == 1:
            torch.testing.assert_close(w.detach(), g * v / unit_norms(v, dim), rtol=1e-12, atol=0)
    torch.testing.assert_close(model(TOKENS), reference(TOKENS).detach(), rtol=1e-12, atol=1e-14)

    train(reference, reference_opt, 5)
    train(model, opt, 5)
    for name in NORMALIZED:
        g, v = opt.weight_norm_parameters()[f"{name}.weight"]
        ref_g, ref_v = g_v(getattr(reference, name))
        torch.testing.assert_close(g.flatten(), ref_g.detach().flatten(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(v, ref_v.detach(), rtol=1e-10, atol=1e-12)
    ours, theirs = dict(model.named_parameters()), dict(wn.fold(reference).named_parameters())
    assert sorted(ours) == sorted(theirs)
    moved = 0
    for key, param in ours.items():  # normalized weights and plain parameters alike
        torch.testing.assert_close(param, theirs[key].detach(), rtol=1e-10, atol=1e-12)
        moved += not torch.allclose(param, dict(build(kind).named_parameters()).get(key, param))
    assert moved >= 4  # the plain parameters trained too


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_from_model_checkpoint_and_resume_exactly(kind: str) -> None:
    """A from_model optimizer's state_dict resumes bit-exactly on a freshly taken-over model."""
    model = build(kind)
    opt = wn.optim.WeightNormOptimizer.from_model(model, torch.optim.Adam, lr=0.05)
    train(model, opt, 3)
    checkpoint = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    train(model, opt, 3)

    resumed = build(kind)
    resumed_opt = wn.optim.WeightNormOptimizer.from_model(resumed, torch.optim.Adam, lr=0.05)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["opt"])
    train(resumed, resumed_opt, 3)
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_from_model_on_a_plain_model_raises() -> None:
    """Issue 11 item 2: nothing to take over is an error, not a silent plain optimizer."""
    with pytest.raises(wn.WeightNormError, match="carries no trainable weight norm"):
        wn.optim.WeightNormOptimizer.from_model(Zoo(), torch.optim.Adam, lr=0.1)


def test_from_model_frozen_and_half_frozen_weight_norms() -> None:
    """A frozen weight norm is folded and stays frozen; g trainable with v frozen is refused
    before the model is changed."""
    model = build("ours")
    for p in model.proj.parameters():
        p.requires_grad_(False)
    opt = wn.optim.WeightNormOptimizer.from_model(model, torch.optim.SGD, lr=0.1)
    assert "proj.weight" not in opt.dims()
    assert type(model.proj) is nn.Linear
    assert not model.proj.weight.requires_grad
    before = model.proj.weight.detach().clone()
    train(model, opt, 2)
    assert torch.equal(model.proj.weight, before)

    half = build("parametrize")
    half.pos.parametrizations.weight.original1.requires_grad_(False)
    with pytest.raises(wn.WeightNormError, match=r"pos\.weight: g requires grad and v does not"):
        wn.optim.WeightNormOptimizer.from_model(half, torch.optim.SGD, lr=0.1)
    assert nn.utils.parametrize.is_parametrized(half.pos)  # unchanged


def test_from_model_refuses_stacked_parametrizations() -> None:
    class Scale(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    model = build("parametrize")
    nn.utils.parametrize.register_parametrization(model.conv, "weight", Scale())
    with pytest.raises(wn.WeightNormError, match=r"conv\.weight carries 2 parametrizations"):
        wn.optim.WeightNormOptimizer.from_model(model, torch.optim.SGD, lr=0.1)
    assert nn.utils.parametrize.is_parametrized(model.pos)  # nothing folded


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("kind", ["ours", "legacy", "parametrize"])
def test_constructor_refuses_normalized_models_and_points_to_from_model(kind: str) -> None:
    with pytest.raises(wn.WeightNormError, match=r"already weight-normalized.*from_model"):
        wn.optim.WeightNormOptimizer(build(kind), torch.optim.SGD, lr=0.1)


def test_params_names_and_patterns_select_exactly_those_weights() -> None:
    """Issue 11 item 2: params= normalizes the named parameters only, each per output unit of
    its module (a grouped ConvTranspose per output channel); layers is not used."""
    model = Zoo()
    opt = wn.optim.WeightNormOptimizer(
        model, torch.optim.Adam, params=["conv.weight", "p*.weight", "up.weight", "embed.weight"]
    )
    assert opt.dims() == {
        "embed.weight": 0, "conv.weight": 0, "pos.weight": 0, "up.weight": 1, "proj.weight": 0,
    }  # fmt: skip
    assert opt.specs()["up.weight"].groups == 2
    plain = {id(p) for p in opt.inner.param_groups[1]["params"]}
    assert plain == {id(p) for n, p in model.named_parameters() if n not in opt.dims()}
    single = wn.optim.WeightNormOptimizer(Zoo(), torch.optim.Adam, params="head.weight")
    assert single.dims() == {"head.weight": 0}


def test_params_mapping_gives_the_dims_and_trains_like_weight_norm_with_them() -> None:
    """A mapping {name or pattern: dim} normalizes along those dims (negative from the end,
    None the whole tensor, "output"), with the trajectory of wn.weight_norm(dim=...)."""
    dims = {"conv.w*": "output", "pos.weight": -1, "up.weight": -3, "proj.weight": None}
    torch.manual_seed(0)
    model = Zoo().double()
    opt = wn.optim.WeightNormOptimizer(model, torch.optim.Adam, params=dims, lr=0.05)
    assert opt.dims() == {"conv.weight": 0, "pos.weight": 2, "up.weight": 0, "proj.weight": None}
    assert opt.specs()["up.weight"].groups == 1  # an explicit int keeps torch's meaning
    torch.manual_seed(0)
    reference = Zoo().double()
    for name, dim in opt.dims().items():
        wn.weight_norm(getattr(reference, name.split(".")[0]), dim=dim)
    reference_opt = torch.optim.Adam(reference.parameters(), lr=0.05)
    train(model, opt, 5)
    train(reference, reference_opt, 5)
    theirs = dict(wn.fold(reference).named_parameters())
    for key, param in model.named_parameters():
        torch.testing.assert_close(param, theirs[key].detach(), rtol=1e-10, atol=1e-12)


def test_params_tied_weight_is_normalized_once() -> None:
    first, second = nn.Linear(3, 3), nn.Linear(3, 3)
    second.weight = first.weight
    model = nn.Sequential(first, nn.Tanh(), second)
    opt = wn.optim.WeightNormOptimizer(model, torch.optim.SGD, params=["2.weight"], lr=0.1)
    assert list(opt.dims()) == ["2.weight"]  # found through its second name too
    both = wn.optim.WeightNormOptimizer(model, torch.optim.SGD, params=["*.weight"], lr=0.1)
    assert list(both.dims()) == ["0.weight"]
    model(torch.randn(4, 3)).pow(2).sum().backward()
    both.step()
    g, v = both.weight_norm_parameters()["0.weight"]
    torch.testing.assert_close(second.weight.detach(), g * v / unit_norms(v, 0))


def test_params_misuse_raises() -> None:
    """Each wrong params entry is named in the error."""
    sgd = functools.partial(wn.optim.WeightNormOptimizer, optimizer=torch.optim.SGD, lr=0.1)
    with pytest.raises(wn.WeightNormError, match=r"'nope\.\*' match no parameter"):
        sgd(Zoo(), params=["conv.weight", "nope.*"])
    with pytest.raises(wn.WeightNormError, match=r"'decoder\.0\.weight' match no parameter"):
        sgd(Zoo(), params={"decoder.0.weight": 0})
    model = Zoo()
    model.register_parameter("count", nn.Parameter(torch.zeros(2, dtype=torch.long), False))
    with pytest.raises(wn.WeightNormError, match=r"count has dtype torch\.int64"):
        sgd(model, params=["count"])
    model.head.weight.requires_grad_(False)
    with pytest.raises(wn.WeightNormError, match=r"head\.weight does not require grad"):
        sgd(model, params=["head.*"])
    with pytest.raises(wn.WeightNormError, match="dim out of range"):
        sgd(Zoo(), params={"conv.weight": 3})
    with pytest.raises(wn.WeightNormError, match=r"conv\.weight is asked for dim=0"):
        sgd(Zoo(), params={"conv.weight": 0, "conv.*": 1})
    with pytest.raises(wn.WeightNormError, match="dim must be an int, None or 'output'"):
        sgd(Zoo(), params={"conv.weight": "first"})
    with pytest.raises(wn.WeightNormError, match="not both"):
        sgd(Zoo(), params=["conv.weight"], layers=(nn.Conv1d,))
    with pytest.raises(wn.WeightNormError, match="params is empty"):
        sgd(Zoo(), params=[])


@pytest.mark.parametrize("flat", [True, False])
def test_a_zero_unit_stays_finite(flat: bool) -> None:
    """The batched weight write checks every norm against eps at once: a zero v row sends every
    weight through the eps-safe path (finite, that row zero, the others g v/||v||)."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Tanh(), nn.Linear(2, 2))
    opt = wn.optim.WeightNormOptimizer(plain, torch.optim.SGD, lr=0.0, flat=flat)
    gv = opt.weight_norm_parameters()
    with torch.no_grad():
        gv["2.weight"][1][1].zero_()  # v's second row
    plain(torch.randn(8, 3)).pow(2).sum().backward()
    opt.step()  # lr 0: g and v unchanged, the weights rewritten from them
    for i in (0, 2, 4):
        g, v = gv[f"{i}.weight"]
        expected = g * v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        assert torch.isfinite(plain[i].weight).all()
        torch.testing.assert_close(plain[i].weight, expected)
    assert torch.equal(plain[2].weight[1], torch.zeros(4))


class _NormCounter(TorchDispatchMode):
    """Counts the per-unit norms (``aten.linalg_vector_norm``) dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.norms = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.norms += func.overloadpacket is torch.ops.aten.linalg_vector_norm
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("flat", [True, False])
def test_a_step_computes_each_norm_of_v_once(flat: bool) -> None:
    """Weights off the fused kernels (ConvTranspose per output channel: a middle dim; a grouped
    one; a whole-tensor norm) keep the norms of v from the weight write for the next gradient
    conversion: one norm per weight and step, and the written weight is weight_norm's, bit for
    bit."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.ConvTranspose1d(4, 6, 3), nn.Tanh(), nn.ConvTranspose1d(6, 4, 3, groups=2),
        nn.Tanh(), nn.Conv1d(4, 2, 3),
    )  # fmt: skip
    dims = {"0.weight": "output", "2.weight": "output", "4.weight": None}
    opt = wn.optim.WeightNormOptimizer(model, torch.optim.SGD, params=dims, flat=flat, lr=0.1)
    x = torch.randn(2, 4, 7)
    for _ in range(2):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        with _NormCounter() as counter:
            opt.step()
        assert counter.norms == 3
        for name, (g, v) in opt.weight_norm_parameters().items():
            spec = opt.specs()[name]
            expected = wn.functional.weight_norm(v, g, spec.dim, groups=spec.groups)
            assert torch.equal(model[int(name[0])].weight, expected), name
