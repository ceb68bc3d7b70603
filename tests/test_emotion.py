import asyncio
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from analyzers.batching import InferenceScheduler, QueueFull
from analyzers.emotion import (
    CIRCUMPLEX,
    EmotionAnalyzer,
    EmotionConfig,
    EmotionModel,
    canonical_label,
    scores_from_probabilities,
)
from analyzers.loading import ModelUnavailable
from analyzers.types import SpeechWindow
from tests.conftest import SR, build_tiny_emotion_model, harmonic


def test_loads_through_from_pretrained_from_a_local_directory(tiny_emotion_model: Path) -> None:
    model = EmotionModel(EmotionConfig(model=str(tiny_emotion_model), device="cpu"))
    model.load()
    [scores] = model.predict([harmonic(180, 2.0)])
    assert set(scores.probabilities) == {"neutral", "happy", "angry", "sad"}
    assert sum(scores.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert -1 <= scores.arousal <= 1 and -1 <= scores.valence <= 1
    assert scores.audio_s == pytest.approx(2.0)


def test_batched_and_single_predictions_agree(tiny_emotion_model: Path) -> None:
    # fp32: exact. (int8 dynamic quantisation scales activations per batch, so it is close only.)
    model = EmotionModel(EmotionConfig(model=str(tiny_emotion_model), device="cpu",
                                       precision="fp32"))
    model.load()
    a, b = harmonic(150, 1.5), harmonic(220, 1.5, seed=2)  # same length: no padding
    single = [model.predict([a])[0], model.predict([b])[0]]
    batch = model.predict([a, b])
    for s, m in zip(single, batch, strict=True):
        for k in s.probabilities:
            assert s.probabilities[k] == pytest.approx(m.probabilities[k], abs=1e-5)


def test_uncached_hub_id_offline_is_unavailable_with_a_one_line_reason() -> None:
    model = EmotionModel(EmotionConfig(model="affect-bridge-tests/no-such-model"))
    with pytest.raises(ModelUnavailable) as info:
        model.load()
    text = str(info.value)
    assert "affect-bridge-tests/no-such-model" in text and "\n" not in text


def test_bad_local_path_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelUnavailable):
        EmotionModel(EmotionConfig(model=str(tmp_path))).load()


def test_label_mapping_and_unknown_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert canonical_label("ang") == "angry"
    assert canonical_label(" Fear ") == "fearful"
    assert canonical_label("ps") == "surprised"
    assert canonical_label("bored") == "other"
    path = build_tiny_emotion_model(tmp_path / "m", labels=("Anger", "Joy", "bored"))
    model = EmotionModel(EmotionConfig(model=str(path)))
    with caplog.at_level(logging.WARNING):
        model.load()
    assert "bored" in caplog.text
    [scores] = model.predict([harmonic(150, 1.0)])
    assert set(scores.probabilities) == {"angry", "happy", "other"}


def test_arousal_valence_table() -> None:
    angry = scores_from_probabilities({"angry": 1.0}, 1.0)
    assert (angry.arousal, angry.valence) == CIRCUMPLEX["angry"]
    mix = scores_from_probabilities({"happy": 0.5, "sad": 0.5}, 1.0)
    assert mix.arousal == pytest.approx((0.5 - 0.5) / 2)
    assert mix.valence == pytest.approx((0.8 - 0.7) / 2)
    assert mix.dominant in {"happy", "sad"}


async def test_analyzer_uses_only_new_speech_and_skips_short_bits(tiny_emotion_model: Path) -> None:
    analyzer = EmotionAnalyzer(EmotionConfig(model=str(tiny_emotion_model), min_audio_s=1.0))
    analyzer.load()
    try:
        audio = harmonic(150, 4.0)

        def win(new: np.ndarray) -> SpeechWindow:
            return SpeechWindow(audio, 0.0, 4.0, np.ones(133, bool), 0.03, new)

        assert await analyzer.analyze(win(audio[: SR // 2]), wait=True) is None
        scores = await analyzer.analyze(win(audio[: 2 * SR]), wait=True)
        assert scores is not None and scores.audio_s == pytest.approx(2.0)
        assert analyzer.scheduler is not None and analyzer.scheduler.stats.items == 1
    finally:
        analyzer.close()


def test_scheduler_batches_across_callers_and_keeps_order() -> None:
    gate = threading.Event()
    seen: list[list[int]] = []

    def predict(batch: list[int]) -> list[int]:
        gate.wait(5)
        seen.append(list(batch))
        return [x * 10 for x in batch]

    sched = InferenceScheduler(predict, max_batch=4, max_wait_ms=200, queue_size=16)
    try:
        first = sched.submit(0)
        futures = [sched.submit(i) for i in range(1, 5)]
        gate.set()
        assert first.result(5) == 0
        assert [f.result(5) for f in futures] == [10, 20, 30, 40]
        assert max(len(b) for b in seen) > 1  # the four waiting ones went as one batch
        assert sched.stats.items == 5
    finally:
        sched.close()


def test_a_job_runs_on_the_inference_thread_in_queue_order_and_may_fail() -> None:
    """run_soon: a job queued while a batch fills runs after that batch and before what was
    queued after it, on the inference thread; one that raises is logged, inference goes on."""
    gate = threading.Event()
    order: list[str] = []

    def predict(batch: list[int]) -> list[int]:
        gate.wait(5)
        order.append(f"batch {batch}")
        return batch

    def job() -> None:
        order.append(f"job on {threading.current_thread().name}")
        raise RuntimeError("a failed measurement")

    sched = InferenceScheduler(predict, max_batch=4, max_wait_ms=500, queue_size=16,
                               name="emotion-inference")
    try:
        first = sched.submit(1)  # the thread takes it and waits for more, up to 500 ms
        sched.run_soon(job)
        later = sched.submit(2)
        gate.set()
        assert first.result(5) == 1 and later.result(5) == 2
        assert order == ["batch [1]", "job on emotion-inference", "batch [2]"]
    finally:
        sched.close()


def test_scheduler_isolates_a_failing_batch() -> None:
    def predict(batch: list[int]) -> list[int]:
        if -1 in batch:
            raise RuntimeError("bad input")
        return batch

    sched = InferenceScheduler(predict, max_batch=1)
    try:
        bad = sched.submit(-1)
        with pytest.raises(RuntimeError, match="bad input"):
            bad.result(5)
        assert sched.submit(7).result(5) == 7  # the thread survived
    finally:
        sched.close()


def test_scheduler_queue_is_bounded_and_counts_drops() -> None:
    gate = threading.Event()
    sched = InferenceScheduler(lambda b: (gate.wait(5), b)[1], max_batch=1, queue_size=2)
    try:
        running = sched.submit(1)
        while sched.pending:  # the worker has taken the first item
            pass
        sched.submit(2, block=False)
        sched.submit(3, block=False)
        with pytest.raises(QueueFull):
            sched.submit(4, block=False)
        assert sched.stats.dropped == 1
        gate.set()
        assert running.result(5) == 1
    finally:
        sched.close()


async def test_scheduler_futures_are_awaitable() -> None:
    sched = InferenceScheduler(lambda b: [x + 1 for x in b])
    try:
        assert await asyncio.wrap_future(sched.submit(1)) == 2
    finally:
        sched.close()


def test_bad_quantize_option() -> None:
    with pytest.raises(ValueError, match="quantize"):
        EmotionConfig(quantize="fp8")
