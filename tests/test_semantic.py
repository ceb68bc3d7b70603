"""The semantic stream: ASR (tiny Whisper), sentiment (VADER, tiny classifier), fusion, privacy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analyzers.loading import ModelUnavailable
from analyzers.semantic import (
    SemanticAnalyzer,
    SemanticConfig,
    SentimentModel,
    SpeechRecognizer,
    sentiment_label,
)
from analyzers.stress import StressConfig, StressEngine, stress_features
from analyzers.types import SemanticResult, SpeechWindow
from bridge.config import load_settings
from tests.conftest import CALM, build_tiny_text_classifier, harmonic, run_cli


def vader() -> SentimentModel:
    model = SentimentModel(SemanticConfig(sentiment="vader"))
    model.load()
    return model


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I love this, it is wonderful and everyone was so kind.", "positive"),
        ("Great news, thank you so much!", "positive"),
        ("This is terrible, I hate it and I am furious.", "negative"),
        ("Nobody answers and the whole system is broken again.", "negative"),
        ("The meeting is on Thursday at three.", "neutral"),
        ("", "neutral"),
    ],
)
def test_vader_polarity_of_fixed_sentences(text: str, label: str) -> None:
    [score] = vader().scores([text])
    assert -1 <= score <= 1
    assert sentiment_label(score) == label


def test_vader_orders_by_intensity() -> None:
    mild, strong = vader().scores(["This is bad.", "This is absolutely horrible and disgusting!"])
    assert strong < mild < 0


def test_tiny_whisper_loads_from_a_local_directory_and_transcribes(tiny_whisper: Path) -> None:
    asr = SpeechRecognizer(SemanticConfig(asr_model=str(tiny_whisper), max_new_tokens=8))
    asr.load()
    a, b = harmonic(150, 2.0), harmonic(220, 3.0, seed=3)
    batched = asr.transcribe([a, b])
    assert len(batched) == 2 and all(isinstance(t, str) for t in batched)
    # Whisper pads every input to 30 s: batching must not change the text.
    assert batched == asr.transcribe([a]) + asr.transcribe([b])


def test_language_is_passed_to_whisper(tiny_whisper: Path) -> None:
    asr = SpeechRecognizer(SemanticConfig(asr_model=str(tiny_whisper), language="de"))
    asr.load()
    assert asr._generate["language"] == "de" and asr._generate["task"] == "transcribe"
    assert asr._generate["num_beams"] == 1  # greedy unless configured (the pipeline would use 5)
    auto = SpeechRecognizer(SemanticConfig(asr_model=str(tiny_whisper), language=None))
    auto.load()
    assert "language" not in auto._generate


def test_tiny_text_classifier_score_is_p_positive_minus_p_negative(tiny_text_classifier: Path,
                                                                   ) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = SentimentModel(SemanticConfig(sentiment=str(tiny_text_classifier), device="cpu"))
    model.load()
    texts = ["i love this", "it is terrible", ""]
    scores = model.scores(texts)
    assert scores[2] == 0.0  # nothing said: neutral, the model is not asked
    tok = AutoTokenizer.from_pretrained(tiny_text_classifier)
    ref = AutoModelForSequenceClassification.from_pretrained(tiny_text_classifier).eval()
    for text, score in zip(texts[:2], scores[:2], strict=True):
        with torch.no_grad():
            p = torch.softmax(ref(**tok(text, return_tensors="pt")).logits, -1)[0]
        assert score == pytest.approx(float(p[1] - p[0]), abs=1e-5)


def test_classifier_label_conventions(tmp_path: Path) -> None:
    three = build_tiny_text_classifier(tmp_path / "three", ("LABEL_0", "LABEL_1", "LABEL_2"))
    model = SentimentModel(SemanticConfig(sentiment=str(three)))
    model.load()
    assert model._polarity == {"LABEL_0": -1.0, "LABEL_1": 0.0, "LABEL_2": 1.0}
    odd = build_tiny_text_classifier(tmp_path / "odd", ("sports", "politics"))
    with pytest.raises(ModelUnavailable, match="do not name positive and negative"):
        SentimentModel(SemanticConfig(sentiment=str(odd))).load()


def test_missing_weights_are_unavailable_offline() -> None:
    with pytest.raises(ModelUnavailable, match="nobody/no-asr"):
        SpeechRecognizer(SemanticConfig(asr_model="nobody/no-asr")).load()
    with pytest.raises(ModelUnavailable, match="nobody/no-sentiment"):
        SentimentModel(SemanticConfig(sentiment="nobody/no-sentiment")).load()


async def test_transcripts_are_dropped_unless_asked_for(tiny_whisper: Path) -> None:
    audio = harmonic(180, 2.0)
    window = SpeechWindow(audio, 0.0, 2.0, np.ones(66, bool), 0.03, audio)
    for include in (False, True):
        analyzer = SemanticAnalyzer(SemanticConfig(asr_model=str(tiny_whisper), max_new_tokens=6,
                                                   include_transcript=include))
        analyzer.load()
        try:
            result = await analyzer.analyze(window, wait=True)
        finally:
            analyzer.close()
        assert result is not None and result.sentiment_label in {"negative", "neutral", "positive"}
        assert (result.transcript is not None) is include


def test_fusion_arithmetic() -> None:
    semantic = SemanticResult(-0.8, "negative", 5, 4.0)
    assert stress_features(None, None, semantic) == {"sentiment": 0.8}
    engine = StressEngine(StressConfig(calibration_s=4, calibration_windows=2))
    for i in range(2):  # a neutral baseline
        engine.update({"sentiment": 0.0}, 2.0, 2.0 * (i + 1))
    est = engine.update({"sentiment": 0.8}, 2.0, 6.0)
    # z = (0.8 - 0) / floor 0.2 = 4 (= z_max); alone it is the window's score, clipped to
    # step_max; the evidence is score - reference.
    cfg = engine.config
    assert est.components == {"sentiment": 4.0}
    assert est.score == pytest.approx(min(4.0, cfg.step_max))
    assert est.index == pytest.approx((min(4.0, cfg.step_max) - cfg.reference) / cfg.saturation)
    # Beside prosody it counts with its weight (0.10 of the total).
    engine2 = StressEngine(StressConfig(calibration_s=4, calibration_windows=2))
    for i in range(2):
        engine2.update({"sentiment": 0.0, "f0": 30.0}, 2.0, 2.0 * (i + 1))
    est2 = engine2.update({"sentiment": 0.8, "f0": 30.0}, 2.0, 6.0)
    fused = (0.10 * 4.0 + 0.25 * 0.0) / (0.10 + 0.25)
    assert est2.score == pytest.approx(fused)
    assert est2.index == pytest.approx((fused - cfg.reference) / cfg.saturation)


def test_semantic_is_off_by_default() -> None:
    assert "semantic" not in load_settings().analyzers


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def _config(tmp_path: Path, whisper: Path, **extra: object) -> Path:
    lines = ['analyzers = ["prosody", "semantic"]', "[semantic]", f'asr_model = "{whisper}"',
             "max_new_tokens = 6"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    path = tmp_path / "semantic.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_analyze_with_the_semantic_stream(tmp_path: Path, tiny_whisper: Path) -> None:
    proc = run_cli("analyze", str(CALM), "--config", str(_config(tmp_path, tiny_whisper)))
    assert proc.returncode == 0, proc.stderr
    samples = [e for e in _events(proc.stdout) if e["type"] == "affect.sample"]
    with_sem = [s for s in samples if "semantic" in s["data"]["extra"]]
    assert len(with_sem) >= len(samples) - 3  # from the first 4 s speech chunk on
    for s in with_sem:
        sentiment = s["data"]["extra"]["semantic"]["sentiment"]
        assert -1 <= sentiment["score"] <= 1
        assert "transcript" not in s["data"]["extra"]["semantic"]
    assert "transcripts discarded" in proc.stderr


def test_transcripts_in_events_only_when_allowed_and_never_in_logs(tmp_path: Path,
                                                                  tiny_whisper: Path) -> None:
    cfg = _config(tmp_path, tiny_whisper, include_transcript=True)
    proc = run_cli("--debug", "analyze", str(CALM), "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    transcripts = [s["data"]["extra"]["semantic"]["transcript"] for s in _events(proc.stdout)
                   if "transcript" in s["data"].get("extra", {}).get("semantic", {})]
    assert transcripts  # one per speech chunk
    for text in {t for t in transcripts if len(t) >= 4}:
        assert text not in proc.stderr  # not even with --debug


def test_missing_asr_weights_degrade_only_the_semantic_stream(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('analyzers = ["prosody", "semantic"]\n[semantic]\nasr_model = "nobody/none"\n')
    proc = run_cli("analyze", str(CALM), "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    evs = _events(proc.stdout)
    degraded = [e for e in evs if e["type"] == "analyzer.degraded"]
    assert [d["data"]["analyzer"] for d in degraded] == ["semantic"]
    samples = [e for e in evs if e["type"] == "affect.sample"]
    assert samples and all("semantic" not in s["data"]["extra"] for s in samples)
