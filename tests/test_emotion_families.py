"""Every emotion model family the product loads, against the family's reference forward pass, and
every kind of checkpoint it refuses (tiny random checkpoints of each family's real config shape).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analyzers.checkpoint import ModelRefused, inspect_checkpoint
from analyzers.emotion import EmotionConfig, EmotionModel
from analyzers.heads import canonical_label
from analyzers.precision import Decision, DecisionCache, candidates
from tests.conftest import (
    SR,
    TINY_ENCODER,
    build_tiny_classifier,
    build_tiny_dimensional,
    build_tiny_whisper_classifier,
    harmonic,
)

FAMILIES: dict[str, Callable[[Path], Path]] = {
    "wav2vec2": lambda p: build_tiny_classifier(p, "wav2vec2"),
    "wav2vec2-weighted-sum": lambda p: build_tiny_classifier(p, "wav2vec2", weighted=True),
    "hubert": lambda p: build_tiny_classifier(p, "hubert"),
    "wavlm": lambda p: build_tiny_classifier(p, "wavlm", weighted=True),
    "data2vec-audio": lambda p: build_tiny_classifier(p, "data2vec-audio"),
    "whisper": build_tiny_whisper_classifier,
    "dimensional": build_tiny_dimensional,
}
TOLERANCE = 0.05  # EmotionConfig.tolerance: the most a non-fp32 precision may differ


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: build(root / name) for name, build in FAMILIES.items()}


# --- the reference forward passes ------------------------------------------------------------

def _model_card_dimensional(path: Path) -> Any:
    """The audEERING model card's code ("Usage" of audeering/wav2vec2-large-robust-12-ft-emotion-
    msp-dim), written out: the test's reference for the dimensional family."""
    import torch
    from torch import nn
    from transformers import Wav2Vec2Model, Wav2Vec2PreTrainedModel

    class RegressionHead(nn.Module):
        def __init__(self, config: Any) -> None:
            super().__init__()
            self.dense = nn.Linear(config.hidden_size, config.hidden_size)
            self.dropout = nn.Dropout(config.final_dropout)
            self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

        def forward(self, features: Any, **kwargs: Any) -> Any:
            x = features
            x = self.dropout(x)
            x = self.dense(x)
            x = torch.tanh(x)
            x = self.dropout(x)
            x = self.out_proj(x)
            return x

    class EmotionModel(Wav2Vec2PreTrainedModel):
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.config = config
            self.wav2vec2 = Wav2Vec2Model(config)
            self.classifier = RegressionHead(config)
            self.post_init()  # the card's init_weights(), as transformers 5 spells it

        def forward(self, input_values: Any) -> Any:
            outputs = self.wav2vec2(input_values)
            hidden_states = outputs[0]
            hidden_states = torch.mean(hidden_states, dim=1)
            logits = self.classifier(hidden_states)
            return hidden_states, logits

    return EmotionModel.from_pretrained(path).eval()


def reference(name: str, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """One waveform -> the family's reference output row: transformers' own class's softmax
    (labels in config order), or the model card's regression outputs."""
    import torch
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    extractor = AutoFeatureExtractor.from_pretrained(path)
    if name == "dimensional":
        model = _model_card_dimensional(path)

        def run(wave: np.ndarray) -> np.ndarray:
            y = extractor(wave, sampling_rate=SR)["input_values"][0].reshape(1, -1)
            with torch.no_grad():
                return model(torch.from_numpy(y))[1][0].double().numpy()
        return run
    model = AutoModelForAudioClassification.from_pretrained(path).eval()
    key = extractor.model_input_names[0]

    def classify(wave: np.ndarray) -> np.ndarray:
        inputs = extractor(wave, sampling_rate=SR, return_tensors="pt")
        with torch.no_grad():
            return torch.softmax(model(inputs[key]).logits, -1)[0].double().numpy()
    return classify


def product_row(name: str, path: Path, scores: Any) -> np.ndarray:
    """The product's estimate in the reference's order and scale."""
    if name == "dimensional":
        # the model's 0..1 outputs were mapped onto -1..1: back again
        return (np.array([scores.arousal, scores.dominance, scores.valence]) + 1) / 2
    labels = json.loads((path / "config.json").read_text())["id2label"]
    return np.array([scores.probabilities[canonical_label(labels[str(i)])]
                     for i in range(len(labels))])


def _distance(name: str, a: np.ndarray, b: np.ndarray) -> float:
    # the product's own measures: TV of probabilities; mean |difference| on the -1..1 scale
    return float(np.mean(np.abs(a - b)) * 2) if name == "dimensional" \
        else float(0.5 * np.abs(a - b).sum())


WAVES = [harmonic(140, 1.0), harmonic(230, 2.3, seed=5), harmonic(180, 2.3, seed=6, jitter=0.02),
         harmonic(120, 4.0, seed=7, shimmer=0.1)]


def _load(path: Path, precision: str = "fp32") -> EmotionModel:
    model = EmotionModel(EmotionConfig(model=str(path), device="cpu", precision=precision,
                                       prepare="at_load"))
    model.load()
    return model


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_fp32_equals_the_reference_alone_batched_and_at_several_lengths(
        name: str, checkpoints: dict[str, Path], cache_dir: Path) -> None:
    path = checkpoints[name]
    ref = reference(name, path)
    model = _load(path)
    expected = [ref(w) for w in WAVES]
    alone = [product_row(name, path, model.predict([w])[0]) for w in WAVES]
    together = [product_row(name, path, s) for s in model.predict(WAVES)]  # two share a pass
    for e, a, t in zip(expected, alone, together, strict=True):
        np.testing.assert_allclose(a, e, atol=1e-4)
        np.testing.assert_allclose(t, e, atol=1e-4)
    # and loaded again, prepared (TorchScript, no transformers) where the family allows it
    again = _load(path)
    assert (again.info is None) == (name != "whisper")
    for e, w in zip(expected, WAVES, strict=True):
        np.testing.assert_allclose(product_row(name, path, again.predict([w])[0]), e, atol=1e-4)


def _variants(name: str) -> list[str]:
    """The precisions the product may choose on this processor (matrix-product encoder only
    where the family has a wav2vec2-style one; int8 not for WavLM, whose attention reads its
    projections' weights: measuring drops it, and forcing it is refused, tested below)."""
    found = [v for v in candidates() if v != "fp32"]
    return [v for v in found if not (name == "whisper" and "+" in v)
            and not (name == "wavlm" and v.startswith("int8"))]


def test_a_precision_a_model_cannot_run_in_is_refused_at_load(
        checkpoints: dict[str, Path], cache_dir: Path) -> None:
    from analyzers.loading import ModelUnavailable

    with pytest.raises(ModelUnavailable, match="does not run in int8"):
        _load(checkpoints["wavlm"], "int8")
    measured = _load(checkpoints["wavlm"], "auto")  # auto measures it and leaves int8 out
    assert measured.precision != "int8" and "int8" not in measured.decision.rates


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_precision_it_may_choose_agrees_with_the_reference(
        name: str, checkpoints: dict[str, Path], cache_dir: Path) -> None:
    path = checkpoints[name]
    ref = reference(name, path)
    expected = [ref(w) for w in WAVES]
    for variant in _variants(name):
        probe = EmotionModel(EmotionConfig(model=str(path)))
        key = probe._key()
        assert key is not None
        DecisionCache().put(key, Decision(variant))  # as if measured here: auto takes it
        for attempt in ("from the checkpoint", "prepared"):
            model = _load(path, "auto")
            assert model.precision == variant, attempt
            for e, w in zip(expected, WAVES, strict=True):
                got = product_row(name, path, model.predict([w])[0])
                assert _distance(name, got, e) <= TOLERANCE, (variant, attempt)
            batched = [product_row(name, path, s) for s in model.predict(WAVES)]
            for e, b in zip(expected, batched, strict=True):
                assert _distance(name, b, e) <= TOLERANCE, (variant, attempt, "batched")


def test_auto_measures_a_dimensional_model_by_its_own_distance(
        checkpoints: dict[str, Path], cache_dir: Path) -> None:
    model = _load(checkpoints["dimensional"], "auto")
    assert model.decision is not None and model.precision in candidates()
    assert set(model.decision.agreement) == set(candidates()) - {"fp32"}
    [scores] = model.predict([WAVES[1]])
    assert scores.source == "model" and scores.probabilities == {}
    assert all(-1 <= v <= 1 for v in (scores.arousal, scores.valence, scores.dominance))


# --- what is refused ------------------------------------------------------------------------

def _copy(src: Path, dst: Path, **config: Any) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _refusal(path: Path, **options: Any) -> str:
    with pytest.raises(ModelRefused) as info:
        EmotionModel(EmotionConfig(model=str(path), **options)).load()
    text = str(info.value)
    assert "\n" not in text and str(path) in text
    return text


def test_a_bare_encoder_is_refused(tmp_path: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    Wav2Vec2Model(Wav2Vec2Config(**TINY_ENCODER)).save_pretrained(tmp_path / "bare")
    text = _refusal(tmp_path / "bare")
    assert "Wav2Vec2Model" in text and "bare encoder" in text and "random" in text


def test_a_recogniser_is_refused(tmp_path: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    Wav2Vec2ForCTC(Wav2Vec2Config(**TINY_ENCODER, vocab_size=12)).save_pretrained(tmp_path / "ctc")
    assert "speech recogniser" in _refusal(tmp_path / "ctc")


def test_a_head_that_would_be_initialised_at_random_is_refused(
        checkpoints: dict[str, Path], tmp_path: Path) -> None:
    # audEERING's weights under the class transformers would pick: its head has other names
    path = _copy(checkpoints["dimensional"], tmp_path / "m",
                 architectures=["Wav2Vec2ForSequenceClassification"])
    text = _refusal(path)
    assert "Wav2Vec2ForSequenceClassification" in text
    assert "projector.weight" in text and "classifier.weight" in text and "random" in text


def test_a_weight_missing_from_the_file_is_refused_at_load(
        checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = tmp_path / "m"
    shutil.copytree(checkpoints["hubert"], path)
    weights = load_file(path / "model.safetensors")
    name = next(k for k in weights if k.endswith("layers.0.attention.k_proj.weight"))
    del weights[name]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    assert inspect_checkpoint(str(path)).refusal is None  # the head is all there
    text = _refusal(path)  # but transformers would fill that weight at random
    assert name in text and "initialised at random" in text


REMOTE_CODE = '''
from transformers import Wav2Vec2ForSequenceClassification


class OwnClassifier(Wav2Vec2ForSequenceClassification):
    """A checkpoint's own class (as the WavLM SER-Odyssey baselines bring theirs)."""
'''


def test_remote_code_is_refused_unless_the_user_opts_in(
        checkpoints: dict[str, Path], tmp_path: Path, cache_dir: Path) -> None:
    path = _copy(checkpoints["wav2vec2"], tmp_path / "remote", architectures=["OwnClassifier"],
                 auto_map={"AutoModelForAudioClassification": "modeling_own.OwnClassifier"})
    (path / "modeling_own.py").write_text(REMOTE_CODE)
    text = _refusal(path)
    assert "modeling_own.OwnClassifier" in text and "trust_remote_code" in text
    model = EmotionModel(EmotionConfig(model=str(path), precision="fp32", trust_remote_code=True,
                                       prepare="at_load"))
    model.load()
    assert model.family == "remote-code"
    expected = reference("wav2vec2", checkpoints["wav2vec2"])(WAVES[0])
    np.testing.assert_allclose(product_row("wav2vec2", path, model.predict([WAVES[0]])[0]),
                               expected, atol=1e-4)


def test_an_unknown_architecture_is_refused(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    path = _copy(checkpoints["wav2vec2"], tmp_path / "ast", architectures=["ASTForAudioClassification"])
    text = _refusal(path)
    assert "ASTForAudioClassification" in text and "not a supported emotion model" in text
    assert "WhisperForAudioClassification" in text  # it says what is supported


def test_labels_that_name_no_emotion_are_refused(tmp_path: Path) -> None:
    path = build_tiny_classifier(tmp_path / "m", labels=("LABEL_0", "LABEL_1"))
    assert "LABEL_0" in _refusal(path)


def test_emotion2vec_is_refused_as_not_supported(tmp_path: Path) -> None:
    path = tmp_path / "emotion2vec_plus_base"
    path.mkdir()
    (path / "config.yaml").write_text("model: Emotion2vec\n")
    (path / "model.pt").write_bytes(b"\0" * 16)
    assert "emotion2vec checkpoints (FunASR) are not supported" in _refusal(path)


def test_a_dimensional_head_with_other_labels_is_refused(
        checkpoints: dict[str, Path], tmp_path: Path) -> None:
    path = _copy(checkpoints["dimensional"], tmp_path / "m",
                 id2label={"0": "angry", "1": "happy", "2": "sad"})
    assert "arousal, valence (and dominance)" in _refusal(path)


def test_a_checkpoint_without_its_feature_extractor_is_refused(
        checkpoints: dict[str, Path], tmp_path: Path) -> None:
    path = _copy(checkpoints["wav2vec2"], tmp_path / "m")
    (path / "preprocessor_config.json").unlink()
    assert "no preprocessor_config.json" in _refusal(path)


def test_inspection_reads_weight_names_without_loading_tensors(
        checkpoints: dict[str, Path]) -> None:
    info = inspect_checkpoint(str(checkpoints["whisper"]))
    assert (info.family, info.inputs) == ("whisper", "input_features")
    assert all(info.head_weights.values()) and info.parameters > 10_000
    dim = inspect_checkpoint(str(checkpoints["dimensional"]))
    assert dim.dimensional and "arousal" in dim.describe()
    weighted = inspect_checkpoint(str(checkpoints["wavlm"]))
    assert weighted.head_weights["layer_weights"] is True
