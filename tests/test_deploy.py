"""A realistic client (a HiFi-GAN-style generator) and deployment: compile, export, ONNX."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn

import weightnorm as wn

pytestmark = [
    # raised inside torch's own ONNX exporter (torch 2.13 with a newer typing_extensions)
    pytest.mark.filterwarnings("ignore:.*isinstance.treespec, LeafSpec.*:FutureWarning"),
]


class ResBlock(nn.Module):
    """HiFi-GAN's ResBlock1: dilated convs (1, 3, 5), each followed by a plain conv."""

    def __init__(self, channels: int, kernel: int = 3, dilations: tuple[int, ...] = (1, 3, 5)):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=d * (kernel - 1) // 2)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            h = c2(nn.functional.leaky_relu(c1(nn.functional.leaky_relu(x, 0.1)), 0.1))
            x = x + h
        return x


class Generator(nn.Module):
    """Mel (80 bins) to waveform: conv_pre, ConvTranspose upsampling, res blocks, conv_post."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.conv_pre = nn.Conv1d(80, channels, 7, padding=3)
        self.ups = nn.ModuleList(
            [
                nn.ConvTranspose1d(channels, channels // 2, 16, stride=8, padding=4),
                nn.ConvTranspose1d(channels // 2, channels // 4, 4, stride=2, padding=1),
            ]
        )
        self.resblocks = nn.ModuleList([ResBlock(channels // 2), ResBlock(channels // 4)])
        self.conv_post = nn.Conv1d(channels // 4, 1, 7, padding=3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel)  # (batch, channels, frames)
        for up, block in zip(self.ups, self.resblocks, strict=True):
            x = block(up(nn.functional.leaky_relu(x, 0.1)))
        return torch.tanh(self.conv_post(nn.functional.leaky_relu(x)))  # (batch, 1, samples)


def torch_generator() -> Generator:
    """The way HiFi-GAN code builds it: torch's legacy weight_norm on every conv."""
    torch.manual_seed(0)
    gen = Generator()
    convs = [m for m in gen.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated, and what HiFi-GAN uses
        for m in convs:
            nn.utils.weight_norm(m)
    return gen


MEL = torch.randn(2, 80, 6, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def migrated() -> tuple[Generator, torch.Tensor]:
    gen = torch_generator()
    reference = gen(MEL).detach()
    wn.replace_torch_weight_norm(gen)
    return gen, reference


def test_migration_keeps_outputs(migrated: tuple[Generator, torch.Tensor]) -> None:
    gen, reference = migrated
    torch.testing.assert_close(gen(MEL), reference, atol=1e-6, rtol=1e-6)
    assert all(
        wn.is_weight_normed(m)
        for m in gen.modules()
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))
    )
    # what torch's version could not do: EMA copies and whole-model pickling
    torch.testing.assert_close(copy.deepcopy(gen)(MEL), reference)
    torch.testing.assert_close(pickle.loads(pickle.dumps(gen))(MEL), reference)


@pytest.mark.parametrize("fmt", ["weightnorm", "parametrize", "plain"])
def test_torch_checkpoint_loads_through_every_format(fmt: str) -> None:
    gen = torch_generator()
    reference = gen(MEL).detach()
    sd = wn.convert_state_dict(gen.state_dict(), to=fmt)  # type: ignore[arg-type]
    ours = Generator()
    wn.apply_weight_norm(ours, dim=0)  # torch's checkpoint: ConvTranspose normalized per input
    ours.load_state_dict(sd)
    torch.testing.assert_close(ours(MEL), reference)
    # and into the per-output-unit default: loading re-splits the ConvTranspose norms
    per_output = wn.apply_weight_norm(Generator())
    per_output.load_state_dict(sd)
    torch.testing.assert_close(per_output(MEL), reference)


def test_migrated_model_trains(migrated: tuple[Generator, torch.Tensor]) -> None:
    gen, _ = migrated
    target = torch.randn(2, 1, 96, generator=torch.Generator().manual_seed(2)) * 0.1
    opt = torch.optim.Adam(gen.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = nn.functional.l1_loss(gen(MEL), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_fold_then_trace_export_and_onnx(migrated: tuple[Generator, torch.Tensor]) -> None:
    gen, reference = migrated
    gen.eval()
    wn.fold(gen)
    assert not any(wn.weight_norm_specs(m) for m in gen.modules())
    assert {type(m) for m in gen.modules() if isinstance(m, nn.Conv1d | nn.ConvTranspose1d)} == {
        nn.Conv1d, nn.ConvTranspose1d,
    }  # fmt: skip
    torch.testing.assert_close(gen(MEL), reference)
    traced = torch.jit.trace(gen, (MEL,))
    torch.testing.assert_close(traced(MEL), reference)
    exported = torch.export.export(gen, (MEL,))
    torch.testing.assert_close(exported.module()(MEL), reference)

    onnxruntime = pytest.importorskip("onnxruntime")
    program = torch.onnx.export(gen, (MEL,), dynamo=True)
    assert program is not None
    blob = program.model_proto.SerializeToString()
    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    (audio,) = session.run(None, {session.get_inputs()[0].name: MEL.numpy()})
    torch.testing.assert_close(torch.from_numpy(audio), reference, atol=1e-5, rtol=1e-4)


def test_unfolded_model_exports(migrated: tuple[Generator, torch.Tensor]) -> None:
    gen, reference = migrated
    exported = torch.export.export(gen.eval(), (MEL,))
    torch.testing.assert_close(exported.module()(MEL), reference)
    traced = torch.jit.trace(gen, (MEL,))
    torch.testing.assert_close(traced(MEL), reference)


@pytest.mark.slow
def test_compile_fullgraph_forward_and_backward() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        wn.WNConv1d(2, 8, 3, padding=1), nn.LeakyReLU(0.1),
        wn.WNConvTranspose1d(8, 4, 4, stride=2, padding=1), nn.LeakyReLU(0.1),
        wn.WNConv1d(4, 1, 3, padding=1),
    )  # fmt: skip
    x = torch.randn(3, 2, 16)
    eager_out = model(x)
    eager_out.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)  # fails on any graph break
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager_out)
    for p, g in zip(model.parameters(), eager_grads, strict=True):
        torch.testing.assert_close(p.grad, g)
