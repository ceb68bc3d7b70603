"""wav2vec2 and HuBERT emotion checkpoints in plain torch: a first start without transformers.

A model prepared earlier loads with torch alone (:mod:`analyzers.prepared`); a checkpoint new to
the machine went through transformers, whose import is most of what a first start paid beyond a
later one. On a 2-core AMX Xeon, ``from transformers import Wav2Vec2ForSequenceClassification``
cost 2.9-3.5 CPU-s (its model-loading code imports torch.distributed.tensor, torch._dynamo,
sympy and scipy.optimize), against 7-9 CPU-s for a whole later ``analyze`` of a 3-minute
conversation.

So the checkpoints most emotion models are, transformers' ``Wav2Vec2ForSequenceClassification``
and ``HubertForSequenceClassification`` and audEERING's dimensional wav2vec2
(:mod:`analyzers.dimensional`), are built here from ``config.json`` with the same modules under
the same names, and their weights are read from the checkpoint's files with safetensors (or
``torch.load(weights_only=True)``). The maths is transformers' own, step for step, for inference
without an attention mask (how :class:`~analyzers.emotion.EmotionModel` runs every model: only
equal-length waveforms share a batch): the same layers, the same scaled-dot-product attention
call, the positional convolution's weight norm folded by the same function
(``torch._weight_norm``). Outputs equal transformers' (tests/test_wav2vec2.py builds checkpoints
of every supported shape and compares).

Anything this module does not reproduce exactly goes to transformers, as before (``None`` from
:func:`load_plain`, with the reason at debug level): another architecture, a configuration value
outside the supported set (adapters, HuBERT's batch-normed positional
convolution, activations other than GELU/ReLU, a dtype or attention implementation other than
fp32 and SDPA), a feature extractor whose inputs are not the plain (normalised) waveform,
weights not stored in fp32, any weight name or shape that does not match, or a file this module
cannot read (transformers then reports it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from analyzers.checkpoint import DIMENSIONAL_ARCHITECTURE, read_json
from analyzers.prepared import eligible_config

__all__ = ["ARCHITECTURES", "PlainClassifier", "load_plain"]

log = logging.getLogger(__name__)

#: architecture -> (the backbone's attribute name in the weights, its model type)
ARCHITECTURES = {
    "Wav2Vec2ForSequenceClassification": ("wav2vec2", "wav2vec2"),
    "HubertForSequenceClassification": ("hubert", "hubert"),
    DIMENSIONAL_ARCHITECTURE: ("wav2vec2", "wav2vec2"),  # audEERING's dimensional
}
#: config.json keys read here; a checkpoint without one of them goes to transformers (which
#: fills defaults this module would have to copy).
_REQUIRED = ("conv_dim", "conv_stride", "conv_kernel", "conv_bias", "feat_extract_norm",
             "feat_extract_activation", "hidden_size", "num_hidden_layers",
             "num_attention_heads", "intermediate_size", "hidden_act", "layer_norm_eps",
             "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "do_stable_layer_norm")
_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}
#: Weights the checkpoint may hold that inference never reads (SpecAugment's mask vector).
_UNUSED = ("masked_spec_embed",)


class _Unsupported(Exception):
    """Why this module does not load a checkpoint (transformers does)."""


@dataclass(frozen=True)
class _Spec:
    conv_dim: tuple[int, ...]
    conv_stride: tuple[int, ...]
    conv_kernel: tuple[int, ...]
    conv_bias: bool
    feat_extract_norm: str  # "group" | "layer"
    feat_extract_activation: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    num_conv_pos_embeddings: int
    num_conv_pos_embedding_groups: int
    do_stable_layer_norm: bool
    feat_proj_layer_norm: bool  # HuBERT's option; wav2vec2 always has the norm
    classifier_proj_size: int
    num_labels: int
    use_weighted_layer_sum: bool  # the head reads every layer's output, weighted (SUPERB's)

    @classmethod
    def from_config(cls, config: dict[str, Any], architecture: str, labels: int) -> _Spec:
        missing = [k for k in _REQUIRED if k not in config]
        if missing:
            raise _Unsupported(f"config.json lacks {', '.join(missing)}")
        for key in ("dtype", "torch_dtype"):  # transformers would build the model in it
            if config.get(key) not in (None, "float32"):
                raise _Unsupported(f"{key} {config[key]!r}")
        if config.get("attn_implementation") not in (None, "sdpa"):
            raise _Unsupported(f"attn_implementation {config['attn_implementation']!r}")
        if config.get("add_adapter") or config.get("adapter_attn_dim") is not None:
            raise _Unsupported("adapter layers")
        if config.get("conv_pos_batch_norm"):
            raise _Unsupported("a batch-normed positional convolution")
        if config["feat_extract_norm"] not in ("group", "layer"):
            raise _Unsupported(f"feat_extract_norm {config['feat_extract_norm']!r}")
        for key in ("feat_extract_activation", "hidden_act"):
            if config[key] not in _ACTIVATIONS:
                raise _Unsupported(f"{key} {config[key]!r}")
        layers = {len(config[k]) for k in ("conv_dim", "conv_stride", "conv_kernel")}
        if len(layers) != 1 or config.get("num_feat_extract_layers", len(config["conv_dim"])) \
                != len(config["conv_dim"]):
            raise _Unsupported("conv_dim, conv_stride and conv_kernel of different lengths")
        if config["hidden_size"] % config["num_attention_heads"]:
            raise _Unsupported("hidden_size not a multiple of num_attention_heads")
        hubert = ARCHITECTURES[architecture][1] == "hubert"
        if hubert and "feat_proj_layer_norm" not in config:
            raise _Unsupported("config.json lacks feat_proj_layer_norm")
        if architecture.endswith("ForSequenceClassification") and \
                "classifier_proj_size" not in config:
            raise _Unsupported("config.json lacks classifier_proj_size")
        return cls(
            conv_dim=tuple(int(x) for x in config["conv_dim"]),
            conv_stride=tuple(int(x) for x in config["conv_stride"]),
            conv_kernel=tuple(int(x) for x in config["conv_kernel"]),
            conv_bias=bool(config["conv_bias"]),
            feat_extract_norm=str(config["feat_extract_norm"]),
            feat_extract_activation=str(config["feat_extract_activation"]),
            hidden_size=int(config["hidden_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=int(config["num_attention_heads"]),
            intermediate_size=int(config["intermediate_size"]),
            hidden_act=str(config["hidden_act"]),
            layer_norm_eps=float(config["layer_norm_eps"]),
            num_conv_pos_embeddings=int(config["num_conv_pos_embeddings"]),
            num_conv_pos_embedding_groups=int(config["num_conv_pos_embedding_groups"]),
            do_stable_layer_norm=bool(config["do_stable_layer_norm"]),
            feat_proj_layer_norm=bool(config.get("feat_proj_layer_norm", True)) if hubert
            else True,
            classifier_proj_size=int(config.get("classifier_proj_size", 0)),
            num_labels=labels,
            use_weighted_layer_sum=bool(config.get("use_weighted_layer_sum", False))
            and architecture.endswith("ForSequenceClassification"),
        )


class _ConvLayer(nn.Module):
    """One feature-encoder layer: conv, its norm (per-channel GroupNorm, LayerNorm over channels,
    or none), activation. The attribute names are transformers' (analyzers/encoder.py reads
    them)."""

    def __init__(self, spec: _Spec, i: int) -> None:
        super().__init__()
        c_in = spec.conv_dim[i - 1] if i > 0 else 1
        c_out = spec.conv_dim[i]
        self.conv = nn.Conv1d(c_in, c_out, kernel_size=spec.conv_kernel[i],
                              stride=spec.conv_stride[i], bias=spec.conv_bias)
        self.layer_norm: nn.Module | None = None
        if spec.feat_extract_norm == "layer":
            self.layer_norm = nn.LayerNorm(c_out, elementwise_affine=True)
        elif i == 0:
            self.layer_norm = nn.GroupNorm(num_groups=c_out, num_channels=c_out, affine=True)
        self.activation = _ACTIVATIONS[spec.feat_extract_activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if isinstance(self.layer_norm, nn.LayerNorm):
            x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
        elif self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.activation(x)


class _FeatureEncoder(nn.Module):
    def __init__(self, spec: _Spec) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList(_ConvLayer(spec, i) for i in range(len(spec.conv_dim)))

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        x = input_values[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class _FeatureProjection(nn.Module):
    def __init__(self, spec: _Spec) -> None:
        super().__init__()
        self.layer_norm: nn.LayerNorm | None = (
            nn.LayerNorm(spec.conv_dim[-1], eps=spec.layer_norm_eps)
            if spec.feat_proj_layer_norm else None)
        self.projection = nn.Linear(spec.conv_dim[-1], spec.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.projection(x)


class _PositionalConv(nn.Module):
    """The grouped positional convolution; its weight norm is folded at load (``weight``)."""

    def __init__(self, spec: _Spec) -> None:
        super().__init__()
        k = spec.num_conv_pos_embeddings
        self.conv = nn.Conv1d(spec.hidden_size, spec.hidden_size, kernel_size=k, padding=k // 2,
                              groups=spec.num_conv_pos_embedding_groups)
        self.remove = 1 if k % 2 == 0 else 0
        self.activation = _ACTIVATIONS[spec.feat_extract_activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, frames, hidden)
        y = self.conv(x.transpose(1, 2))
        if self.remove:
            y = y[:, :, :-self.remove]
        return self.activation(y).transpose(1, 2)


class _Attention(nn.Module):
    def __init__(self, spec: _Spec) -> None:
        super().__init__()
        width = spec.hidden_size
        self.head_dim = width // spec.num_attention_heads
        self.scaling = self.head_dim ** -0.5
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], -1, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0,
                                                         scale=self.scaling, is_causal=False)
        out = out.transpose(1, 2).contiguous()
        return self.out_proj(out.reshape(*x.shape[:-1], -1).contiguous())


class _FeedForward(nn.Module):
    def __init__(self, spec: _Spec) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(spec.hidden_size, spec.intermediate_size)
        self.intermediate_act_fn = _ACTIVATIONS[spec.hidden_act]()
        self.output_dense = nn.Linear(spec.intermediate_size, spec.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(self.intermediate_act_fn(self.intermediate_dense(x)))


class _EncoderLayer(nn.Module):
    """Post-norm (base models) or pre-norm (``do_stable_layer_norm``, the large ones)."""

    def __init__(self, spec: _Spec) -> None:
        super().__init__()
        self.stable = spec.do_stable_layer_norm
        self.attention = _Attention(spec)
        self.layer_norm = nn.LayerNorm(spec.hidden_size, eps=spec.layer_norm_eps)
        self.feed_forward = _FeedForward(spec)
        self.final_layer_norm = nn.LayerNorm(spec.hidden_size, eps=spec.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stable:
            x = x + self.attention(self.layer_norm(x))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class _Encoder(nn.Module):
    """The last hidden state; with ``every_layer`` the input of the first layer and each
    layer's output, stacked ``(batch, layers + 1, frames, hidden)``: what transformers records
    as ``hidden_states`` (before a pre-norm encoder's final norm, which it does not apply to
    them)."""

    def __init__(self, spec: _Spec) -> None:
        super().__init__()
        self.stable = spec.do_stable_layer_norm
        self.every_layer = spec.use_weighted_layer_sum
        self.pos_conv_embed = _PositionalConv(spec)
        self.layer_norm = nn.LayerNorm(spec.hidden_size, eps=spec.layer_norm_eps)
        self.layers = nn.ModuleList(_EncoderLayer(spec) for _ in range(spec.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_conv_embed(x)
        if not self.stable:
            x = self.layer_norm(x)
        states = [x] if self.every_layer else []  # kept only where the head reads them
        for layer in self.layers:
            x = layer(x)
            if self.every_layer:
                states.append(x)
        if self.every_layer:
            return torch.stack(states, dim=1)
        return self.layer_norm(x) if self.stable else x


class _Backbone(nn.Module):
    """wav2vec2's or HuBERT's model: waveform -> last hidden state (or every layer's,
    :class:`_Encoder`)."""

    def __init__(self, spec: _Spec) -> None:
        super().__init__()
        self.feature_extractor = _FeatureEncoder(spec)
        self.feature_projection = _FeatureProjection(spec)
        self.encoder = _Encoder(spec)

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        features = self.feature_extractor(input_values).transpose(1, 2)
        return self.encoder(self.feature_projection(features))


class _RegressionHead(nn.Module):
    """audEERING's head (analyzers/dimensional.py): dense -> tanh -> out_proj."""

    def __init__(self, spec: _Spec) -> None:
        super().__init__()
        self.dense = nn.Linear(spec.hidden_size, spec.hidden_size)
        self.out_proj = nn.Linear(spec.hidden_size, spec.num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(x)))


class PlainClassifier(nn.Module):
    """``(batch, samples)`` -> ``{"logits": (batch, labels)}``: the backbone's hidden states
    (or with the weighted layer sum every layer's, weighted by the softmax of
    ``layer_weights``) through the sequence classifier's projector, mean over time and
    classifier, or for the dimensional head the mean over time through the regression head."""

    def __init__(self, spec: _Spec, base: str, dimensional: bool) -> None:
        super().__init__()
        self.base = base
        self.add_module(base, _Backbone(spec))
        self.layer_weights: nn.Parameter | None = None
        if spec.use_weighted_layer_sum:
            layers = spec.num_hidden_layers + 1
            self.layer_weights = nn.Parameter(torch.ones(layers) / layers)
        self.projector: nn.Linear | None = None
        self.classifier: nn.Module
        if dimensional:
            self.classifier = _RegressionHead(spec)
        else:
            self.projector = nn.Linear(spec.hidden_size, spec.classifier_proj_size)
            self.classifier = nn.Linear(spec.classifier_proj_size, spec.num_labels)

    def forward(self, input_values: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = getattr(self, self.base)(input_values)
        if self.layer_weights is not None:
            weights = nn.functional.softmax(self.layer_weights, dim=-1)
            hidden = (hidden * weights.view(-1, 1, 1)).sum(dim=1)
        if self.projector is not None:
            hidden = self.projector(hidden)
        return {"logits": self.classifier(hidden.mean(dim=1))}


def _read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(path)))
        else:
            state.update(torch.load(str(path), map_location="cpu", weights_only=True))
    return state


def _fold_weight_norm(state: dict[str, torch.Tensor], prefix: str) -> None:
    """The positional convolution's weight from its weight-norm pair (either naming), as
    transformers' model computes it (``torch._weight_norm`` over dim 2)."""
    names = [(f"{prefix}.parametrizations.weight.original0",
              f"{prefix}.parametrizations.weight.original1"),
             (f"{prefix}.weight_g", f"{prefix}.weight_v")]
    for g_name, v_name in names:
        if g_name in state and v_name in state:
            g, v = state.pop(g_name), state.pop(v_name)
            state[f"{prefix}.weight"] = torch._weight_norm(v, g, 2)
            return
    raise _Unsupported(f"no weight-norm pair for {prefix}")


def load_plain(root: Path, architecture: str | None, labels: int,
               weight_files: list[Path]) -> tuple[PlainClassifier, bool] | None:
    """The checkpoint in ``root`` as a :class:`PlainClassifier` (fp32, eval) and whether its
    inputs are normalised; None (the reason logged at debug) when this module does not run it
    exactly as transformers would."""
    try:
        return _load(root, architecture, labels, weight_files)
    except _Unsupported as why:
        log.debug("emotion model %s: loaded through transformers (%s)", root, why)
    except Exception as exc:  # a malformed config or file: transformers reports it, as before
        log.debug("emotion model %s: loaded through transformers (%s: %s)", root,
                  type(exc).__name__, exc)
    return None


def _load(root: Path, architecture: str | None, labels: int,
          weight_files: list[Path]) -> tuple[PlainClassifier, bool]:
    if architecture not in ARCHITECTURES:
        raise _Unsupported(f"architecture {architecture}")
    extractor = read_json(root / "preprocessor_config.json")
    if not eligible_config(extractor):  # the inputs analyzers.prepared makes
        raise _Unsupported("a feature extractor other than the plain 16 kHz waveform")
    config = read_json(root / "config.json")
    if not config or labels < 1 or not weight_files:
        raise _Unsupported("no labels or no weights")
    base, model_type = ARCHITECTURES[architecture]
    if config.get("model_type") != model_type:
        raise _Unsupported(f"model type {config.get('model_type')!r} for {architecture}")
    spec = _Spec.from_config(config, architecture, labels)
    dimensional = architecture == DIMENSIONAL_ARCHITECTURE
    state = _read_weights(weight_files)
    for name in list(state):
        if name.split(".")[-1] in _UNUSED:
            del state[name]
    if any(t.dtype != torch.float32 for t in state.values()):
        raise _Unsupported("weights not stored in fp32")
    _fold_weight_norm(state, f"{base}.encoder.pos_conv_embed.conv")
    with torch.device("meta"):
        model = PlainClassifier(spec, base, dimensional)
    expected = set(model.state_dict())
    if set(state) != expected:
        odd = sorted(set(state) ^ expected)
        raise _Unsupported(f"weight names differ ({', '.join(odd[:4])})")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # a shape that does not match the configuration
        raise _Unsupported(str(exc).splitlines()[-1].strip()) from exc
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model, bool(extractor.get("do_normalize", True))
