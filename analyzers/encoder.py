"""wav2vec2's convolutional feature encoder as matrix products: the same maths, faster on CPUs.

The encoder (seven strided ``Conv1d`` layers over the raw waveform, each followed by a norm and
GELU) is about a third of a wav2vec2-base forward pass on a CPU. Through oneDNN's convolution it
also spends much of that time reordering tensors between layouts (in bf16, 35 % of all time went
to ``aten::copy_`` inside ``mkldnn_convolution``, README "Emotion inference"). Here each layer
keeps time-major activations ``(batch, frames, channels)`` and computes its convolution as one
matrix product over the unfolded frames (``x.unfold`` then ``nn.Linear``; all but the first
layer, whose single input channel makes a poor matrix product): one copy per layer,
no layout reorders, and the products run on the same GEMM kernels as the transformer, so bf16
uses AMX where the processor has it and int8 dynamic quantisation covers the encoder too.

:func:`use_matmul_encoder` swaps it into a loaded model; results agree with the original to float
rounding (tested).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["MatmulFeatureEncoder", "has_convertible_encoder", "use_matmul_encoder"]


class _ConvAsMatmul(nn.Module):
    """One encoder layer: conv (as unfold + linear), then its norm, then its activation."""

    def __init__(self, layer: Any) -> None:
        super().__init__()
        conv: nn.Conv1d = layer.conv
        c_out, c_in, k = conv.weight.shape
        self.kernel, self.stride = int(k), int(conv.stride[0])
        self.proj = nn.Linear(c_in * k, c_out, bias=conv.bias is not None)
        with torch.no_grad():
            self.proj.weight.copy_(conv.weight.reshape(c_out, c_in * k))  # (c, k) order
            if conv.bias is not None:
                self.proj.bias.copy_(conv.bias)
        norm = getattr(layer, "layer_norm", None)
        self.norm: nn.Module | None = norm
        self.per_channel = isinstance(norm, nn.GroupNorm)
        self.activation: nn.Module = layer.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, frames, channels)
        batch = x.shape[0]
        frames = x.unfold(1, self.kernel, self.stride)  # (batch, frames', channels, kernel)
        y = self.proj(frames.reshape(batch, frames.shape[1], -1))
        if self.per_channel:  # GroupNorm with a group per channel: over time, per channel
            norm = self.norm
            assert isinstance(norm, nn.GroupNorm)
            yf = y.float()
            var, mean = torch.var_mean(yf, dim=1, unbiased=False, keepdim=True)
            yf = (yf - mean) * torch.rsqrt(var + norm.eps)
            if norm.affine:
                yf = yf * norm.weight.float() + norm.bias.float()
            y = yf.to(y.dtype)
        elif self.norm is not None:  # LayerNorm over channels
            y = self.norm(y)
        return self.activation(y)


class MatmulFeatureEncoder(nn.Module):
    """Drop-in for transformers' ``Wav2Vec2FeatureEncoder`` (and HuBERT's/WavLM's): takes
    ``(batch, samples)``, returns ``(batch, channels, frames)`` (a transposed view)."""

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        layers = list(encoder.conv_layers)
        # The first layer (one input channel, kernel 10) stays a convolution: as a product
        # its inner dimension is 10, a poor GEMM (5x slower here), and it has no layout to fix.
        self.first = layers[0]
        self.layers = nn.ModuleList(_ConvAsMatmul(layer) for layer in layers[1:])
        self._requires_grad = False

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        x = self.first(input_values[:, None]).transpose(1, 2)  # (batch, frames, channels)
        for layer in self.layers:
            x = layer(x)
        return x.transpose(1, 2)

    def _freeze_parameters(self) -> None:
        for param in self.parameters():
            param.requires_grad = False


def _convertible(encoder: Any) -> bool:
    layers = getattr(encoder, "conv_layers", None)
    if not isinstance(layers, nn.ModuleList) or not layers:
        return False
    for layer in layers:
        conv = getattr(layer, "conv", None)
        norm = getattr(layer, "layer_norm", None)
        if not isinstance(conv, nn.Conv1d) or conv.padding not in ((0,), 0) \
                or conv.dilation != (1,) or conv.groups != 1 or conv.padding_mode != "zeros":
            return False
        if norm is not None and not (isinstance(norm, nn.LayerNorm) or (
                isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels)):
            return False
        if not hasattr(layer, "activation"):
            return False
    return True


def use_matmul_encoder(model: nn.Module) -> bool:
    """Swap every convertible feature encoder in ``model`` (fp32, eval) for a
    :class:`MatmulFeatureEncoder`; True when one was swapped."""
    swapped = False
    for parent in list(model.modules()):
        encoder = getattr(parent, "feature_extractor", None)
        if isinstance(encoder, nn.Module) and _convertible(encoder):
            parent.feature_extractor = MatmulFeatureEncoder(encoder).eval()
            swapped = True
    return swapped


def has_convertible_encoder(model: nn.Module) -> bool:
    """Whether :func:`use_matmul_encoder` would swap anything in ``model`` (Whisper's encoder,
    for one, is not a wav2vec2-style convolution stack)."""
    return any(isinstance(enc := getattr(m, "feature_extractor", None), nn.Module)
               and _convertible(enc) for m in model.modules())
