"""What an emotion checkpoint is, read from its files before any model code runs.

A checkpoint is loaded by what it is, never by what transformers guesses: transformers'
``AutoModelForAudioClassification`` builds whatever head its class expects and fills the weights
it cannot find at random, with only a logged warning (audEERING's dimensional model, a bare
encoder and remote-code checkpoints all loaded that way and scored every window). So
:func:`inspect_checkpoint` reads ``config.json`` (``architectures``, ``auto_map``, labels) and the
weight names (safetensors headers, or a memory-mapped ``.bin``) and names a family:

- ``classifier``: transformers' audio sequence classifiers (wav2vec2, HuBERT, WavLM,
  data2vec-audio; with or without the weighted layer sum), inputs ``input_values``;
- ``whisper``: Whisper-encoder classifiers (``WhisperForAudioClassification``), inputs
  ``input_features`` (log-mel, padded to 30 s as Whisper's encoder requires);
- ``dimensional``: a wav2vec2 regression head of the audEERING form (arousal, dominance,
  valence; :mod:`analyzers.dimensional`);
- ``remote-code``: a checkpoint with its own model code (``auto_map``), only when the user opts
  in (``trust_remote_code``: that runs the checkpoint's Python code).

Anything else is refused with a reason that names the architecture found and the weights that
would be random: a bare encoder, a speech recogniser, a head whose weights are missing, an
unknown architecture, emotion2vec (FunASR) checkpoints. Loading checks once more
(:func:`missing_after_load`): a weight transformers reports as newly initialised refuses it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from analyzers.heads import CANONICAL, canonical_label
from analyzers.loading import ModelUnavailable

__all__ = ["BARE_ENCODERS", "DIMENSIONAL_ARCHITECTURE", "DIMENSIONS", "SEQUENCE_CLASSIFIERS",
           "CheckpointInfo", "ModelRefused",
           "fetch_checkpoint",
           "inspect_checkpoint", "local_root", "missing_after_load", "read_json", "weight_files",
           "weight_shapes"]

#: transformers' audio sequence classifiers (one head: projector -> mean pool -> classifier).
SEQUENCE_CLASSIFIERS = {
    "Wav2Vec2ForSequenceClassification": "wav2vec2",
    "HubertForSequenceClassification": "hubert",
    "WavLMForSequenceClassification": "wavlm",
    "Data2VecAudioForSequenceClassification": "data2vec-audio",
}
WHISPER_CLASSIFIER = "WhisperForAudioClassification"
#: The class name audEERING's dimensional checkpoints carry (their own code, not transformers').
DIMENSIONAL_ARCHITECTURE = "Wav2Vec2ForSpeechClassification"
DIMENSIONS = ("arousal", "dominance", "valence")
#: Architectures without an emotion head, and what they are.
BARE_ENCODERS = {
    **{f"{m}Model": "a bare encoder" for m in ("Wav2Vec2", "Hubert", "WavLM", "Data2VecAudio",
                                               "Whisper", "Wav2Vec2Conformer", "UniSpeechSat")},
    "Wav2Vec2ForPreTraining": "a pre-training checkpoint",
    **{f"{m}ForCTC": "a speech recogniser (CTC head)" for m in ("Wav2Vec2", "Hubert", "WavLM",
                                                               "Data2VecAudio")},
    "WhisperForConditionalGeneration": "a speech recogniser (Whisper decoder)",
}
_HEADS = {
    "classifier": ("projector.weight", "projector.bias", "classifier.weight", "classifier.bias"),
    "whisper": ("projector.weight", "projector.bias", "classifier.weight", "classifier.bias"),
    "dimensional": ("classifier.dense.weight", "classifier.dense.bias",
                    "classifier.out_proj.weight", "classifier.out_proj.bias"),
}


class ModelRefused(ModelUnavailable):
    """The checkpoint is not one this product can run faithfully; the message says why."""


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """What :func:`inspect_checkpoint` found. ``family`` is None when ``refusal`` says why not."""

    source: str  # the hub id or path the user gave
    root: Path  # the local directory holding it
    architecture: str | None
    model_type: str | None
    family: str | None
    labels: tuple[str, ...] = ()  # config.id2label in index order
    head_weights: dict[str, bool] = field(default_factory=dict)  # expected name -> present
    parameters: int = 0
    sampling_rate: int | None = None
    extractor_type: str | None = None  # preprocessor_config.json's feature_extractor_type
    refusal: str | None = None

    @property
    def inputs(self) -> str:
        return "input_features" if self.family == "whisper" else "input_values"

    @property
    def dimensional(self) -> bool:
        return self.family == "dimensional"

    def describe(self) -> str:
        """One line: family and backbone, e.g. "dimensional (wav2vec2; arousal, dominance,
        valence)"."""
        what = self.family or "refused"
        outputs = ", ".join(d for d in DIMENSIONS if d in self._lower_labels()) \
            if self.dimensional else f"{len(self.labels)} labels"
        return f"{what} ({self.model_type or '?'}; {outputs})"

    def _lower_labels(self) -> set[str]:
        return {label.strip().lower() for label in self.labels}


def local_root(model: str) -> Path | None:
    """The local directory of ``model``: the path itself, or the local HuggingFace cache's
    snapshot of a hub id; None when neither holds it (nothing is fetched)."""
    root = Path(model)
    if root.is_dir():
        return root
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # not cached, or not a valid hub id
        return None


def weight_shapes(root: Path) -> dict[str, tuple[int, ...]]:
    """Every weight's name and shape, read from safetensors headers (or a memory-mapped
    ``.bin``): no tensor is loaded."""
    files = weight_files(root)
    if not files:
        raise ModelRefused(f"{root} holds no weights (model.safetensors or pytorch_model.bin)")
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        else:
            import torch

            state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
            shapes.update({k: tuple(v.shape) for k, v in state.items()})
    return shapes


def weight_files(root: Path) -> list[Path]:
    """The weight files transformers would read: safetensors first, else ``.bin``; sharded
    checkpoints through their index."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (root / single).is_file():
            return [root / single]
        if (root / index).is_file():
            shards = json.loads((root / index).read_text())["weight_map"].values()
            return [root / name for name in sorted(set(shards))]
    return []


def inspect_checkpoint(model: str, *, trust_remote_code: bool = False) -> CheckpointInfo:
    """Read what ``model`` (a local directory, or a hub id in the local cache) is. Raises
    :class:`ModelUnavailable` when it is not found locally or is unreadable; a checkpoint that
    is found but refused comes back with ``refusal`` set (see :meth:`CheckpointInfo`)."""
    root = local_root(model)
    if root is None:
        raise ModelUnavailable(f"cannot load emotion model {model!r}: it is not in the local model "
                               "cache (weights are only read locally: run 'affect-bridge "
                               "download-models' first)")
    if not (root / "config.json").is_file():
        if "emotion2vec" in model.lower() or (root / "config.yaml").is_file():
            reason = ("emotion2vec checkpoints (FunASR) are not supported: use a transformers "
                      "checkpoint (see the README's emotion section)")
        else:
            reason = "it has no config.json (not a transformers checkpoint)"
        return CheckpointInfo(model, root, None, None, None, refusal=_refused(model, reason))
    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
        extractor = read_json(root / "preprocessor_config.json")
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"cannot load emotion model {model!r}: config.json is unreadable "
                               f"({exc})") from exc
    shapes = weight_shapes(root)
    info = _classify(model, root, config, shapes, trust_remote_code)
    if info.family is not None and not extractor:
        info = replace(info, family=None, refusal=_refused(
            model, "it has no preprocessor_config.json, so its feature extractor (sampling "
            "rate, normalisation) is unknown"))
    rate, kind = extractor.get("sampling_rate"), extractor.get("feature_extractor_type")
    return replace(info, sampling_rate=rate if isinstance(rate, int) else None,
                   extractor_type=kind if isinstance(kind, str) else None,
                   parameters=sum(_numel(s) for s in shapes.values()))


def _classify(model: str, root: Path, config: dict[str, Any], shapes: dict[str, Any],
              trust_remote_code: bool) -> CheckpointInfo:
    architectures = config.get("architectures") or []
    arch = str(architectures[0]) if architectures else None
    model_type = config.get("model_type")
    id2label = config.get("id2label") or {}
    labels = tuple(str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k)))
    if not labels:  # transformers leaves default names (LABEL_0, ...) out of config.json
        labels = tuple(f"LABEL_{i}" for i in range(int(config.get("num_labels") or 2)))
    base = CheckpointInfo(model, root, arch, model_type, None, labels)

    def refuse(reason: str, heads: dict[str, bool] | None = None) -> CheckpointInfo:
        return replace(base, head_weights=heads or {}, refusal=_refused(model, reason))

    if config.get("auto_map"):
        target = next(iter(config["auto_map"].values()))
        if not trust_remote_code:
            return refuse(f"it needs its own model code (auto_map -> {target}), which is not "
                          "run unless you opt in: [emotion] trust_remote_code = true runs the "
                          "checkpoint's Python code")
        if all(canonical_label(x) == "other" for x in labels):
            return refuse(f"none of its labels {list(labels)[:8]} is an emotion this product "
                          "knows")
        return replace(base, family="remote-code")
    family = _family(arch, shapes)
    if family is None:
        what = BARE_ENCODERS.get(arch or "")
        if what is not None:
            return refuse(f"architecture {arch} is {what}, with no emotion head: every output "
                          "would come from randomly initialised weights")
        return refuse(f"architecture {arch or '(none named in config.json)'} is not a supported "
                      "emotion model (supported: " + ", ".join(
                          [*SEQUENCE_CLASSIFIERS, WHISPER_CLASSIFIER,
                           f"{DIMENSIONAL_ARCHITECTURE} (arousal/dominance/valence)"]) + ")")
    heads = {name: name in shapes for name in _HEADS[family]}
    if family in ("classifier", "whisper") and config.get("use_weighted_layer_sum"):
        heads["layer_weights"] = "layer_weights" in shapes
    missing = [name for name, present in heads.items() if not present]
    if missing:
        return refuse(f"architecture {arch} would have its head weights {', '.join(missing)} "
                      "initialised at random (the checkpoint does not hold them)", heads)
    found = replace(base, family=family, head_weights=heads)
    if family != "dimensional" and all(canonical_label(x) == "other" for x in labels):
        return refuse(f"none of its labels {list(labels)[:8]} is an emotion this product knows "
                      f"({', '.join(CANONICAL[:-1])}, and common abbreviations of them)", heads)
    if family == "dimensional":
        if model_type != "wav2vec2":
            return refuse(f"a regression head of the audEERING form on {model_type}: only "
                          "wav2vec2 backbones are supported for it", heads)
        if not {"arousal", "valence"} <= found._lower_labels() or \
                not found._lower_labels() <= set(DIMENSIONS):
            return refuse(f"architecture {arch} with labels {list(labels)}: a head of this form "
                          "is supported for the dimensions arousal, valence (and dominance) only",
                          heads)
    return found


def _family(arch: str | None, shapes: dict[str, Any]) -> str | None:
    if arch in SEQUENCE_CLASSIFIERS:
        return "classifier"
    if arch == WHISPER_CLASSIFIER:
        return "whisper"
    if arch == DIMENSIONAL_ARCHITECTURE:
        return "dimensional"
    if arch is None:  # older checkpoints name no architecture: go by the head's weights
        if all(name in shapes for name in _HEADS["dimensional"]):
            return "dimensional"
    return None


def missing_after_load(loading_info: dict[str, Any]) -> list[str]:
    """The weights transformers reported as newly initialised (``output_loading_info``)."""
    return sorted(str(k) for k in loading_info.get("missing_keys") or ())


def _refused(model: str, reason: str) -> str:
    return f"emotion model {model!r} refused: {reason}"


def read_json(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON object (config.json, preprocessor_config.json); {} when absent."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def fetch_checkpoint(model: str, *, trust_remote_code: bool = False) -> Path:
    """Download what ``model`` (a hub id) needs into the local cache: its config, its feature
    extractor's config and one format of weights (safetensors where the hub has them), plus its
    Python code only when ``trust_remote_code``. A local directory is returned as it is."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import list_repo_files, snapshot_download

    files = list_repo_files(model)
    weights = [f for f in files if f.startswith("model") and f.endswith(
        (".safetensors", ".safetensors.index.json"))] or \
        [f for f in files if f.startswith("pytorch_model") and f.endswith((".bin", ".bin.index.json"))]
    wanted = ["config.json", "preprocessor_config.json", *weights]
    if trust_remote_code:
        wanted += [f for f in files if f.endswith(".py")]
    return Path(snapshot_download(model, allow_patterns=wanted))
