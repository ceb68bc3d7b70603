"""``affect-bridge models check MODEL``: what an emotion checkpoint is and how it would run here.

The same inspection the service runs at start (:func:`analyzers.checkpoint.inspect_checkpoint`):
family, inputs, outputs (labels with their canonical names, or dimensions), whether every head
weight is present, parameter count; then, unless refused, the model is loaded as the service
loads it (precision measured on this processor, or taken from the cache) and timed on a 4 s
voice-like input. Nothing is fetched: a hub id must be in the local cache.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["check", "format_check"]

SPEED_INPUT_S = 4.0
SPEED_RUNS = 3


def check(model: str, *, trust_remote_code: bool = False, precision: str = "auto",
          threads: int = 0) -> dict[str, Any]:
    """The report (JSON-ready). ``refused`` holds the reason when the product would not run it.
    Raises :class:`analyzers.loading.ModelUnavailable` when the checkpoint is not found locally
    or cannot be read."""
    from analyzers.checkpoint import ModelRefused, inspect_checkpoint
    from analyzers.emotion import EmotionConfig, EmotionModel
    from analyzers.heads import canonical_label
    from analyzers.precision import processor

    info = inspect_checkpoint(model, trust_remote_code=trust_remote_code)
    report: dict[str, Any] = {
        "model": model, "path": str(info.root), "architecture": info.architecture,
        "model_type": info.model_type, "family": info.family, "inputs": info.inputs,
        "head_weights": info.head_weights, "parameters": info.parameters,
        "refused": info.refusal,
    }
    if info.dimensional:
        report["outputs"] = {"dimensions": [label.lower() for label in info.labels],
                             "mapped": "model range 0..1 onto -1..1 ([emotion] dimension_range)"}
    else:
        report["outputs"] = {"labels": {label: canonical_label(label) for label in info.labels}}
    if info.refusal:
        return report
    loaded = EmotionModel(EmotionConfig(model=model, device="cpu", precision=precision,
                                        threads=threads, trust_remote_code=trust_remote_code,
                                        prepare="at_load"))  # the measured precision, reported
    try:
        loaded.load()
    except ModelRefused as exc:  # what only loading shows (a weight missing from the file)
        report["refused"] = str(exc)
        return report
    report["precision"] = loaded.precision
    report["precision_measurement"] = loaded.decision.describe() if loaded.decision else None
    report["processor"] = processor()
    report["audio_s_per_s"] = round(_speed(loaded), 2)
    return report


def _speed(model: Any) -> float:
    """Audio-seconds per second on a 4 s voice-like input, after one warm-up run."""
    from analyzers.precision import probe_signals

    wave = probe_signals(SPEED_INPUT_S)[1]
    model.configure_thread()
    model.predict([wave])
    started = time.perf_counter()
    for _ in range(SPEED_RUNS):
        model.predict([wave])
    return SPEED_INPUT_S * SPEED_RUNS / (time.perf_counter() - started)


def format_check(r: dict[str, Any]) -> str:
    """The report as a few aligned lines for a terminal."""
    heads = r["head_weights"]
    present = sum(heads.values())
    lines = [
        f"model         {r['model']}",
        f"architecture  {r['architecture'] or '-'} ({r['model_type'] or '?'})",
        f"family        {r['family'] or '-'}",
        f"inputs        {r['inputs']}",
    ]
    outputs = r["outputs"]
    if "dimensions" in outputs:
        lines.append(f"outputs       dimensions {', '.join(outputs['dimensions'])} "
                     f"({outputs['mapped']})")
    else:
        mapped = ", ".join(f"{raw} -> {c}" for raw, c in outputs["labels"].items())
        lines.append(f"outputs       labels {mapped}")
    lines.append(f"head weights  {present} of {len(heads)} present"
                 + (f" (missing: {', '.join(k for k, v in heads.items() if not v)})"
                    if present < len(heads) else ""))
    lines.append(f"parameters    {r['parameters']:,}")
    if r["refused"]:
        lines.append(f"refused       {r['refused']}")
        return "\n".join(lines)
    lines += [
        f"precision     {r['precision']}"
        + (f" (measured: {r['precision_measurement']})" if r["precision_measurement"] else ""),
        f"speed         {r['audio_s_per_s']:.1f} audio-seconds per second "
        f"({SPEED_INPUT_S:g} s input, one inference thread set as the service sets it)",
        f"processor     {r['processor']}",
    ]
    return "\n".join(lines)
