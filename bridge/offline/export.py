"""``affect-bridge export-model MODEL --format triton DIR``: an emotion model for a serving engine.

The checkpoint is loaded by the product's own code (:mod:`analyzers.checkpoint` inspects and
refuses, :class:`analyzers.emotion.EmotionModel` loads it with its family's class) and traced
with TorchScript together with what the product does around it: the feature extractor's
normalisation (zero mean, unit variance per row, as :func:`analyzers.prepared.normalize`) before,
:meth:`analyzers.heads.Head.outputs` after (softmax probabilities for a categorical head, the raw
values for a dimensional one). So the served model takes raw 16 kHz audio and gives exactly the
rows the local model gives; that is checked before anything is written (fp32 within 1e-4; bf16
within the precision check's tolerance, 0.05, by the head's own distance).

The repository, ``DIR/<name>/``, serves on both engines:

- ``config.pbtxt`` and ``1/model.pt``: NVIDIA Triton, ``pytorch_libtorch`` backend, dynamic
  batching (Triton batches only requests of one shape: equal-length chunks);
- ``model-settings.json`` and ``affect_bridge_runtime.py`` (a copy of
  :mod:`bridge.offline.mlserver_runtime`): Seldon MLServer, which needs mlserver and torch only;
- ``affect-bridge.json``: what the bridge needs to know (labels in output order, kind, value
  range) and what was exported (checkpoint, family, precision, torch version, the check).

Only checkpoints whose model input is the raw waveform (wav2vec2's feature extractor:
:func:`analyzers.prepared.eligible`) can be exported; Whisper's log-mel features are refused.
The repository is written beside its place and renamed into it: an existing non-empty directory
is never touched, and a failed export leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["INPUT", "OUTPUT", "ExportError", "ExportMismatch", "Exported", "export_model",
           "format_export"]

INPUT, OUTPUT = "waveform", "scores"
# bf16+matmul: bf16 with the feature encoder as matrix products (analyzers/encoder.py), what the
# bridge itself runs on native-bf16 CPUs; for a CPU server of that kind.
PRECISIONS = ("fp32", "bf16", "bf16+matmul")
FORMAT = 1  # affect-bridge.json's format
RUNTIME_MODULE = "affect_bridge_runtime"
META = "affect-bridge.json"
TRITON_MAX_BATCH = 64
TRITON_QUEUE_DELAY_US = 20_000
MLSERVER_MAX_BATCH = 16
MLSERVER_BATCH_TIME_S = 0.02
FP32_TOLERANCE = 1e-4
BF16_TOLERANCE = 0.05  # the precision check's default ([emotion] tolerance)
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class ExportError(Exception):
    """The request cannot be done (a bad name, an occupied target, a checkpoint this export does
    not take); the message is one line saying why."""


class ExportMismatch(RuntimeError):
    """The traced model does not give what the product gives: nothing was written."""


@dataclass(frozen=True, slots=True)
class Exported:
    """What was written, and what the bridge's ``[emotion.remote]`` needs."""

    path: Path  # DIR/<name>
    name: str
    checkpoint: str
    family: str
    kind: str  # categorical | dimensional
    labels: tuple[str, ...]  # the checkpoint's own labels, in output order
    value_range: tuple[float, float]
    precision: str
    difference: float  # the check: max |served - local| (fp32), mean head distance (bf16)


def export_model(model: str, directory: Path, *, name: str = "affect-emotion",
                 precision: str = "fp32", trust_remote_code: bool = False) -> Exported:
    """Write the model repository ``directory/name`` for ``model`` (a local checkpoint directory
    or a hub id in the local cache). Raises :class:`ExportError` for a request that cannot be
    done, :class:`analyzers.loading.ModelUnavailable` (:class:`~analyzers.checkpoint.
    ModelRefused`) for a checkpoint that is not there or that the product refuses, and
    :class:`ExportMismatch` when the traced model disagrees with the local one."""
    if not _NAME.match(name):
        raise ExportError(f"model name {name!r} must be 1-128 letters, digits, '_', '.' or '-', "
                          "not starting with '.' or '-'")
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    target = directory / name
    _check_target(target)
    from analyzers.checkpoint import ModelRefused, inspect_checkpoint

    info = inspect_checkpoint(model, trust_remote_code=trust_remote_code)  # before torch loads
    if info.refusal:
        raise ModelRefused(info.refusal)
    if precision.startswith("bf16"):
        from analyzers.precision import native_bf16

        if not native_bf16():
            raise ExportError("bf16 is not native on this processor (no AMX or AVX512-BF16): "
                              "torch would emulate it, slower than fp32; export fp32")
    traced, loaded, difference = _trace(model, precision, trust_remote_code)
    meta = _metadata(model, loaded, precision, difference)
    _write(directory, target, traced, meta)
    head = loaded.head
    return Exported(target, name, model, loaded.family, head.kind, tuple(meta["labels"]),
                    head.value_range, precision, difference)


def _check_target(target: Path) -> None:
    if target.is_dir() and any(target.iterdir()):
        raise ExportError(f"{target} exists and is not empty: nothing was written (choose "
                          "another DIR or --name, or remove it)")
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} exists and is not a directory: nothing was written")
    if target.parent.exists() and not target.parent.is_dir():
        raise ExportError(f"{target.parent} is not a directory")


def _trace(model: str, precision: str, trust_remote_code: bool) -> tuple[Any, Any, float]:
    """The serving module (traced), the loaded :class:`EmotionModel`, and how far the served
    rows are from the local model's on voice-like probes of several lengths and batch sizes."""
    import torch

    from analyzers.emotion import EmotionConfig, EmotionModel
    from analyzers.precision import probe_signals, to_precision

    loaded = EmotionModel(EmotionConfig(model=model, device="cpu",
                                        precision=precision.partition("+")[0],
                                        trust_remote_code=trust_remote_code))
    fp32 = loaded._from_checkpoint()  # inspects, refuses, loads: the product's own loading
    head = loaded.head
    assert head is not None
    if not loaded.raw_inputs:
        raise ExportError(f"emotion model {model!r} ({loaded.family}) takes "
                          f"{type(loaded._extractor).__name__} features, not the raw waveform: "
                          "export-model takes checkpoints with a wav2vec2-style feature "
                          "extractor")
    # Batches of equal length, as the engines batch: several rows, one row, other lengths.
    two = probe_signals(2.0)
    checks = [np.stack(two), np.stack(two[1:2]), probe_signals(3.3)[2][None],
              np.stack([w[:21_000] for w in two[:3]])]
    with torch.inference_mode():
        expected = [head.outputs(fp32(loaded._inputs(list(x)))["logits"]).double().numpy()
                    for x in checks]
    module = to_precision(fp32, precision) if precision != "fp32" else fp32
    serving = _serving_module(module, head, normalize=loaded.normalizes)
    example = torch.from_numpy(np.stack(probe_signals(1.0)[:2]))
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation, the tracer's notes
        traced = torch.jit.trace(serving, example, check_trace=False)
        got = [traced(torch.from_numpy(x)).double().numpy() for x in checks]
    if precision == "fp32":
        difference = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected, strict=True))
        tolerance = FP32_TOLERANCE
    else:
        difference = float(np.mean([head.distance(g_row, e_row)
                                    for g, e in zip(got, expected, strict=True)
                                    for g_row, e_row in zip(g, e, strict=True)]))
        tolerance = BF16_TOLERANCE
    if not difference <= tolerance:
        raise ExportMismatch(f"the traced model differs from the local one by {difference:.3g} "
                             f"(more than {tolerance:g} in {precision}): nothing was written")
    return traced, loaded, difference


def _serving_module(model: Any, head: Any, *, normalize: bool) -> Any:
    """``model`` wrapped: FP32 [batch, samples] raw audio in, :meth:`Head.outputs` out."""
    import torch

    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())

    class Serving(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, waveform: torch.Tensor) -> torch.Tensor:
            x = waveform.float()
            if normalize:  # Wav2Vec2FeatureExtractor(do_normalize=True), per row
                var, mean = torch.var_mean(x, dim=-1, correction=0, keepdim=True)
                x = (x - mean) / torch.sqrt(var + 1e-7)
            return head.outputs(self.model(x.to(dtype))["logits"])

    return Serving().eval()


def _metadata(model: str, loaded: Any, precision: str, difference: float) -> dict[str, Any]:
    import torch

    from analyzers.emotion import checkpoint_files
    from analyzers.types import SAMPLE_RATE

    head, info = loaded.head, loaded.info
    labels = [str(label) for label in loaded._labels]
    digest = hashlib.sha256()
    for path in checkpoint_files(model):
        with path.open("rb") as f:
            digest.update(path.name.encode() + b"\0" + hashlib.file_digest(f, "sha256").digest())
    return {
        "format": FORMAT,
        "checkpoint": model,
        "checkpoint_sha256": digest.hexdigest(),
        "family": loaded.family,
        "architecture": info.architecture if info is not None else None,
        "kind": head.kind,
        "labels": labels,
        "canonical_labels": list(head.labels),
        "value_range": list(head.value_range),
        "precision": precision,
        "sample_rate": SAMPLE_RATE,
        "normalize": loaded.normalizes,
        "input": {"name": INPUT, "datatype": "FP32", "shape": [-1, -1]},
        "output": {"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(labels)]},
        "torch": torch.__version__,
        "check": {"difference": difference, "measure": "max absolute difference"
                  if precision == "fp32" else "mean head distance"},
    }


def _write(directory: Path, target: Path, traced: Any, meta: dict[str, Any]) -> None:
    """Everything into a fresh directory beside ``target``, renamed into place at the end."""
    import torch

    try:
        directory.mkdir(parents=True, exist_ok=True)
        staging = directory / f".{target.name}.export-{secrets.token_hex(4)}"
        staging.mkdir()
    except OSError as exc:
        raise ExportError(f"cannot write into {directory}: {exc.strerror or exc}") from exc
    try:
        (staging / "1").mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(traced, str(staging / "1" / "model.pt"),
                           _extra_files={META: json.dumps(meta)})
        (staging / "config.pbtxt").write_text(_triton_config(target.name, meta))
        (staging / "model-settings.json").write_text(
            json.dumps(_mlserver_settings(target.name, meta), indent=2) + "\n")
        runtime = resources.files("bridge.offline").joinpath("mlserver_runtime.py")
        (staging / f"{RUNTIME_MODULE}.py").write_text(runtime.read_text(encoding="utf-8"),
                                                       encoding="utf-8")
        (staging / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if target.is_dir():
            target.rmdir()  # empty (checked): fails, and nothing moves, if it filled meanwhile
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _triton_config(name: str, meta: dict[str, Any]) -> str:
    width = len(meta["labels"])
    what = "class probabilities (softmax)" if meta["kind"] == "categorical" else \
        "dimension values"
    return f"""\
# Written by affect-bridge export-model ({meta["family"]}, {meta["precision"]}).
# Input: raw 16 kHz mono audio, [batch, samples], normalised inside the model.
# Output: {what}, [batch, {width}], in the order of affect-bridge.json "labels".
# Triton batches only requests of one shape: chunks of equal length share a forward pass.
name: "{name}"
platform: "pytorch_libtorch"
max_batch_size: {TRITON_MAX_BATCH}
input [
  {{
    name: "{INPUT}"
    data_type: TYPE_FP32
    dims: [ -1 ]
  }}
]
output [
  {{
    name: "{OUTPUT}"
    data_type: TYPE_FP32
    dims: [ {width} ]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {TRITON_QUEUE_DELAY_US}
}}
instance_group [
  {{
    count: 1
    kind: KIND_AUTO
  }}
]
parameters: {{
  key: "INFERENCE_MODE"
  value: {{ string_value: "true" }}
}}
# A traced graph run as it is: the profiling executor would specialise it for every new input
# length (chunks vary), for no steady-state gain on CPU.
parameters: {{
  key: "DISABLE_OPTIMIZED_EXECUTION"
  value: {{ string_value: "true" }}
}}
"""


def _mlserver_settings(name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """MLServer's own adaptive batching stays off (see :mod:`bridge.offline.mlserver_runtime`:
    it merges flat rows of different lengths beyond recovery); the runtime batches equal
    lengths itself, with these knobs."""
    return {
        "name": name,
        "implementation": f"{RUNTIME_MODULE}.EmotionRuntime",
        "parameters": {
            "version": "1",
            "uri": "./1/model.pt",
            "extra": {"threads": 1, "max_batch_size": MLSERVER_MAX_BATCH,
                      "max_batch_time": MLSERVER_BATCH_TIME_S},
        },
        "inputs": [meta["input"]],
        "outputs": [meta["output"]],
    }


def format_export(exported: Exported) -> str:
    """What was written, as TOML comments, then the bridge configuration that uses it."""
    kind = f"{len(exported.labels)} labels" if exported.kind == "categorical" else \
        "dimensions " + ", ".join(exported.labels)
    check = (f"max difference {exported.difference:.2g}" if exported.precision == "fp32"
             else f"mean distance {exported.difference:.3f}")
    lines = [
        f"# exported {exported.checkpoint} ({exported.family}, {kind}, {exported.precision}; "
        f"served = local: {check}) to {exported.path}",
        f"# Triton:   tritonserver --model-repository {exported.path.parent}",
        f"# MLServer: mlserver start {exported.path.parent}",
        "# The bridge configuration (set url to your server's):",
        "[emotion]",
        'backend = "remote"',
        "",
        "[emotion.remote]",
        'url = "http://127.0.0.1:8080"',
        f"model = {json.dumps(exported.name)}",
        "labels = [" + ", ".join(json.dumps(label) for label in exported.labels) + "]",
        f"kind = {json.dumps(exported.kind)}",
        f"value_range = [{float(exported.value_range[0])!r}, {float(exported.value_range[1])!r}]",
    ]
    return "\n".join(lines)
