"""The model zoo: weight-normalized architectures as their own packages build them.

Each :class:`ZooModel` builds a real model from the code of the package its users train it with
(``transformers``, ``snac``, ``bigvgan``, ``descript-audio-codec``, ``encodec``, ``vocos``,
``speechbrain``), in a small configuration with random weights (nothing is downloaded), carrying
the weight norm that package applies: torch's legacy hook (``torch.nn.utils.weight_norm``) or its
parametrization (``torch.nn.utils.parametrizations.weight_norm``). They are the test bed of the
library's interop (replace, load, convert, fold) and the benchmark of its speed
(``weightnorm bench --zoo``).

This module belongs to the layer above the library (benchmarks, tests): the library never
imports it. Install the packages of the first eight models with ``pip install "weightnorm[zoo]"``.
The four standalone packages that need ``torchaudio`` at import (``descript-audio-codec``,
``encodec``, ``vocos``, ``speechbrain``) are not in that extra: torchaudio is served for an older
torch than the one this project tests (and has no CPU wheel). ``bash benchmarks/zoo-torch29``
builds them an environment of their own (torch 2.9.1, torchaudio 2.9.1) and runs the zoo checks
there.
Where a model's package is missing, :func:`missing_packages` names it and the tests skip it.

Example::

    >>> from weightnorm.experiments import zoo
    >>> spec = zoo.ZOO["speecht5-hifigan"]
    >>> model = spec.build()
    >>> spec.loss(model, spec.inputs(0)).ndim
    0
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

__all__ = ["ZOO", "ZooModel", "install_hint", "installed", "missing_packages"]

Inputs = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class ZooModel:
    """One zoo architecture: how to build it, feed it and reduce its output to a loss.

    ``build()`` returns the package's model with its weight norm, in ``train()`` mode, seeded
    (the same weights at every call). ``inputs(seed)`` returns ``(args, kwargs)`` for one
    training step (floating tensors in ``dtype`` if given), ``output(model, inputs)`` the
    tensor the step differentiates, and ``loss`` a scalar of it."""

    name: str
    package: str  # the PyPI distribution that holds the model's code
    module: str  # the import that must be available
    torch_weight_norm: Literal["legacy", "parametrize"]
    build_fn: Callable[[], nn.Module]
    inputs_fn: Callable[[torch.Generator], Inputs]
    output_fn: Callable[[nn.Module, Inputs], Tensor]
    stochastic: bool = False  # samples noise in its forward (``output`` seeds it first)
    install: str = 'pip install "weightnorm[zoo]"'  # what installs ``package`` beside this one

    def build(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        with warnings.catch_warnings():  # the package's call of torch's deprecated legacy hook
            warnings.filterwarnings("ignore", "`torch.nn.utils.weight_norm` is deprecated")
            return self.build_fn().train()

    def inputs(self, seed: int = 0, dtype: torch.dtype | None = None) -> Inputs:
        args, kwargs = self.inputs_fn(torch.Generator().manual_seed(seed))
        if dtype is None:
            return args, kwargs

        def cast(t: Any) -> Any:
            return t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t

        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    def output(self, model: nn.Module, inputs: Inputs) -> Tensor:
        if self.stochastic:  # the same noise for every copy of the model
            torch.manual_seed(0)
        return self.output_fn(model, inputs)

    def as_module(self, model: nn.Module) -> nn.Module:
        """``model`` behind a module whose ``forward(*args, **kwargs)`` is :meth:`output`
        (for ``torch.compile`` and ``torch.export`` of the step's computation)."""
        return _Forward(self, model)

    def loss(self, model: nn.Module, inputs: Inputs, target: Tensor | None = None) -> Tensor:
        """The mean square error of the output against ``target`` (default: a fixed random
        tensor of the output's shape). Not the output's mean square: a layer-normed output, as
        wav2vec2's, has a nearly constant mean square and leaves every layer below it with
        gradients that are only rounding noise."""
        out = self.output(model, inputs)
        if out.dtype in (torch.float16, torch.bfloat16):  # (autocast)
            out = out.float()
        if target is None:
            target = torch.randn(out.shape, generator=torch.Generator().manual_seed(1234))
        return (out - target.to(out.device, out.dtype)).pow(2).mean()


class _Forward(nn.Module):
    def __init__(self, spec: ZooModel, model: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.spec.output(self.model, (args, kwargs))


# --- transformers ------------------------------------------------------------------------------


def _transformers(model: str, *, apply_weight_norm: bool = False, **config: Any) -> nn.Module:
    """transformers' ``model`` class built from its config class (the name without ``Model``,
    then ``Config``) with ``config``; ``apply_weight_norm``: the model's own method that
    transformers calls to train it (and undoes to infer)."""
    import transformers

    config_class = getattr(transformers, model.removesuffix("Model") + "Config")
    built = getattr(transformers, model)(config_class(**config))
    if apply_weight_norm:
        built.apply_weight_norm()
    return cast(nn.Module, built)


def _encodec() -> nn.Module:
    return _transformers(
        "EncodecModel",
        target_bandwidths=[6.0], sampling_rate=8000, hidden_size=32, num_filters=8,
        upsampling_ratios=[4, 4], num_lstm_layers=1, codebook_size=64, codebook_dim=32,
    )  # fmt: skip


def _dac() -> nn.Module:
    return _transformers(
        "DacModel", apply_weight_norm=True,
        encoder_hidden_size=8, downsampling_ratios=[2, 4], decoder_hidden_size=32,
        n_codebooks=2, codebook_size=32, codebook_dim=4, hidden_size=32,
    )  # fmt: skip


def _hifigan() -> nn.Module:
    return _transformers(
        "SpeechT5HifiGan", apply_weight_norm=True,
        model_in_dim=16, upsample_initial_channel=32, upsample_rates=[4, 4],
        upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3, 5],
        resblock_dilation_sizes=[[1, 3], [1, 3]],
    )  # fmt: skip


def _wav2vec2() -> nn.Module:
    return _transformers(
        "Wav2Vec2Model",
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        layerdrop=0.0, mask_time_prob=0.0,
    )  # fmt: skip


def _vits() -> nn.Module:
    model = _transformers(
        "VitsModel",
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=32, flow_size=16,
        spectrogram_bins=33, upsample_initial_channel=16, upsample_rates=[4, 4],
        upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
        duration_predictor_filter_channels=16, prior_encoder_num_flows=2,
        prior_encoder_num_wavenet_layers=2, posterior_encoder_num_wavenet_layers=2,
        duration_predictor_num_flows=2, layerdrop=0.0, hidden_dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, duration_predictor_dropout=0.0,
    )  # fmt: skip
    # the decoder's; the flows' WaveNet layers normalize at construction
    cast(Any, model).decoder.apply_weight_norm()
    return model


def _univnet() -> nn.Module:
    return _transformers(
        "UnivNetModel", apply_weight_norm=True,
        model_in_channels=8, model_hidden_channels=8, num_mel_bins=16,
        resblock_kernel_sizes=[3, 3], resblock_stride_sizes=[4, 4],
        resblock_dilation_sizes=[[1, 3], [1, 3]], kernel_predictor_num_blocks=1,
        kernel_predictor_hidden_channels=8,
    )  # fmt: skip


# --- standalone packages -----------------------------------------------------------------------


def _snac() -> nn.Module:
    from snac import SNAC

    model = SNAC(
        sampling_rate=16000, encoder_dim=8, encoder_rates=[2, 4], decoder_dim=32,
        decoder_rates=[4, 2], attn_window_size=None, codebook_size=32, codebook_dim=4,
        vq_strides=[2, 1], noise=True, depthwise=True,
    )  # fmt: skip
    return cast(nn.Module, model)


def _bigvgan() -> nn.Module:
    from bigvgan.bigvgan import BigVGAN
    from bigvgan.env import AttrDict

    h = AttrDict(
        num_mels=16, upsample_initial_channel=32, upsample_rates=[4, 4],
        upsample_kernel_sizes=[8, 8], resblock="1", resblock_kernel_sizes=[3, 5],
        resblock_dilation_sizes=[[1, 3], [1, 3]], activation="snakebeta", snake_logscale=True,
    )  # fmt: skip
    return cast(nn.Module, BigVGAN(h, use_cuda_kernel=False))


# --- standalone packages that need torchaudio (installed by benchmarks/zoo-torch29) ---------------


def _dac_descript() -> nn.Module:
    """descript-audio-codec's ``dac.DAC``: every conv of its encoder, decoder and quantizer
    projections built by ``dac.nn.layers.WNConv1d``/``WNConvTranspose1d`` (the legacy hook)."""
    from dac import DAC

    model = DAC(
        encoder_dim=8, encoder_rates=[2, 4], decoder_dim=32, decoder_rates=[4, 2],
        n_codebooks=2, codebook_size=32, codebook_dim=4, sample_rate=16000,
    )  # fmt: skip
    return cast(nn.Module, model)


def _encodec_meta() -> nn.Module:
    """encodec's ``EncodecModel`` from its SEANet encoder and decoder with
    ``norm="weight_norm"`` (``SConv1d``/``SConvTranspose1d``: the legacy hook), as
    ``EncodecModel._get_model`` assembles the 24 kHz model, and a residual vector quantizer."""
    from encodec.model import EncodecModel
    from encodec.modules import SEANetDecoder, SEANetEncoder
    from encodec.quantization import ResidualVectorQuantizer

    seanet: dict[str, Any] = dict(
        channels=1, dimension=16, n_filters=4, n_residual_layers=1, ratios=[4, 2],
        norm="weight_norm", causal=True, lstm=1,
    )  # fmt: skip
    quantizer = ResidualVectorQuantizer(dimension=16, n_q=2, bins=32)
    model = EncodecModel(
        SEANetEncoder(**seanet), SEANetDecoder(**seanet), quantizer,
        target_bandwidths=[1.5], sample_rate=8000, channels=1,
    )  # fmt: skip
    return cast(nn.Module, model)


def _vocos() -> nn.Module:
    """vocos' ``Vocos`` as its ``configs/vocos-resnet.yaml`` assembles it: mel features, the
    ``VocosResNetBackbone`` (its ``embed`` conv and HiFi-GAN ``ResBlock1`` convs: the legacy
    hook) and the ISTFT head."""
    from vocos import Vocos
    from vocos.feature_extractors import MelSpectrogramFeatures
    from vocos.heads import ISTFTHead
    from vocos.models import VocosResNetBackbone

    model = Vocos(
        feature_extractor=MelSpectrogramFeatures(
            sample_rate=8000, n_fft=64, hop_length=16, n_mels=16, padding="center"
        ),
        backbone=VocosResNetBackbone(input_channels=16, dim=32, num_blocks=2),
        head=ISTFTHead(dim=32, n_fft=64, hop_length=16, padding="center"),
    )
    return cast(nn.Module, model)


def _speechbrain_hifigan() -> nn.Module:
    """speechbrain's ``HifiganGenerator`` (``speechbrain.lobes.models.HifiGAN``): its
    ``speechbrain.nnet.CNN`` convs built with ``weight_norm=True`` (torch's parametrization)."""
    from speechbrain.lobes.models.HifiGAN import HifiganGenerator

    model = HifiganGenerator(
        in_channels=16, out_channels=1, resblock_type="1",
        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], resblock_kernel_sizes=[3, 5],
        upsample_kernel_sizes=[8, 8], upsample_initial_channel=32, upsample_factors=[4, 4],
    )  # fmt: skip
    return cast(nn.Module, model)


# --- inputs and outputs ------------------------------------------------------------------------


def _audio(length: int) -> Callable[[torch.Generator], Inputs]:
    def make(gen: torch.Generator) -> Inputs:
        return (torch.randn(2, 1, length, generator=gen),), {}

    return make


def _frames(frames: int, bins: int, channels_last: bool) -> Callable[[torch.Generator], Inputs]:
    def make(gen: torch.Generator) -> Inputs:
        shape = (2, frames, bins) if channels_last else (2, bins, frames)
        return (torch.randn(shape, generator=gen),), {}

    return make


def _vits_inputs(gen: torch.Generator) -> Inputs:
    ids = torch.randint(1, 38, (2, 12), generator=gen)
    return (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _univnet_inputs(gen: torch.Generator) -> Inputs:
    features = torch.randn(2, 12, 16, generator=gen)  # (batch, frames, mel bins)
    noise = torch.randn(2, 12, 8, generator=gen)  # (batch, frames, model_in_channels)
    return (features,), {"noise_sequence": noise}


def _call(attr: str | None) -> Callable[[nn.Module, Inputs], Tensor]:
    def output(model: nn.Module, inputs: Inputs) -> Tensor:
        args, kwargs = inputs
        out = model(*args, **kwargs)
        if attr is None:
            return out[0] if isinstance(out, (tuple, list)) else out  # type: ignore[no-any-return]
        return getattr(out, attr)  # type: ignore[no-any-return]

    return output


def _item(key: str) -> Callable[[nn.Module, Inputs], Tensor]:
    def output(model: nn.Module, inputs: Inputs) -> Tensor:
        args, kwargs = inputs
        return model(*args, **kwargs)[key]  # type: ignore[no-any-return]

    return output


def _vocos_train(model: nn.Module, inputs: Inputs) -> Tensor:
    """Features, backbone, head: the generator's step in vocos' training module
    (``Vocos.forward`` runs under ``torch.inference_mode``, for inference only)."""
    (audio,), _ = inputs  # (batch, samples)
    m = cast(Any, model)
    return m.head(m.backbone(m.feature_extractor(audio)))  # type: ignore[no-any-return]


def _autoencoder(model: nn.Module, inputs: Inputs) -> Tensor:
    """The codec's encoder and decoder, the quantizer bypassed (its codes pass no gradient)."""
    (audio,), _ = inputs
    return model.decoder(model.encoder(audio))  # type: ignore[operator,no-any-return]


_TORCH29 = "bash benchmarks/zoo-torch29 (an environment of its own: torch 2.9.1, torchaudio)"

ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel("encodec", "transformers", "transformers", "parametrize",
                 _encodec, _audio(320), _autoencoder),
        ZooModel("dac", "transformers", "transformers", "parametrize",
                 _dac, _audio(256), _call("audio_values")),
        ZooModel("speecht5-hifigan", "transformers", "transformers", "parametrize",
                 _hifigan, _frames(16, 16, channels_last=True), _call(None)),
        ZooModel("wav2vec2", "transformers", "transformers", "parametrize",
                 _wav2vec2, lambda gen: ((torch.randn(2, 800, generator=gen),), {}),
                 _call("last_hidden_state")),
        ZooModel("vits", "transformers", "transformers", "parametrize",
                 _vits, _vits_inputs, _call("waveform"), stochastic=True),
        ZooModel("univnet", "transformers", "transformers", "parametrize",
                 _univnet, _univnet_inputs, _call("waveforms")),
        ZooModel("snac", "snac", "snac", "parametrize",
                 _snac, _audio(256), _call(None), stochastic=True),
        ZooModel("bigvgan", "bigvgan", "bigvgan", "legacy",
                 _bigvgan, _frames(16, 16, channels_last=False), _call(None)),
        ZooModel("dac-descript", "descript-audio-codec", "dac", "legacy",
                 _dac_descript, _audio(256), _item("audio"), install=_TORCH29),
        ZooModel("encodec-meta", "encodec", "encodec", "legacy",
                 _encodec_meta, _audio(320), _autoencoder, install=_TORCH29),
        ZooModel("vocos", "vocos", "vocos", "legacy",
                 _vocos, lambda gen: ((torch.randn(2, 256, generator=gen),), {}), _vocos_train,
                 install=_TORCH29),
        ZooModel("speechbrain-hifigan", "speechbrain", "speechbrain", "parametrize",
                 _speechbrain_hifigan, _frames(16, 16, channels_last=False), _call(None),
                 install=_TORCH29),
    )
}  # fmt: skip


def missing_packages(names: list[str] | None = None) -> list[str]:
    """The PyPI packages the zoo models ``names`` (default: all) need and that are not installed."""
    need = {ZOO[n].package: ZOO[n].module for n in (list(ZOO) if names is None else names)}
    return sorted(p for p, mod in need.items() if importlib.util.find_spec(mod) is None)


def installed(names: list[str] | None = None) -> list[str]:
    """The zoo models among ``names`` (default: all) whose packages are installed, in order."""
    return [n for n in (list(ZOO) if names is None else names) if not missing_packages([n])]


def install_hint(names: list[str] | None = None) -> str:
    """How to install the packages that the zoo models ``names`` (default: all) miss."""
    hints = {ZOO[n].install: None for n in (list(ZOO) if names is None else names)
             if missing_packages([n])}  # fmt: skip
    return "; ".join(hints)
