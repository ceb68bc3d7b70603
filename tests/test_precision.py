"""The emotion model's precision: measured once per checkpoint and machine, cached, forced when
configured, close to fp32 in every precision; batches give each item its own result."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import analyzers.emotion as emotion_module
from analyzers.emotion import EmotionConfig, EmotionModel, fold_weight_norm
from analyzers.precision import (
    BatchChoice,
    DecisionCache,
    candidates,
    choose,
    choose_batch,
    native_bf16,
    to_precision,
)
from tests.conftest import build_tiny_emotion_model, emotion_tv, harmonic


def _load(path: Path, **kw: Any) -> EmotionModel:
    """Measuring at load (the background job's own path; tests of the background mode say so)."""
    kw.setdefault("prepare", "at_load")
    model = EmotionModel(EmotionConfig(model=str(path), device="cpu", **kw))
    model.load()
    return model


def test_auto_precision_is_measured_once_then_read_from_the_cache(
        tiny_emotion_model: Path, cache_dir: Path, probes: list[int],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    first = _load(tiny_emotion_model)
    assert probes == [1] and first.decision is not None
    assert first.precision == first.decision.precision in candidates()
    assert set(first.decision.rates) >= {"fp32"}
    assert (cache_dir / "precision.json").is_file()
    second = _load(tiny_emotion_model)  # a later start: no measurement
    assert probes == [1]
    assert second.precision == first.precision
    assert second.decision == first.decision  # read from the cache


def test_a_changed_checkpoint_is_measured_again(tmp_path: Path, cache_dir: Path,
                                                probes: list[int]) -> None:
    path = build_tiny_emotion_model(tmp_path / "model")
    _load(path)
    _load(path)
    assert probes == [1]
    # New weights in the same directory (retrained, re-downloaded): a new measurement.
    shutil.rmtree(path)
    build_tiny_emotion_model(path)
    _load(path)
    assert probes == [1, 1]


@pytest.mark.parametrize("content", [
    "{not json", "[]", '{"version": 999, "decisions": {}}', "\x00\xff",
])
def test_a_corrupt_cache_is_ignored_with_a_log_line(
        tiny_emotion_model: Path, cache_dir: Path, probes: list[int], content: str,
        caplog: pytest.LogCaptureFixture) -> None:
    cache_dir.mkdir(parents=True)
    (cache_dir / "precision.json").write_text(content)
    model = _load(tiny_emotion_model)
    assert probes == [1] and model.precision in candidates()
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    # ... and replaced by a good one
    assert json.loads((cache_dir / "precision.json").read_text())["decisions"]


def test_a_malformed_cache_entry_is_ignored_with_a_log_line(
        tiny_emotion_model: Path, cache_dir: Path, probes: list[int],
        caplog: pytest.LogCaptureFixture) -> None:
    _load(tiny_emotion_model)
    path = cache_dir / "precision.json"
    data = json.loads(path.read_text())
    for key in data["decisions"]:
        data["decisions"][key] = {"precision": "fp64", "rates": "fast"}
    path.write_text(json.dumps(data))
    _load(tiny_emotion_model)
    assert probes == [1, 1]
    assert any("malformed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_a_forced_precision_is_honoured_and_agrees_with_fp32(
        tiny_emotion_model: Path, cache_dir: Path, probes: list[int], precision: str) -> None:
    import torch

    reference = _load(tiny_emotion_model, precision="fp32")
    model = _load(tiny_emotion_model, precision=precision)
    assert probes == [] and model.precision == precision
    params = list(model._model.parameters())
    if precision == "bf16":  # one copy of the weights, in bf16 (even where it is emulated)
        assert {p.dtype for p in params} == {torch.bfloat16}
    if precision == "int8":
        kinds = {type(m).__module__ for m in model._model.modules()}
        assert any("quantized" in k for k in kinds), kinds
    for seconds, f0 in ((1.0, 120), (2.0, 180), (3.5, 260)):
        audio = harmonic(f0, seconds, seed=f0)
        assert emotion_tv(reference.predict([audio])[0], model.predict([audio])[0]) < 0.05


def test_the_deprecated_quantize_option_still_chooses(tiny_emotion_model: Path,
                                                     cache_dir: Path) -> None:
    assert _load(tiny_emotion_model, quantize="none").precision == "fp32"
    assert _load(tiny_emotion_model, quantize="int8").precision == "int8"
    with pytest.raises(ValueError, match="precision"):
        EmotionConfig(precision="fp8")


def test_unequal_lengths_in_one_batch_give_each_item_its_result_alone(
        tiny_emotion_model: Path, cache_dir: Path) -> None:
    model = _load(tiny_emotion_model, precision="fp32")
    waves = [harmonic(150, 1.5), harmonic(220, 2.3, seed=2), harmonic(300, 1.5, seed=3),
             harmonic(120, 4.0, seed=4)]
    alone = [model.predict([w])[0] for w in waves]
    together = model.predict(waves)
    for a, b, w in zip(alone, together, waves, strict=True):
        assert b.audio_s == pytest.approx(len(w) / 16000)
        for k in a.probabilities:
            assert a.probabilities[k] == pytest.approx(b.probabilities[k], abs=1e-5)


@pytest.mark.parametrize("variant", ["fp32+matmul", "bf16+matmul", "int8+matmul"])
def test_the_matmul_feature_encoder_computes_what_the_convolutions_do(
        tiny_emotion_model: Path, variant: str) -> None:
    import torch
    from transformers import AutoModelForAudioClassification

    from analyzers.encoder import MatmulFeatureEncoder

    model = AutoModelForAudioClassification.from_pretrained(tiny_emotion_model).eval()
    converted = to_precision(model, variant, inplace=False)
    assert isinstance(converted.wav2vec2.feature_extractor, MatmulFeatureEncoder)
    assert not isinstance(model.wav2vec2.feature_extractor, MatmulFeatureEncoder)  # a copy
    dtype = torch.bfloat16 if variant.startswith("bf16") else torch.float32
    for seconds in (1.0, 2.7):
        x = torch.from_numpy(harmonic(170, seconds))[None]
        with torch.inference_mode():
            if variant == "fp32+matmul":  # the encoder alone: the same numbers
                ref = model.wav2vec2.feature_extractor(x)
                out = converted.wav2vec2.feature_extractor(x)
                assert out.shape == ref.shape
                assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
            a = torch.softmax(model(x).logits.double(), -1)
            b = torch.softmax(converted(x.to(dtype)).logits.double(), -1)
        assert 0.5 * float((a - b).abs().sum()) < 0.05


@pytest.mark.parametrize("norm,bias", [("group", False), ("group", True), ("layer", True)])
def test_the_matmul_encoder_alone_equals_the_convolutions_row_by_row(norm: str,
                                                                     bias: bool) -> None:
    """Both encoder forms (wav2vec2-base's group norm on the first layer, folded into its
    product; large models' layer norm on every layer, with conv biases), a batch of two
    different signals: each row is what the convolutions give it alone."""
    import torch
    from transformers import Wav2Vec2Config
    from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2FeatureEncoder

    from analyzers.encoder import MatmulFeatureEncoder

    torch.manual_seed(3)
    cfg = Wav2Vec2Config(conv_dim=(32, 32, 32, 32, 32, 32, 32), feat_extract_norm=norm,
                         conv_bias=bias)
    original = Wav2Vec2FeatureEncoder(cfg).eval()
    with torch.no_grad():  # affine norms away from their identity start
        for module in original.modules():
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    converted = MatmulFeatureEncoder(original)
    rows = torch.stack([torch.from_numpy(harmonic(150, 1.3)),
                        torch.from_numpy(harmonic(260, 1.3, seed=5)) * 3 + 0.2])
    with torch.inference_mode():
        together = converted(rows)
        for i in range(2):
            alone = original(rows[i:i + 1])
            assert together[i:i + 1].shape == alone.shape
            assert torch.allclose(together[i:i + 1], alone, atol=1e-4, rtol=1e-3)


def test_folding_the_weight_norm_changes_no_result(tiny_emotion_model: Path) -> None:
    import torch
    from transformers import AutoModelForAudioClassification

    model = AutoModelForAudioClassification.from_pretrained(tiny_emotion_model).eval()
    x = torch.from_numpy(harmonic(200, 2.0))[None]
    with torch.inference_mode():
        before = model(x).logits
    assert fold_weight_norm(model) == 1  # the positional convolution
    with torch.inference_mode():
        after = model(x).logits
    assert torch.allclose(before, after, atol=1e-5)
    assert fold_weight_norm(model) == 0


def test_bf16_is_a_candidate_only_where_the_cpu_has_it() -> None:
    assert "bf16" not in candidates({"avx2", "fma"})
    assert "bf16" in candidates({"avx512f", "avx512_bf16"})
    assert "bf16" in candidates({"amx_bf16", "amx_tile"})
    assert native_bf16({"amx_bf16"}) and not native_bf16({"avx512f"})


def test_choose_keeps_fp32_when_the_others_disagree() -> None:
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 2))

    def run(m: object, audio: np.ndarray) -> np.ndarray:
        return np.array([0.9, 0.1]) if m is model else np.array([0.1, 0.9])

    kept, decision = choose(model, run, ["fp32", "int8"], tolerance=0.05)
    assert kept is model and decision.precision == "fp32"
    assert decision.agreement["int8"] == pytest.approx(0.8)
    assert "int8" not in decision.rates and "disagreed" in decision.note


def test_decision_cache_survives_an_unwritable_directory(tmp_path: Path) -> None:
    from analyzers.precision import Decision

    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    cache = DecisionCache(blocked / "precision.json")
    cache.put("k", Decision("fp32", {"fp32": 1.0}))  # logs, does not raise
    assert cache.get("k") == Decision("fp32", {"fp32": 1.0})  # held for this run


def test_to_precision_rejects_unknown_names() -> None:
    import torch

    with pytest.raises(ValueError):
        to_precision(torch.nn.Linear(2, 2), "fp8")


@pytest.mark.parametrize("precision", ["fp32", "int8", "auto"])
def test_a_prepared_model_loads_with_torch_alone_and_gives_the_same_results(
        tiny_emotion_model: Path, cache_dir: Path, precision: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = _load(tiny_emotion_model, precision=precision)
    assert list((cache_dir / "models").glob(f"*-{first.precision}.pt"))
    waves = [harmonic(140, 1.3), harmonic(230, 2.9, seed=5), harmonic(200, 2.9, seed=6)]
    expected = [first.predict([w])[0] for w in waves]
    import transformers

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("loaded through transformers again")))
    second = _load(tiny_emotion_model, precision=precision)
    assert second.precision == first.precision and second.info is None
    alone = [second.predict([w])[0] for w in waves]
    together = second.predict(waves)  # the two 2.9 s waves share a forward pass
    tol = 1e-5 if first.precision == "fp32" else 0.02  # int8 scales activations per batch
    for e, a, t in zip(expected, alone, together, strict=True):
        for k in e.probabilities:
            assert a.probabilities[k] == pytest.approx(e.probabilities[k], abs=1e-6)
            assert t.probabilities[k] == pytest.approx(e.probabilities[k], abs=tol)


def test_an_unreadable_prepared_model_is_prepared_again(
        tiny_emotion_model: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    _load(tiny_emotion_model, precision="fp32")
    [path] = (cache_dir / "models").glob("*-fp32.pt")
    path.write_bytes(b"not a torch archive")
    model = _load(tiny_emotion_model, precision="fp32")
    assert model.info is not None  # loaded from the checkpoint
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert path.stat().st_size > 1000  # and kept prepared again
    assert _load(tiny_emotion_model, precision="fp32").info is None


@pytest.mark.parametrize("with_mask", [False, True])
def test_inputs_without_transformers_are_what_its_extractor_makes(with_mask: bool) -> None:
    """With or without ``return_attention_mask`` (the large checkpoints set it): an unpadded
    waveform is normalised alike."""
    from transformers import Wav2Vec2FeatureExtractor

    from analyzers.prepared import eligible, normalize

    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=with_mask)
    assert eligible(extractor)
    for wave in (harmonic(180, 1.7), np.zeros(16000, np.float32) + 0.1):
        ours = normalize(wave)
        theirs = extractor(wave, sampling_rate=16000, return_tensors="np")["input_values"][0]
        np.testing.assert_array_equal(ours, theirs)


def test_download_models_fetches_without_measuring_or_preparing(
        tiny_emotion_model: Path, tmp_path: Path) -> None:
    """download-models runs at image build, on another machine than the one that serves: it
    measures nothing and prepares nothing there."""
    from tests.conftest import run_cli

    cache = tmp_path / "cache"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'analyzers = ["emotion"]\n[emotion]\nmodel = "{tiny_emotion_model}"\n')
    result = run_cli("download-models", "--config", str(cfg),
                     env={"AFFECT_BRIDGE_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    assert "in the local cache" in result.stdout
    assert not (cache / "precision.json").exists() and not (cache / "models").exists()


class _Clock:
    """A clock that ``run`` advances by what a batch "costs": timing without waiting."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("cost,expected", [
    (lambda b: 0.2 * b, 1),  # no gain: every chunk costs the same alone or together
    (lambda b: 0.05 + 0.15 * b, 4),  # a fixed cost shared: 8 is best, 4 within 5 % of it
    (lambda b: 0.2 * b * (1.0 if b < 4 else 0.95), 1),  # 5 % is no gain worth waiting for
    (lambda b: 0.2 * b * (1.0 if b < 2 else 0.7), 2),  # AMX-like: the gain from 2 chunks on
])
def test_the_batch_size_is_the_smallest_that_pays(cost: Any, expected: int) -> None:
    clock = _Clock()

    def run(b: int) -> None:
        clock.now += cost(b)

    choice = choose_batch(run, clock=clock)
    assert choice.size == expected
    assert sorted(choice.rates) == [1, 2, 4, 8]
    assert choice.rates[1] == pytest.approx(4.0 / cost(1), rel=1e-3)


def test_a_gain_seen_in_one_round_only_is_noise() -> None:
    """Round 1 (after the warm-up) shows batches 30 % cheaper, round 2 none: no batching."""
    clock, calls = _Clock(), []

    def run(b: int) -> None:
        calls.append(b)
        second_round = len(calls) > 8  # 4 warm-up calls, then 4 per round
        clock.now += 0.2 * b * (1.0 if b == 1 or second_round else 0.7)

    assert choose_batch(run, clock=clock).size == 1


def test_batch_choices_survive_the_cache_and_bad_entries_are_ignored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "precision.json"
    DecisionCache(path).put_batch("k", BatchChoice(4, {1: 20.0, 4: 31.5}))
    assert DecisionCache(path).get_batch("k") == BatchChoice(4, {1: 20.0, 4: 31.5})
    assert DecisionCache(path).get_batch("other") is None
    data = json.loads(path.read_text())
    data["batches"]["k"] = {"size": 0, "rates": {}}
    path.write_text(json.dumps(data))
    assert DecisionCache(path).get_batch("k") is None
    assert any("malformed" in r.getMessage() for r in caplog.records)


def test_the_live_service_measures_the_batch_once_on_the_inference_thread(
        tiny_emotion_model: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """after_ready (live only) measures on the inference thread and sets the scheduler's batch;
    the next start reads it from the cache; results batched are each speaker's own."""
    import threading

    from analyzers.emotion import EmotionAnalyzer

    measured: list[str] = []
    real = EmotionModel.measure_batch

    def spy(self: EmotionModel, chunk_s: float = 4.0) -> BatchChoice:
        measured.append(threading.current_thread().name)
        return real(self, chunk_s)

    monkeypatch.setattr(EmotionModel, "measure_batch", spy)
    monkeypatch.setattr(emotion_module, "choose_batch",
                        lambda run, **kw: (run(2), BatchChoice(2, {1: 10.0, 2: 14.0}))[1])
    first = EmotionAnalyzer(EmotionConfig(model=str(tiny_emotion_model), device="cpu",
                                          prepare="at_load"))
    first.load()
    assert first.scheduler is not None and first.scheduler.max_batch == 1
    assert first.model.batch_unknown
    first.after_ready()
    waves = [harmonic(150 + 40 * i, 4.0, seed=i) for i in range(4)]
    together = [f.result(30) for f in [first.scheduler.submit(w) for w in waves]]
    assert measured == ["emotion-inference"]
    assert first.scheduler.max_batch == 2 and not first.model.batch_unknown
    alone = [first.model.predict([w])[0] for w in waves]
    for a, b in zip(alone, together, strict=True):
        assert emotion_tv(a, b) < 1e-5
    first.close()

    later = EmotionAnalyzer(EmotionConfig(model=str(tiny_emotion_model), device="cpu",
                                          prepare="at_load"))
    later.load()  # prepared, and the batch size from the cache
    assert later.scheduler is not None and later.scheduler.max_batch == 2
    later.after_ready()
    later.close()
    assert measured == ["emotion-inference"]
    forced = EmotionAnalyzer(EmotionConfig(model=str(tiny_emotion_model), device="cpu",
                                           prepare="at_load",
                                           max_batch=3))
    forced.load()
    assert forced.scheduler is not None and forced.scheduler.max_batch == 3
    forced.close()


def test_processes_started_together_measure_and_prepare_once(
        tiny_emotion_model: Path, cache_dir: Path) -> None:
    """`run --workers 2` on a fresh machine, measuring at load: two processes load the same
    checkpoint at once. One measures and prepares; the other waits for it and loads what it
    prepared. (The default, in the background: tests/test_prepare_background.py.)"""
    from tests.conftest import load_in_two_processes

    logs = load_in_two_processes(tiny_emotion_model, cache_dir, prepare="at_load")
    measured = [log for log in logs if "measured in" in log]
    assert len(measured) == 1, logs
    other = next(log for log in logs if "measured in" not in log)
    assert "prepared" in other and "from the checkpoint" not in other, other
    assert len(list((cache_dir / "models").glob("*.pt"))) == 1


def test_a_save_killed_halfway_leaves_no_file_behind_for_long(
        tiny_emotion_model: Path, cache_dir: Path) -> None:
    """A temporary file of a save that never finished (an hour old) is removed by the next
    save; a fresh one (another process writing now) is left alone."""
    import os
    import time

    models = cache_dir / "models"
    models.mkdir(parents=True)
    stale, fresh = models / ".prepared-old.pt", models / ".prepared-new.pt"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    hour_ago = time.time() - 3700
    os.utime(stale, (hour_ago, hour_ago))
    _load(tiny_emotion_model)
    assert not stale.exists() and fresh.exists()
    assert len([p for p in models.glob("*.pt") if not p.name.startswith(".")]) == 1
