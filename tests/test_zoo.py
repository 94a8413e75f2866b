"""The zoo: real weight-normalized models as their packages build them (experiments.zoo).

Every check runs on every zoo model whose package is installed: migration from torch's weight
norm, loading torch checkpoints, folding, converted checkpoints in every format (API and command
line), the optimizer-level mode on the model's own parameterization, copies and pickles, and
(slow) torch.compile and torch.export.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import weightnorm as wn
from weightnorm import cli
from weightnorm._torch_compat import find_torch_weight_norms
from weightnorm.experiments import zoo

#: the zoo models checked here: those whose packages are installed (the torchaudio ones only in
#: benchmarks/zoo-torch29's environment, the others only in the main one)
NAMES = zoo.installed()
ELSEWHERE = [n for n in zoo.ZOO if n not in NAMES]


def test_zoo_models_not_installed_here() -> None:
    """Not a check: the one line of the report that names the zoo models this environment
    cannot check (their packages are missing), and what installs them."""
    if ELSEWHERE:
        pytest.skip(
            f"zoo models not installed here: {', '.join(ELSEWHERE)} "
            f"(packages {', '.join(zoo.missing_packages(ELSEWHERE))}: "
            f"{zoo.install_hint(ELSEWHERE)})"
        )


def torch_norms(model: nn.Module) -> list[tuple[str, str, int | None]]:
    """(module name, parameter, dim) of every torch weight norm in ``model``."""
    return [
        (q, f.name, f.dim) for q, m in model.named_modules() for f in find_torch_weight_norms(m)
    ]


def our_norms(model: nn.Module) -> list[tuple[str, str, int | None]]:
    return [
        (q, name, s.dim)
        for q, m in model.named_modules()
        for name, s in wn.weight_norm_specs(m).items()
    ]


def torch_removal(model: nn.Module) -> nn.Module:
    """Fold ``model``'s weight norms with torch's own removal functions."""
    for m in model.modules():
        for found in find_torch_weight_norms(m):
            if found.kind == "legacy":
                nn.utils.remove_weight_norm(m, found.name)
            else:
                parametrize.remove_parametrizations(m, found.name, leave_parametrized=True)
    return model


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(params=NAMES)
def spec(request: pytest.FixtureRequest) -> zoo.ZooModel:
    return zoo.ZOO[request.param]


@pytest.fixture
def theirs(spec: zoo.ZooModel) -> nn.Module:
    """The model as its package builds it, with torch's weight norm. (A model with torch's
    legacy hook cannot be deep-copied; ``spec.build()`` builds the same model again.)"""
    model = spec.build()
    assert torch_norms(model), f"{spec.name} carries no weight norm: the zoo entry is wrong"
    kinds = {f.kind for m in model.modules() for f in find_torch_weight_norms(m)}
    assert kinds == {spec.torch_weight_norm}
    return model


def outputs(spec: zoo.ZooModel, model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return spec.output(model, spec.inputs(0))


def test_replace_is_exact(spec: zoo.ZooModel, theirs: nn.Module) -> None:
    """Every torch weight norm becomes ours with the same dim; outputs and g/v gradients agree."""
    ours = wn.replace_torch_weight_norm(spec.build())
    assert torch_norms(ours) == []
    assert our_norms(ours) == torch_norms(theirs)
    assert torch.equal(outputs(spec, ours), outputs(spec, theirs))
    spec.loss(theirs, spec.inputs(1)).backward()
    spec.loss(ours, spec.inputs(1)).backward()
    grads_theirs = {n: p.grad for n, p in theirs.named_parameters()}
    grads_ours = {n: p.grad for n, p in ours.named_parameters()}
    # the same parameters in the same order, under our names
    assert len(grads_ours) == len(grads_theirs)
    for (n_t, g_t), (n_o, g_o) in zip(grads_theirs.items(), grads_ours.items(), strict=True):
        if g_t is None:
            assert g_o is None, n_o
        else:
            torch.testing.assert_close(g_o, g_t, rtol=1e-5, atol=1e-7, msg=f"{n_t} vs {n_o}")


def test_torch_checkpoint_loads_strictly(spec: zoo.ZooModel, theirs: nn.Module) -> None:
    """A checkpoint written by the package's model loads into the migrated model, bit for bit."""
    other = wn.replace_torch_weight_norm(spec.build(seed=1))
    other.load_state_dict(theirs.state_dict(), strict=True)
    assert torch.equal(outputs(spec, other), outputs(spec, theirs))


def test_fold_is_bit_identical_to_torch_removal(spec: zoo.ZooModel, theirs: nn.Module) -> None:
    expected = torch_removal(spec.build()).state_dict()
    assert_same_tensors(wn.fold(spec.build()).state_dict(), expected)
    ours = wn.replace_torch_weight_norm(spec.build())
    folded = wn.fold(ours)
    assert torch_norms(folded) == []
    assert our_norms(folded) == []
    assert_same_tensors(folded.state_dict(), expected)


def own_removals(model: nn.Module) -> list[str]:
    """The outermost modules of ``model`` with a ``remove_weight_norm()`` method of their
    package's ("" is the model itself): what an inference script calls before export."""
    owners = [
        q for q, m in model.named_modules() if callable(getattr(m, "remove_weight_norm", None))
    ]
    return [
        q for q in owners if not any(o != q and (o == "" or q.startswith(f"{o}.")) for o in owners)
    ]


#: removal methods that fail on their package's own model, whatever the weight norm: not called
#: below; test_broken_own_removals_fail_without_weightnorm checks they still fail
BROKEN_OWN_REMOVALS = {
    # transformers' VitsWaveNet.remove_weight_norm reads self.speaker_embedding_size, which a
    # VitsWaveNet never sets (AttributeError)
    "vits": ["flow.flows.0.wavenet", "flow.flows.1.wavenet", "posterior_encoder.wavenet"],
}


def test_the_models_own_removal_is_fold(spec: zoo.ZooModel, theirs: nn.Module) -> None:
    """Issue 30: the package's own ``remove_weight_norm()`` (HiFi-GAN, BigVGAN, transformers'
    vocoders and codecs) calls ``torch.nn.utils.remove_weight_norm`` or
    ``parametrize.remove_parametrizations`` on each layer, and raised ``ValueError: weight_norm
    of 'weight' not found`` after ``replace_torch_weight_norm``. It now folds what it covers,
    every parameter and the output bit for bit as ``wn.fold``."""
    ours = wn.replace_torch_weight_norm(spec.build())
    broken = BROKEN_OWN_REMOVALS.get(spec.name, [])
    owners = [q for q in own_removals(ours) if q not in broken]
    if not owners:
        pytest.skip(f"{spec.name}: its package gives it no remove_weight_norm() method")
    reference = copy.deepcopy(ours)
    for qualname in owners:
        ours.get_submodule(qualname).remove_weight_norm()
        wn.fold(reference.get_submodule(qualname))
        assert our_norms(ours.get_submodule(qualname)) == [], qualname
    assert our_norms(ours) == our_norms(reference)
    assert [type(m) for m in ours.modules()] == [type(m) for m in reference.modules()]
    for (name, p), q in zip(ours.named_parameters(), reference.parameters(), strict=True):
        assert type(p) is type(q), name
    assert_same_tensors(ours.state_dict(), reference.state_dict())
    assert torch.equal(outputs(spec, ours), outputs(spec, reference))


@pytest.mark.parametrize("name", list(BROKEN_OWN_REMOVALS))
def test_broken_own_removals_fail_without_weightnorm(name: str) -> None:
    """The removal methods skipped above fail on the package's own model too (when the package
    fixes one, this fails: drop it from BROKEN_OWN_REMOVALS)."""
    if name not in NAMES:
        pytest.skip(f"{name} is not installed here")
    model = zoo.ZOO[name].build()
    for qualname in BROKEN_OWN_REMOVALS[name]:
        with pytest.raises(AttributeError):
            model.get_submodule(qualname).remove_weight_norm()


def test_copies_and_pickles(spec: zoo.ZooModel, theirs: nn.Module) -> None:
    ours = wn.replace_torch_weight_norm(theirs)
    expected = outputs(spec, ours)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    for clone in (copy.deepcopy(ours), torch.load(buffer, weights_only=False)):
        assert our_norms(clone) == our_norms(ours)
        assert torch.equal(outputs(spec, clone), expected)


def _targets(spec: zoo.ZooModel, theirs: nn.Module, to: str) -> dict[str, nn.Module]:
    """The models a checkpoint converted to ``to`` must load into, strictly."""
    if to == "plain":
        return {"folded": wn.fold(spec.build())}
    out = {"migrated": wn.replace_torch_weight_norm(spec.build(seed=1))}
    if (to == "parametrize") == (spec.torch_weight_norm == "parametrize"):
        out["package's own"] = spec.build(seed=1)
    return out


def _check_loads(
    spec: zoo.ZooModel, theirs: nn.Module, converted: dict[str, object], to: str
) -> None:
    expected = outputs(spec, theirs)
    for label, target in _targets(spec, theirs, to).items():
        target.load_state_dict(converted, strict=True)  # type: ignore[arg-type]
        got = outputs(spec, target)
        if to == "plain":  # computed weights: the model runs the same math on them
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=label)
        else:
            assert torch.equal(got, expected), label


@pytest.mark.parametrize("to", ["weightnorm", "parametrize", "plain"])
def test_converted_checkpoint_loads_strictly(
    spec: zoo.ZooModel, theirs: nn.Module, to: str
) -> None:
    """Regression: conversion split every plain 2-D+ weight (codebooks, attention, convs never
    normalized) into g and v, so 5 of 12 real checkpoints no longer loaded into their model."""
    converted = wn.convert_state_dict(theirs.state_dict(), to=to)  # type: ignore[arg-type]
    _check_loads(spec, theirs, converted, to)


@pytest.mark.parametrize("to", ["weightnorm", "parametrize", "plain"])
def test_cli_converted_checkpoint_loads_strictly(
    spec: zoo.ZooModel,
    theirs: nn.Module,
    to: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save({"model": theirs.state_dict(), "step": 7}, src)
    assert cli.main(["convert", str(src), str(dst), "--to", to]) == 0, capsys.readouterr().err
    saved = torch.load(dst, weights_only=True)
    assert saved["step"] == 7
    _check_loads(spec, theirs, saved["model"], to)


def test_plain_checkpoint_converts_like_the_model(spec: zoo.ZooModel, theirs: nn.Module) -> None:
    """A folded (inference) checkpoint becomes a training checkpoint of the package's model."""
    plain = wn.fold(spec.build()).state_dict()
    to = "parametrize" if spec.torch_weight_norm == "parametrize" else "weightnorm"
    converted = wn.convert_state_dict(plain, to=to, like=theirs)
    target = spec.build(seed=1)
    target.load_state_dict(converted, strict=True)
    torch.testing.assert_close(outputs(spec, target), outputs(spec, theirs), rtol=1e-4, atol=1e-5)


def test_optimizer_level_trains_the_models_parameterization(
    spec: zoo.ZooModel, theirs: nn.Module
) -> None:
    """Regression: WeightNormOptimizer chose layers by type (10 on Wav2Vec2, whose model
    normalizes 1): from_model takes over exactly the model's weight norms, and the plain model
    then follows the reparameterized model's trajectory."""
    reparam = spec.build().double()
    plain = spec.build().double()
    opt_a = torch.optim.Adam(reparam.parameters(), lr=1e-3)
    opt_b = wn.optim.WeightNormOptimizer.from_model(plain, torch.optim.Adam, lr=1e-3)
    expected = {f"{q}.{n}" if q else n: d for q, n, d in torch_norms(theirs)}
    assert opt_b.dims() == expected
    assert torch_norms(plain) == []
    assert our_norms(plain) == []
    for step in range(3):
        inputs = spec.inputs(step, torch.float64)
        for model, opt in ((reparam, opt_a), (plain, opt_b)):
            opt.zero_grad()
            spec.loss(model, inputs).backward()
            opt.step()
    folded = wn.fold(reparam).state_dict()
    got = plain.state_dict()
    assert list(got) == list(folded)
    for key in folded:
        torch.testing.assert_close(got[key], folded[key], rtol=1e-9, atol=1e-11, msg=key)


def _plain_fails(action: str, spec: zoo.ZooModel, run: Callable[[nn.Module], object]) -> None:
    """Skip when the package's model cannot do ``action`` even without any weight norm."""
    try:
        run(wn.fold(spec.build()))
    except Exception as err:  # the model's own limitation, not ours
        pytest.skip(f"{spec.name} without weight norm does not {action}: {type(err).__name__}")


def test_export_matches_eager(spec: zoo.ZooModel) -> None:
    args, kwargs = spec.inputs(0)

    def export(model: nn.Module) -> torch.export.ExportedProgram:
        return torch.export.export(spec.as_module(model).eval(), args, kwargs)

    _plain_fails("export", spec, export)
    ours = wn.replace_torch_weight_norm(spec.build()).eval()
    exported = export(ours)
    with torch.no_grad():
        expected = spec.output(ours, (args, kwargs))
        got = exported.module()(*args, **kwargs)
    if spec.stochastic:  # the exported graph draws its own noise
        assert got.ndim == expected.ndim
        assert torch.isfinite(got).all()
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compile_fullgraph_matches_eager(spec: zoo.ZooModel) -> None:
    """forward and backward of the migrated model under torch.compile(fullgraph=True)."""
    args, kwargs = spec.inputs(0)

    def step(model: nn.Module) -> torch.Tensor:
        torch._dynamo.reset()
        out = torch.compile(spec.as_module(model), fullgraph=True)(*args, **kwargs)
        out.pow(2).mean().backward()
        return out

    _plain_fails("compile with fullgraph=True", spec, step)
    eager, compiled = (wn.replace_torch_weight_norm(spec.build()) for _ in range(2))
    expected = spec.output(eager, (args, kwargs))
    expected.pow(2).mean().backward()
    got = step(compiled)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        if p.grad is None:
            assert q.grad is None, name
        else:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
