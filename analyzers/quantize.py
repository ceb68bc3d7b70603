"""Dynamic int8 quantisation of a CPU audio classifier, kept only if it agrees with fp32.

``torch.ao.quantization.quantize_dynamic`` turns the ``nn.Linear`` layers (about 60 % of a
wav2vec2 classifier's CPU time) into int8 kernels: about 1.5x less CPU per audio-second here.
Its effect on a given checkpoint's accuracy is not known in advance, so :func:`quantize_checked`
compares the two models on probe signals and keeps int8 only when their output distributions
agree (mean total-variation distance at most ``tolerance``); otherwise fp32 stays.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from analyzers.types import SAMPLE_RATE

__all__ = ["probe_signals", "quantize_checked"]

log = logging.getLogger(__name__)

Run = Callable[[Any, npt.NDArray[np.float32]], npt.NDArray[np.float64]]


def probe_signals(seconds: float = 2.0) -> list[npt.NDArray[np.float32]]:
    """Voice-like test inputs: harmonic sources with vibrato at several pitches, plus breath
    noise, and one noise-only input. Fixed seed: the check is repeatable."""
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    out = []
    for f0, rate in ((110.0, 4.0), (190.0, 5.5), (290.0, 6.5)):
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.03 * np.sin(2 * np.pi * rate * t))) / SAMPLE_RATE
        voice = sum(np.sin(k * phase) / k for k in range(1, 12))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2.5 * t) ** 2  # syllable-like loudness
        out.append((0.1 * voice * envelope + 0.01 * rng.standard_normal(len(t))).astype(np.float32))
    out.append((0.05 * rng.standard_normal(len(t))).astype(np.float32))
    return out


def quantize_checked(model: Any, run: Run, tolerance: float = 0.05) -> tuple[Any, str]:
    """Return ``(model_to_use, note)``: the int8 model if it agrees with ``model`` on the probe
    signals (``run(model, audio)`` gives class probabilities), else ``model`` unchanged."""
    import torch

    quantize = getattr(getattr(torch, "ao", None), "quantization", None)
    if quantize is None or not hasattr(quantize, "quantize_dynamic"):
        return model, "int8 quantisation is not available in this torch build; using fp32"
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao; it still works in 2.13.
        warnings.simplefilter("ignore")
        try:
            qmodel = quantize.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        except Exception as exc:  # an unsupported layer or backend: fp32 is always correct
            return model, f"int8 quantisation failed ({exc}); using fp32"
        distances = [0.5 * float(np.abs(run(model, x) - run(qmodel, x)).sum())
                     for x in probe_signals()]
    worst, mean = max(distances), float(np.mean(distances))
    if mean > tolerance:
        return model, (f"int8 disagrees with fp32 on probe signals (mean total variation "
                       f"{mean:.3f} > {tolerance}); using fp32")
    return qmodel, (f"int8 dynamic quantisation kept (probe agreement with fp32: mean total "
                    f"variation {mean:.4f}, worst {worst:.4f})")
