"""wav2vec2's convolutional feature encoder as matrix products: the same maths, faster on CPUs.

The encoder (seven strided ``Conv1d`` layers over the raw waveform, each followed by a norm and
GELU) is about a third of a wav2vec2-base forward pass on a CPU. Through oneDNN's convolution
most of that time went to reordering tensors between layouts: in bf16 on one thread of an AMX
Xeon, for a 4 s input, the first layer's output reorder alone took 40 ms and the gather that fed
the second layer 26 ms, against 14 ms for that layer's product (README "Emotion inference").

Here activations stay time-major ``(batch, frames, channels)`` and contiguous from the first
layer on. A layer with kernel ``k`` and stride ``s`` reads, for output frame ``t``, the input
rows ``s*t .. s*t+k-1``: with the weights ordered (kernel, channel) that is one contiguous run of
``k*channels`` values starting at row ``s*t``, so the unfolded input is a strided *view* of the
activations and the convolution is one matrix product over it (no reorder, no gather), on the
same GEMM kernels as the transformer (bf16 uses AMX where the processor has it; int8 dynamic
quantisation covers layers 2-7 too).

The first layer (one input channel, kernel 10) with its per-channel GroupNorm (wav2vec2-base's
``feat_extract_norm = "group"``) is folded into one product: the norm's mean and variance over
time of a channel are linear and quadratic forms of the input windows' mean and 10x10
covariance (computed in fp32), so the normalised output is the windows times scaled weights plus
a shift, for each batch row. One pass over the largest activation instead of five.

:func:`use_matmul_encoder` swaps it into a loaded model; results agree with the original to float
rounding (tested).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["MatmulFeatureEncoder", "has_convertible_encoder", "use_matmul_encoder"]

#: A per-channel GroupNorm is folded into the product when the windows are this narrow (the
#: first layer's kernel of 10 over one channel): its statistics need their covariance.
_FOLD_MAX_WIDTH = 64


def _windows(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """``(batch, frames', kernel*channels)``: every output frame's input rows, as a view of the
    contiguous time-major ``x`` ``(batch, frames, channels)``."""
    x = x.contiguous()
    batch, frames, channels = x.shape
    out_frames = (frames - kernel) // stride + 1
    return x.as_strided((batch, out_frames, kernel * channels),
                        (frames * channels, stride * channels, 1))


class _PlainLinear(nn.Module):
    """A linear layer's weights that ``quantize_dynamic`` leaves alone (not an ``nn.Linear``)."""

    def __init__(self, width: int, out: int, *, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out, width), requires_grad=False)
        self.bias: nn.Parameter | None = (nn.Parameter(torch.empty(out), requires_grad=False)
                                          if bias else None)


class _ConvAsMatmul(nn.Module):
    """One encoder layer: conv (a product over the windows), then its norm, then GELU."""

    def __init__(self, layer: Any) -> None:
        super().__init__()
        conv: nn.Conv1d = layer.conv
        c_out, c_in, k = conv.weight.shape
        self.kernel, self.stride = int(k), int(conv.stride[0])
        norm = getattr(layer, "layer_norm", None)
        self.norm: nn.Module | None = norm
        self.per_channel = isinstance(norm, nn.GroupNorm)
        self.fold = self.per_channel and c_in * k <= _FOLD_MAX_WIDTH
        # (out, in, kernel) -> (out, kernel*in): the windows' order. A folded layer keeps plain
        # weights (an inner dimension of 10 is nothing worth quantising).
        proj = (_PlainLinear if self.fold else nn.Linear)(c_in * k, c_out,
                                                          bias=conv.bias is not None)
        with torch.no_grad():
            proj.weight.copy_(conv.weight.permute(0, 2, 1).reshape(c_out, k * c_in))
            if conv.bias is not None and proj.bias is not None:
                proj.bias.copy_(conv.bias)
        self.proj: nn.Module = proj
        self.activation: nn.Module = layer.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, frames, channels)
        windows = _windows(x, self.kernel, self.stride)
        if self.fold:
            return self.activation(self._folded(windows))
        proj = self.proj
        if isinstance(proj, nn.Linear):  # float: the strided view straight into the GEMM
            y = torch.matmul(windows, proj.weight.t())
            if proj.bias is not None:
                y = y + proj.bias
        else:  # a dynamically quantised linear layer
            y = proj(windows)
        if self.per_channel:
            y = self._group_norm(y)
        elif self.norm is not None:  # LayerNorm over channels
            y = self.norm(y)
        return self.activation(y)

    def _folded(self, windows: torch.Tensor) -> torch.Tensor:
        """The product and the per-channel norm over time in one: statistics from the windows'
        mean and covariance (fp32), the norm folded into each batch row's weights and shift."""
        norm, proj = self.norm, self.proj
        assert isinstance(norm, nn.GroupNorm) and isinstance(proj, _PlainLinear)
        weight = proj.weight.float()  # (out, width)
        w = windows.float()
        mean = w.mean(dim=1, keepdim=True)  # (batch, 1, width)
        centred = w - mean
        cov = torch.matmul(centred.transpose(1, 2), centred) / w.shape[1]  # (batch, width, width)
        # A conv bias shifts a channel and its mean alike: the norm removes it.
        y_mean = torch.matmul(mean, weight.t())  # (batch, 1, out)
        y_var = (torch.matmul(weight, cov) * weight).sum(dim=-1)[:, None]  # (batch, 1, out)
        scale = torch.rsqrt(y_var + norm.eps)
        if norm.affine:
            scale = scale * norm.weight.float()
        shift = -y_mean * scale
        if norm.affine:
            shift = shift + norm.bias.float()
        scaled = (weight.t()[None] * scale).to(windows.dtype)  # (batch, width, out)
        return torch.baddbmm(shift.to(windows.dtype), windows, scaled)

    def _group_norm(self, y: torch.Tensor) -> torch.Tensor:
        """A GroupNorm with a group per channel, over time, computed in fp32."""
        norm = self.norm
        assert isinstance(norm, nn.GroupNorm)
        yf = y.float()
        var, mean = torch.var_mean(yf, dim=1, unbiased=False, keepdim=True)
        yf = (yf - mean) * torch.rsqrt(var + norm.eps)
        if norm.affine:
            yf = yf * norm.weight.float() + norm.bias.float()
        return yf.to(y.dtype)


class MatmulFeatureEncoder(nn.Module):
    """Drop-in for transformers' ``Wav2Vec2FeatureEncoder`` (and HuBERT's/WavLM's): takes
    ``(batch, samples)``, returns ``(batch, channels, frames)`` (a transposed view)."""

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_ConvAsMatmul(layer) for layer in encoder.conv_layers)
        self._requires_grad = False

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        x = input_values[:, :, None]  # (batch, samples, 1): time-major with one channel
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
