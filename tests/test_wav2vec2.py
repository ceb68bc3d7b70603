"""analyzers/wav2vec2.py: the supported checkpoints load without transformers and give exactly
transformers' outputs; everything else goes to transformers."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from analyzers.checkpoint import DIMENSIONAL_ARCHITECTURE, inspect_checkpoint, weight_files
from analyzers.emotion import EmotionConfig, EmotionModel, fold_weight_norm
from analyzers.precision import candidates, to_precision
from analyzers.wav2vec2 import load_plain
from tests.conftest import (
    RAVDESS,
    ROOT,
    TINY_ENCODER,
    _labels,
    _save_extractor,
    build_tiny_classifier,
    build_tiny_dimensional,
    harmonic,
)

pytestmark = pytest.mark.usefixtures("cache_dir")


def _build(path: Path, config_name: str, model_name: str, **options: Any) -> Path:
    import transformers

    cfg = getattr(transformers, config_name)(**{**TINY_ENCODER, "classifier_proj_size": 16,
                                                **_labels(RAVDESS), **options})
    torch.manual_seed(len(options))
    model = getattr(transformers, model_name)(cfg)
    if getattr(model, "layer_weights", None) is not None:  # not uniform: the order matters
        with torch.no_grad():
            model.layer_weights.copy_(torch.randn(model.layer_weights.shape) * 2)
    model.save_pretrained(path)
    _save_extractor(path)
    return path


SHAPES = {  # name -> (config class, model class, options): every branch of the module
    "wav2vec2-base": ("Wav2Vec2Config", "Wav2Vec2ForSequenceClassification", {}),
    "wav2vec2-large": ("Wav2Vec2Config", "Wav2Vec2ForSequenceClassification",
                       dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                            num_conv_pos_embeddings=15, mask_time_prob=0.0)),
    "wav2vec2-relu": ("Wav2Vec2Config", "Wav2Vec2ForSequenceClassification",
                      dict(hidden_act="relu", feat_extract_activation="relu",
                           layer_norm_eps=1e-6)),
    "hubert": ("HubertConfig", "HubertForSequenceClassification", {}),
    "hubert-large": ("HubertConfig", "HubertForSequenceClassification",
                     dict(feat_extract_norm="layer", do_stable_layer_norm=True,
                          feat_proj_layer_norm=False)),
    # SUPERB's emotion checkpoints (the default superb/wav2vec2-base-superb-er among them)
    "wav2vec2-weighted": ("Wav2Vec2Config", "Wav2Vec2ForSequenceClassification",
                          dict(use_weighted_layer_sum=True)),
    "hubert-large-weighted": ("HubertConfig", "HubertForSequenceClassification",
                              dict(feat_extract_norm="layer", do_stable_layer_norm=True,
                                   use_weighted_layer_sum=True)),
}


def _plain(path: Path) -> tuple[Any, bool] | None:
    info = inspect_checkpoint(str(path))
    arch = DIMENSIONAL_ARCHITECTURE if info.family == "dimensional" else info.architecture
    return load_plain(path, arch, len(info.labels), weight_files(path))


def _theirs(path: Path) -> Any:
    import transformers

    from analyzers.dimensional import Wav2Vec2ForSpeechClassification

    arch = json.loads((path / "config.json").read_text())["architectures"][0]
    cls = Wav2Vec2ForSpeechClassification if arch == DIMENSIONAL_ARCHITECTURE \
        else getattr(transformers, arch)
    model = cls.from_pretrained(path).eval()
    fold_weight_norm(model)
    return model


def _signals() -> torch.Tensor:
    rng = np.random.default_rng(3)
    speech = harmonic(170, 1.3, jitter=0.02)
    noise = rng.standard_normal(len(speech)).astype(np.float32) * 0.1
    return torch.from_numpy(np.stack([speech, noise]))


def _same(path: Path, variant: str = "fp32") -> None:
    loaded = _plain(path)
    assert loaded is not None, "loaded through transformers"
    ours = to_precision(loaded[0], variant)
    theirs = to_precision(_theirs(path), variant)
    dtype = next(p.dtype for p in ours.parameters() if p.is_floating_point())
    with torch.inference_mode():
        a = ours(_signals().to(dtype))["logits"]
        b = theirs(_signals().to(dtype)).logits
    assert a.shape == b.shape == (2, 3 if "dimensional" in path.name else len(RAVDESS))
    assert torch.equal(a, b), (a - b).abs().max()


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_outputs_equal_transformers(shape: str, tmp_path: Path) -> None:
    config_name, model_name, options = SHAPES[shape]
    _same(_build(tmp_path / shape, config_name, model_name, **options))


def test_the_dimensional_model_equals_its_transformers_class(tmp_path: Path) -> None:
    _same(build_tiny_dimensional(tmp_path / "dimensional"))


def test_a_large_dimensional_model_with_an_attention_mask_extractor(tmp_path: Path) -> None:
    """audEERING's model is a large wav2vec2 (layer norms, pre-norm layers) whose extractor
    returns an attention mask: unpadded inputs are the same, so it loads here too."""
    path = build_tiny_dimensional(tmp_path / "dimensional", size={
        **TINY_ENCODER, "feat_extract_norm": "layer", "do_stable_layer_norm": True,
        "conv_bias": True})
    _edit(path, "preprocessor_config.json", lambda c: c.update(return_attention_mask=True))
    _same(path)


@pytest.mark.parametrize("variant", candidates())
def test_every_precision_equals_transformers_in_the_same_precision(variant: str,
                                                                   tmp_path: Path) -> None:
    """The conversions (bf16, int8, the matmul encoder) act on the same modules the same way."""
    _same(build_tiny_classifier(tmp_path / "w2v"), variant)


def test_other_weight_layouts_load_alike(tmp_path: Path) -> None:
    """Older checkpoints name the weight norm's pair weight_g/weight_v; large ones come in
    shards; some only as pytorch_model.bin."""
    from safetensors.torch import load_file, save_file

    source = build_tiny_classifier(tmp_path / "source")
    reference = _plain(source)
    assert reference is not None
    state = load_file(str(source / "model.safetensors"))
    legacy = {k.replace("parametrizations.weight.original0", "weight_g")
              .replace("parametrizations.weight.original1", "weight_v"): v
              for k, v in state.items()}
    assert legacy.keys() != state.keys()
    names = sorted(state)
    layouts: dict[str, Any] = {
        "legacy": lambda d: save_file(legacy, str(d / "model.safetensors")),
        "bin": lambda d: torch.save(state, d / "pytorch_model.bin"),
        "sharded": lambda d: _shard(state, names, d),
    }
    for name, write in layouts.items():
        d = tmp_path / name
        d.mkdir()
        for f in ("config.json", "preprocessor_config.json"):
            (d / f).write_bytes((source / f).read_bytes())
        write(d)
        loaded = _plain(d)
        assert loaded is not None, name
        with torch.inference_mode():
            assert torch.equal(loaded[0](_signals())["logits"],
                               reference[0](_signals())["logits"]), name


def _shard(state: dict[str, torch.Tensor], names: list[str], d: Path) -> None:
    from safetensors.torch import save_file

    half = len(names) // 2
    parts = {"model-00001-of-00002.safetensors": names[:half],
             "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in parts.items():
        save_file({k: state[k] for k in keys}, str(d / file))
    index = {"metadata": {}, "weight_map": {k: f for f, keys in parts.items() for k in keys}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def _edit(path: Path, name: str, change: Any) -> None:
    data = json.loads((path / name).read_text())
    change(data)
    (path / name).write_text(json.dumps(data))


def _falls_back(path: Path, caplog: pytest.LogCaptureFixture, reason: str) -> None:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="analyzers.wav2vec2"):
        assert _plain(path) is None, path.name
    assert reason in caplog.text, (path.name, caplog.text)


def test_what_it_does_not_reproduce_goes_to_transformers(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture,
                                                         ) -> None:
    """Each for its own reason (the log line says which), not only because a weight name
    differs."""
    from safetensors.torch import load_file, save_file

    _falls_back(build_tiny_classifier(tmp_path / "wavlm", "wavlm"), caplog, "architecture")
    _falls_back(build_tiny_classifier(tmp_path / "d2v", "data2vec-audio"), caplog,
                "architecture")
    _falls_back(_build(tmp_path / "bn", "HubertConfig", "HubertForSequenceClassification",
                       conv_pos_batch_norm=True), caplog, "batch-normed")
    _falls_back(_build(tmp_path / "act", "Wav2Vec2Config", "Wav2Vec2ForSequenceClassification",
                       hidden_act="gelu_new"), caplog, "hidden_act")
    for key, value, reason in (("torch_dtype", "float16", "torch_dtype"),
                               ("attn_implementation", "eager", "attn_implementation"),
                               ("add_adapter", True, "adapter"),
                               ("num_conv_pos_embedding_groups", 5, "ValueError"),
                               ("num_attention_heads", 0, "ZeroDivisionError"),
                               ("hidden_size", None, "TypeError")):
        path = build_tiny_classifier(tmp_path / f"{key}-{value}")
        _edit(path, "config.json", lambda c, k=key, v=value: c.update({k: v}))
        _falls_back(path, caplog, reason)
    cases: dict[str, Any] = {
        "rate": lambda d: _edit(d, "preprocessor_config.json",
                                lambda c: c.update(sampling_rate=8000)),
        "key": lambda d: _edit(d, "config.json", lambda c: c.pop("conv_bias")),
        "type": lambda d: _edit(d, "config.json", lambda c: c.update(model_type="wavlm")),
        "fp16": lambda d: save_file({k: v.half() for k, v in
                                     load_file(str(d / "model.safetensors")).items()},
                                    str(d / "model.safetensors")),
        "extra": lambda d: save_file({**load_file(str(d / "model.safetensors")),
                                      "wav2vec2.adapter.proj.weight": torch.zeros(2, 2)},
                                     str(d / "model.safetensors")),
        "missing": lambda d: save_file({k: v for k, v in
                                        load_file(str(d / "model.safetensors")).items()
                                        if not k.startswith("projector.")},
                                       str(d / "model.safetensors")),
        "shape": lambda d: save_file({**load_file(str(d / "model.safetensors")),
                                      "classifier.weight": torch.zeros(3, 16)},
                                     str(d / "model.safetensors")),
    }
    for name, change in cases.items():
        path = build_tiny_classifier(tmp_path / name)
        change(path)
        info = inspect_checkpoint(str(path))
        assert load_plain(path, info.architecture, len(RAVDESS), weight_files(path)) is None, \
            name


def test_emotion_model_scores_equal_the_transformers_load(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          ) -> None:
    path = build_tiny_classifier(tmp_path / "w2v")
    config = EmotionConfig(model=str(path), precision="fp32", prepare="at_load")
    waves = [harmonic(150, 2.0), harmonic(220, 2.0, jitter=0.03), harmonic(190, 1.4)]
    plain = EmotionModel(config)
    plain._model = plain._from_checkpoint()
    plain._finish("test")
    theirs = EmotionModel(config)
    monkeypatch.setattr(theirs, "_plain", lambda info: None)  # this instance only
    theirs._model = theirs._from_checkpoint()
    theirs._finish("test")
    assert type(plain._model).__name__ == "PlainClassifier" and plain._extractor is None
    assert type(theirs._model).__name__ == "Wav2Vec2ForSequenceClassification"
    assert theirs._extractor is not None
    # Inputs made by normalize() for one, by transformers' extractor for the other.
    assert plain.predict(waves) == theirs.predict(waves)
    assert (plain.raw_inputs, plain.normalizes) == (theirs.raw_inputs, theirs.normalizes) \
        == (True, True)


def test_a_first_start_does_not_import_transformers(tmp_path: Path, cache_dir: Path) -> None:
    """The point of the module: a checkpoint new to the machine runs at once without
    transformers' import (prepare = "background"), then the job prepares it."""
    path = build_tiny_classifier(tmp_path / "w2v")
    code = (
        "import sys\n"
        "from analyzers.emotion import EmotionConfig, EmotionModel\n"
        "from tests.conftest import harmonic\n"
        f"m = EmotionModel(EmotionConfig(model={str(path)!r}, device='cpu'))\n"
        "m.load(start_job=False)\n"
        "assert m.info is not None and type(m._model).__name__ == 'PlainClassifier'\n"
        "print(len(m.predict([harmonic(160, 2.0), harmonic(200, 2.0)])))\n"
        "print('transformers' in sys.modules, 'torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300,
                          env={"AFFECT_BRIDGE_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1",
                               "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "False", "False"]


def test_a_config_naming_half_precision_still_loads_in_fp32(tmp_path: Path) -> None:
    """transformers builds the model in the dtype its config names (float16 here, over fp32
    weights); this module leaves such a checkpoint to transformers, and the product still loads
    it in fp32, the precision everything else starts from."""
    path = build_tiny_classifier(tmp_path / "half")
    _edit(path, "config.json", lambda c: c.update(dtype="float16", torch_dtype="float16"))
    assert _plain(path) is None
    model = EmotionModel(EmotionConfig(model=str(path), precision="fp32", prepare="at_load"))
    loaded = model._from_checkpoint()
    assert model._extractor is not None  # through transformers
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
