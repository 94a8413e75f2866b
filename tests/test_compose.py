"""Weight norm with the tools around it (issue 31): other parametrizations, pruning, LoRA (peft),
quantization, big-model loading (accelerate), step loops, recurrent cells, tied weights and
non-finite weights. Each case is checked on our layers and, where the table in
docs/guides/composing.md compares, on torch's parametrize weight norm too."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn
from torch.nn.utils import parametrizations as P
from torch.nn.utils import parametrize

import weightnorm as wn


def formula(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return g.reshape(-1, 1) * v / v.norm(dim=1, keepdim=True)


# --- other parametrizations and pruning -------------------------------------------------------


@pytest.mark.parametrize("stack", [P.spectral_norm, P.orthogonal])
def test_a_parametrization_of_the_weight_is_refused_with_what_to_do(stack: object) -> None:
    """torch's parametrize would train a copy of the computed weight, not g and v: refused when
    it is stacked, naming the ways that work (0.2.0: a bare AssertionError)."""
    layer = wn.weight_norm(nn.Linear(4, 4))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(wn.WeightNormError, match=r"wn.remove_weight_norm.*wn.fold"):
        stack(layer)  # type: ignore[operator]
    after = layer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    layer(torch.randn(2, 4))  # (still a working layer)


def test_torchs_weight_norm_stacks_with_spectral_norm_and_ours_after_fold() -> None:
    theirs = P.spectral_norm(P.weight_norm(nn.Linear(4, 3)))
    assert theirs(torch.randn(2, 4)).shape == (2, 3)
    ours = P.spectral_norm(wn.fold(wn.weight_norm(nn.Linear(4, 3))))
    assert ours(torch.randn(2, 4)).shape == (2, 3)


class Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x + x.roll(1, dims=1)


@pytest.mark.parametrize("parametrization", [Double(), "orthogonal"], ids=["own", "orthogonal"])
def test_a_parametrization_of_v_passes_the_direction_through_it(parametrization: object) -> None:
    layer = wn.weight_norm(nn.Linear(4, 4))
    if parametrization == "orthogonal":
        P.orthogonal(layer, "weight_v")
    else:
        parametrize.register_parametrization(layer, "weight_v", parametrization)  # type: ignore[arg-type]
    v = layer.weight_v
    torch.testing.assert_close(layer.weight, formula(layer.weight_g, v))
    layer(torch.randn(3, 4)).sum().backward()
    assert layer.weight_g.grad is not None
    assert layer.parametrizations.weight_v.original.grad is not None
    with pytest.raises(wn.WeightNormError, match="weight_v is itself reparameterized"):
        nn.init.normal_(layer.weight)


def test_pruning_the_weight_is_refused_and_pruning_v_works() -> None:
    layer = wn.weight_norm(nn.Linear(6, 4))
    with pytest.raises(wn.WeightNormError, match=r"prune its direction instead.*'weight_v'"):
        prune.l1_unstructured(layer, "weight", amount=0.5)
    prune.l1_unstructured(layer, "weight_v", amount=0.5)  # 0.2.0: a bare KeyError at forward
    out = layer(torch.randn(2, 6))
    assert torch.isfinite(out).all()
    assert int((layer.weight == 0).sum()) == 12
    assert torch.equal(layer.weight == 0, layer.weight_v_mask == 0)
    out.sum().backward()
    assert layer.weight_v_orig.grad is not None
    with pytest.raises(wn.WeightNormError, match=r"prune.remove\(module, 'weight_v'\)"):
        wn.fold(layer)
    prune.remove(layer, "weight_v")
    wn.fold(layer)
    assert int((layer.weight == 0).sum()) == 12


def test_torchs_weight_norm_cannot_prune_the_weight_either() -> None:
    """(the other column of the table: torch's raw TypeError)"""
    with pytest.raises(TypeError, match="weight_orig"):
        prune.l1_unstructured(P.weight_norm(nn.Linear(6, 4)), "weight", amount=0.5)


# --- LoRA, quantization, big-model loading -----------------------------------------------------


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(x)))


@pytest.mark.parametrize("impl", ["weightnorm", "torch-parametrize"])
def test_peft_lora_merge_and_unload(impl: str) -> None:
    """peft writes the merge into ``base_layer.weight.data``: applied to g and v by ours; lost
    by torch's parametrize weight norm (0.2.0 lost it too: outputs changed by up to 0.82)."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = Mlp()
    if impl == "weightnorm":
        wn.apply_weight_norm(model)
    else:
        P.weight_norm(model.fc)
    config = peft.LoraConfig(target_modules=["fc"], r=2, init_lora_weights=False)
    lora = peft.get_peft_model(model, config)
    x = torch.randn(5, 8)
    with torch.no_grad():
        before = lora(x)
        merged = lora.merge_and_unload()
        error = (merged(x) - before).abs().max().item()
    if impl == "weightnorm":
        assert error < 1e-5
        assert wn.is_weight_normed(merged.fc)  # still weight-normalized, with the merge in g, v
    else:
        assert error > 1e-2  # torch's: the merge is silently lost


def test_quantize_dynamic_after_fold() -> None:
    """quantize_dynamic matches layers by their exact class: it leaves ours in float; folding
    first is the documented path (the folded Linear layers are quantized)."""
    torch.manual_seed(0)
    model = wn.apply_weight_norm(Mlp()).eval()
    x = torch.randn(5, 8)
    expected = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch.ao's deprecation notice)
        untouched = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        assert wn.is_weight_normed(untouched.fc)  # what the guide warns about
        folded = wn.fold(model)
        quantized = torch.ao.quantization.quantize_dynamic(folded, {nn.Linear}, dtype=torch.qint8)
    assert "quantized" in type(quantized.fc).__module__
    torch.testing.assert_close(quantized(x), expected, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("source", ["parametrize", "legacy", "plain"])
def test_accelerate_dispatch_loading_after_conversion(tmp_path: object, source: str) -> None:
    """accelerate's load_checkpoint_and_dispatch sets tensors key by key (no load_state_dict):
    a checkpoint in torch's formats loads after wn.convert_state_dict(..., to="weightnorm")."""
    accelerate = pytest.importorskip("accelerate")
    from pathlib import Path

    torch.manual_seed(1)
    theirs = Mlp()
    if source == "parametrize":
        P.weight_norm(theirs.fc)
    elif source == "legacy":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            nn.utils.weight_norm(theirs.fc)
    x = torch.randn(3, 8)
    expected = theirs(x)
    like = wn.apply_weight_norm(Mlp())
    state = wn.convert_state_dict(theirs.state_dict(), to="weightnorm", like=like)
    path = Path(str(tmp_path)) / "model.pt"
    torch.save(state, path)
    with accelerate.init_empty_weights():
        model = wn.apply_weight_norm(Mlp())
    model = accelerate.load_checkpoint_and_dispatch(model, str(path), device_map={"": "cpu"})
    torch.testing.assert_close(model(x), expected)


# --- step loops: wn.cached() -------------------------------------------------------------------


def saved_bytes(fn: object) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()  # type: ignore[operator]
    return sum(seen.values())


def rnn_loop(cell: nn.Module, x: torch.Tensor, steps: int = 64) -> torch.Tensor:
    h = torch.zeros(1, cell.weight.shape[0] if hasattr(cell, "weight") else 64)
    for _ in range(steps):
        h = torch.tanh(cell(h) + x)
    return h


def test_cached_reads_each_weight_once_with_torchs_memory() -> None:
    """A 64-step loop over one cell (pytorch/pytorch#2176): uncached, every read is a new copy
    of the weight in the graph (0.2.0: 4.36 MB vs 0.27 MB for torch's parametrize.cached())."""
    torch.manual_seed(0)
    ours = wn.weight_norm(nn.Linear(64, 64))
    theirs = P.weight_norm(nn.Linear(64, 64))
    theirs.load_state_dict(wn.convert_state_dict(ours.state_dict(), to="parametrize"))
    x = torch.randn(1, 64)

    def loop_ours() -> None:
        with wn.cached():
            rnn_loop(ours, x).sum().backward()

    def loop_theirs() -> None:
        with parametrize.cached():
            rnn_loop(theirs, x).sum().backward()

    uncached = saved_bytes(lambda: rnn_loop(ours, x).sum().backward())
    assert saved_bytes(loop_ours) <= saved_bytes(loop_theirs)
    assert uncached > 10 * saved_bytes(loop_ours)


def test_cached_gives_the_gradients_of_the_uncached_loop() -> None:
    torch.manual_seed(0)
    cell = wn.weight_norm(nn.Linear(16, 16))
    x = torch.randn(1, 16)
    rnn_loop(cell, x, 8).sum().backward()
    expected = (cell.weight_g.grad.clone(), cell.weight_v.grad.clone())
    cell.zero_grad()
    with wn.cached():
        rnn_loop(cell, x, 8).sum().backward()
    torch.testing.assert_close(cell.weight_g.grad, expected[0])
    torch.testing.assert_close(cell.weight_v.grad, expected[1])


def test_cached_follows_grad_mode_and_data_writes() -> None:
    """A weight cached under no_grad (a target computed first) is not handed to a forward that
    builds a graph, and ``p.data = t`` on g or v (no version change) is seen."""
    layer = wn.weight_norm(nn.Linear(4, 3))
    x = torch.randn(2, 4)
    with wn.cached():
        with torch.no_grad():
            layer(x)
        layer(x).sum().backward()
        assert layer.weight_g.grad is not None
        before = layer.weight
        layer.weight_v.data = torch.ones(3, 4)
        torch.testing.assert_close(layer.weight, formula(layer.weight_g, torch.ones(3, 4)))
        assert layer.weight is not before


def test_cached_is_never_stale() -> None:
    """A change to g or v inside the block (a step, an init) is seen at the next read."""
    layer = wn.weight_norm(nn.Linear(4, 3))
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    with wn.cached():
        first = layer.weight
        assert layer.weight is first
        layer(torch.randn(2, 4)).sum().backward()
        opt.step()
        second = layer.weight
        assert second is not first
        torch.testing.assert_close(second, formula(layer.weight_g, layer.weight_v))
        nn.init.constant_(layer.weight, 0.5)
        torch.testing.assert_close(layer.weight, torch.full((3, 4), 0.5))
    assert layer.weight is not layer.weight  # (outside the block: computed at every read)


# --- recurrent cells, tied weights, non-finite weights -----------------------------------------


@pytest.mark.parametrize("cls", [nn.RNNCell, nn.LSTMCell, nn.GRUCell])
def test_recurrent_covers_the_cells(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    cell = cls(3, 5)
    x = torch.randn(2, 3)
    expected = cell(x)
    wn.apply_weight_norm(cell, recurrent=True)
    assert set(wn.weight_norm_specs(cell)) == {"weight_ih", "weight_hh"}
    out = cell(x)
    torch.testing.assert_close(out, expected)  # (a tuple for LSTMCell)


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight  # transformers' tie_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x))


def test_tied_weights_share_one_g_and_v_and_stay_tied() -> None:
    """0.2.0 gave each module its own g: after 3 SGD steps the tied weights differed by 0.25."""
    torch.manual_seed(0)
    model = wn.apply_weight_norm(TiedLM(), embedding=True)
    assert model.head.weight_g is model.emb.weight_g
    assert model.head.weight_v is model.emb.weight_v
    assert [n for n, _ in model.named_parameters()] == ["emb.weight_g", "emb.weight_v"]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(torch.tensor([1, 2, 3])).logsumexp(-1).sum().backward()
        opt.step()
    assert torch.equal(model.emb.weight, model.head.weight)
    reloaded = wn.apply_weight_norm(TiedLM(), embedding=True)
    reloaded.load_state_dict(model.state_dict())
    assert torch.equal(reloaded.head.weight, model.head.weight)
    expected = model.emb.weight.detach().clone()
    wn.fold(model)
    assert model.head.weight is model.emb.weight  # still one Parameter
    assert torch.equal(model.emb.weight.detach(), expected)  # written once, bit for bit


def test_a_tie_with_a_weight_left_plain_is_refused() -> None:
    """The embedding left out (embedding=False): normalizing only the head would untie them."""
    model = TiedLM()
    with pytest.raises(
        wn.WeightNormError, match=r"head.weight is tied to emb.weight.*embedding=True"
    ):
        wn.apply_weight_norm(model)
    assert not wn.is_weight_normed(model.head)  # nothing half done
    with pytest.raises(wn.WeightNormError, match="tied to"):
        wn.apply_weight_norm(model, embedding=True, exclude=["emb"])


def test_a_later_call_ties_to_an_earlier_weight_norm() -> None:
    model = TiedLM()
    wn.weight_norm(model.head)  # the head alone first (its v is the embedding's Parameter)...
    wn.apply_weight_norm(model, embedding=True)  # ...then the rest: one g and v for both
    assert model.head.weight_g is model.emb.weight_g
    assert model.head.weight_v is model.emb.weight_v


def test_data_dependent_init_initializes_a_tied_pair_once() -> None:
    """Two Linear layers with one weight (one g): the second call must not re-initialize g."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)
            self.b.weight = self.a.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    model = wn.apply_weight_norm(Twice())
    x = torch.randn(128, 6) * 3
    wn.data_dependent_init(model, x)
    with torch.no_grad():
        h = model.a(x)
    torch.testing.assert_close(h.std(0, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)


def test_tying_after_weight_norm_is_refused() -> None:
    model = wn.apply_weight_norm(TiedLM(), embedding=True)
    other = wn.weight_norm(nn.Linear(4, 10, bias=False))
    with pytest.raises(wn.WeightNormError, match=r"not tie the two.*before weight norm"):
        other.weight = model.emb.weight
    other.weight = model.emb.weight.clone()  # a copy of the values is fine
    torch.testing.assert_close(other.weight, model.emb.weight)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_weight_is_refused_at_apply_and_at_load(bad: float) -> None:
    plain = nn.Linear(4, 3)
    with torch.no_grad():
        plain.weight[1, 2] = bad
    with pytest.raises(wn.WeightNormError, match="expected finite values"):
        wn.weight_norm(plain)
    ours = wn.weight_norm(nn.Linear(4, 3))
    good = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(wn.WeightNormError, match=r"'weight_[gv]'.*expected finite"):
        ours.load_state_dict(plain.state_dict())
    for key, value in ours.state_dict().items():
        assert torch.equal(value, good[key]), key  # nothing was loaded
