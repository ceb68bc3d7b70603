import warnings

import numpy as np
import pytest

from analyzers.types import AudioChunk
from analyzers.vad import (
    SileroModel,
    SileroVoiceActivityDetector,
    VadConfig,
    VoiceActivityDetector,
    make_detector,
    sanitize,
)
from analyzers.windowing import SpeechWindower, WindowConfig
from bridge.config import ConfigError, load_settings
from bridge.pipeline.audio import read_file
from tests import noise as room
from tests.conftest import CALM, SR, harmonic


def _speech_fraction(samples: np.ndarray, **cfg: int) -> float:
    return float(VoiceActivityDetector(VadConfig(**{"engine": "webrtc", **cfg})).process(samples).mean())


def test_silence_is_not_speech() -> None:
    assert _speech_fraction(np.zeros(5 * SR, np.float32)) == 0.0


def test_quiet_noise_is_not_speech() -> None:
    noise = (np.random.default_rng(1).standard_normal(5 * SR) * 0.005).astype(np.float32)
    assert _speech_fraction(noise, aggressiveness=3, hangover_ms=0) < 0.05


def test_speech_fixture_is_mostly_speech_in_its_sentences() -> None:
    audio = np.concatenate([c[0].samples for c in read_file(CALM)])
    vad = VoiceActivityDetector(VadConfig(engine="webrtc", hangover_ms=0))
    decisions = vad.process(audio)
    frame = vad.frame_len
    # Reference: the pauses hold only the faint noise floor (below -65 dBFS); speech is far louder.
    frames = audio[: len(decisions) * frame].reshape(len(decisions), frame)
    level = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) + 1e-10)
    assert decisions[level > -45].mean() > 0.95
    assert decisions[level < -65].mean() < 0.2
    assert 0.3 < decisions.mean() < 0.95


def test_streaming_gives_same_decisions_as_one_call() -> None:
    audio = np.concatenate([c[0].samples for c in read_file(CALM)])[: 10 * SR]
    whole = VoiceActivityDetector().process(audio)
    vad = VoiceActivityDetector()
    parts = [vad.process(audio[i : i + 317]) for i in range(0, len(audio), 317)]
    assert np.array_equal(np.concatenate(parts), whole)


def test_hangover_extends_speech_after_it_stops() -> None:
    tone = harmonic(150, 1.0)
    audio = np.concatenate([tone, np.zeros(SR, np.float32)])
    short = VoiceActivityDetector(VadConfig(engine="webrtc", hangover_ms=0)).process(audio)
    long = VoiceActivityDetector(VadConfig(engine="webrtc", hangover_ms=300)).process(audio)
    assert long.sum() - short.sum() == pytest.approx(10, abs=1)  # 300 ms / 30 ms frames


def test_nan_and_inf_are_treated_as_silence() -> None:
    bad = np.full(SR, np.nan, np.float32)
    bad[::3] = np.inf
    assert _speech_fraction(bad) == 0.0
    assert np.isfinite(sanitize(bad)).all()


@pytest.mark.parametrize("cfg", [{"aggressiveness": 4}, {"frame_ms": 25}, {"hangover_ms": -1},
                                 {"engine": "webrtc", "frame_ms": 32},
                                 {"engine": "silero", "frame_ms": 30},
                                 {"engine": "rnnoise"}, {"engine": "silero", "threshold": 1.0},
                                 {"threshold": 0.0}])
def test_bad_config_is_rejected(cfg: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        VadConfig(**cfg)  # type: ignore[arg-type]


# --- Silero VAD (the engine option) -------------------------------------------------------


@pytest.fixture(scope="module")
def silero() -> SileroModel:
    return SileroModel.load()


def _silero(model: SileroModel, **cfg: float) -> SileroVoiceActivityDetector:
    return SileroVoiceActivityDetector(VadConfig(engine="silero", **cfg), model)  # type: ignore[arg-type]


def _calm() -> np.ndarray:
    return np.concatenate([c[0].samples for c in read_file(CALM)])


def test_steady_pink_noise_is_speech_to_webrtc_but_not_to_silero(silero: SileroModel) -> None:
    pink = room.noise("pink", 30.0, -26.0, seed=7)
    assert VoiceActivityDetector().process(pink).mean() > 0.9  # the false alarm
    decisions = _silero(silero).process(pink)
    assert len(decisions) == len(pink) // 512
    assert decisions.mean() <= 0.02


def test_silero_finds_the_speech_of_the_fixture(silero: SileroModel) -> None:
    audio = _calm()
    vad = _silero(silero, hangover_ms=0)
    decisions = vad.process(audio)
    assert vad.frame_len == 512 and vad.frame_s == pytest.approx(0.032)
    frames = audio[: len(decisions) * 512].reshape(len(decisions), 512)
    level = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) + 1e-10)
    assert decisions[level > -45].mean() > 0.95
    assert decisions[level < -65].mean() < 0.2
    assert 0.3 < decisions.mean() < 0.95


def test_silero_streaming_in_odd_pieces_equals_one_call(silero: SileroModel) -> None:
    audio = _calm()[: 10 * SR]
    whole = _silero(silero).process(audio)
    vad = _silero(silero)
    parts = [vad.process(audio[i : i + 317]) for i in range(0, len(audio), 317)]
    assert np.array_equal(np.concatenate(parts), whole)
    assert whole.any() and not whole.all()


def test_silero_streams_do_not_share_state(silero: SileroModel) -> None:
    calm = _calm()
    one, two = calm[: 8 * SR], calm[20 * SR : 28 * SR]  # two speakers on one shared model
    alone = [_silero(silero, hangover_ms=0).process(x) for x in (one, two)]
    a, b = _silero(silero, hangover_ms=0), _silero(silero, hangover_ms=0)
    got_a, got_b = [], []
    for i in range(0, len(one), 700):  # interleaved
        got_a.append(a.process(one[i : i + 700]))
        got_b.append(b.process(two[i : i + 700]))
    assert np.array_equal(np.concatenate(got_a), alone[0])
    assert np.array_equal(np.concatenate(got_b), alone[1])
    # The probabilities themselves, not only the thresholded decisions.
    chunks = [x[: 200 * 512].reshape(200, 512) for x in (one, two)]
    solo = [silero.probabilities(c, silero.initial_state())[0] for c in chunks]
    states = [silero.initial_state(), silero.initial_state()]
    mixed: list[list[np.ndarray]] = [[], []]
    for i in range(0, 200, 7):
        for k in (0, 1):
            probs, states[k] = silero.probabilities(chunks[k][i : i + 7], states[k])
            mixed[k].append(probs)
    for k in (0, 1):
        assert np.array_equal(np.concatenate(mixed[k]), solo[k])
    assert not np.allclose(solo[0], solo[1])


def test_silero_probabilities_match_the_bundled_stateful_wrapper(silero: SileroModel) -> None:
    import importlib.util
    from pathlib import Path

    import torch

    spec = importlib.util.find_spec("silero_vad")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.jit"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        wrapper = torch.jit.load(str(path), map_location="cpu").eval()
    chunks = _calm()[SR : SR + 40 * 512].reshape(40, 512)
    with torch.inference_mode():
        expected = [float(wrapper(torch.from_numpy(c[None]), SR)) for c in chunks]
    got, _ = silero.probabilities(chunks, silero.initial_state())
    assert np.allclose(got, expected, atol=1e-5)
    assert max(expected) > 0.5


def test_silero_hangover_and_garbage(silero: SileroModel) -> None:
    audio = np.concatenate([_calm()[SR : 4 * SR], np.zeros(SR, np.float32)])
    short = _silero(silero, hangover_ms=0).process(audio)
    long = _silero(silero, hangover_ms=320).process(audio)
    assert long.sum() - short.sum() == 10  # 320 ms / 32 ms frames after the last word
    bad = np.full(SR, np.nan, np.float32)
    bad[::3] = np.inf
    assert not _silero(silero).process(bad).any()


def test_make_detector_picks_the_engine(silero: SileroModel) -> None:
    assert isinstance(make_detector(VadConfig(engine="webrtc")), VoiceActivityDetector)
    assert make_detector(VadConfig(engine="webrtc")).frame_s == pytest.approx(0.03)
    default = make_detector(None, silero)  # the default: silero, 32 ms
    assert isinstance(default, SileroVoiceActivityDetector) and default.frame_s == 0.032
    vad = make_detector(VadConfig(engine="silero"), silero)
    assert isinstance(vad, SileroVoiceActivityDetector) and vad.model is silero
    with pytest.raises(ValueError):
        VoiceActivityDetector(VadConfig(engine="silero"))


def test_windower_runs_on_silero_frames(silero: SileroModel) -> None:
    audio = _calm()[: 12 * SR]
    w = SpeechWindower(WindowConfig(window_s=4.0, hop_s=2.0), VadConfig(engine="silero"),
                       silero=silero)
    windows = []
    for i in range(0, len(audio), 320):
        windows += w.push(AudioChunk(audio[i : i + 320], i / SR))
    assert len(windows) >= 4
    for x in windows[1:]:
        assert x.frame_s == pytest.approx(0.032)
        assert len(x.speech_mask) == 125 and len(x.samples) == 125 * 512
        assert x.end_s - x.start_s == pytest.approx(4.0)
        assert 0.3 < x.voiced_s / 4.0 <= 1.0


def test_settings_choose_the_engine() -> None:
    def vad(**section: object) -> VadConfig:
        return load_settings(None, vad=section).vad

    default = vad()
    assert default == VadConfig() and default.engine == "silero" and default.effective_frame_ms == 32
    assert vad(engine="webrtc").effective_frame_ms == 30
    assert vad(engine="webrtc", frame_ms=20).effective_frame_ms == 20
    cfg = vad(engine="silero", threshold=0.6)
    assert (cfg.engine, cfg.threshold, cfg.effective_frame_ms) == ("silero", 0.6, 32)
    assert vad(engine="silero", frame_ms=32).effective_frame_ms == 32
    for bad, where in (({"engine": "silero", "frame_ms": 30}, "vad.frame_ms"),
                       ({"engine": "webrtc", "frame_ms": 32}, "vad.frame_ms"),
                       ({"threshold": 1.5}, "vad.threshold"),
                       ({"engine": "rnnoise"}, "vad.engine")):
        with pytest.raises(ConfigError, match=where):
            vad(**bad)


async def test_the_engine_loads_silero_once_and_every_speaker_shares_it() -> None:
    from bridge import events as ev
    from bridge.pipeline.analysis import AnalysisEngine, SpeakerAnalysis

    engine = AnalysisEngine(load_settings(None, analyzers=[], vad={"engine": "silero"}))
    await engine.start()
    assert engine.vad_model is not None

    async def emit(_: object) -> None:
        return None

    call = ev.CallInfo(id="t:1", connector="test")
    speakers = [SpeakerAnalysis(engine, call, ev.SpeakerInfo(id=f"t:1:{n}"), emit, offline=True)
                for n in "ab"]
    vads = [s.windower.vad for s in speakers]
    assert all(isinstance(v, SileroVoiceActivityDetector) for v in vads)
    assert all(v.model is engine.vad_model for v in vads)  # type: ignore[attr-defined]
    assert vads[0] is not vads[1]
    await engine.aclose()


def test_batched_streams_equal_each_stream_alone(silero: SileroModel) -> None:
    """One forward pass per step over every speaker: each row's result is its own."""
    rng = np.random.default_rng(9)
    calm = _calm()
    items = [(calm[k * 4000:k * 4000 + n * 512].reshape(n, 512) if k % 2 else
              (0.05 * rng.standard_normal((n, 512))).astype(np.float32), silero.initial_state())
             for k, n in enumerate((1, 4, 2, 6, 3))]
    together = silero.run(items)
    for (chunks, stream), (probs, (state, context)) in zip(items, together, strict=True):
        alone, (state1, context1) = silero.probabilities(chunks, stream)
        np.testing.assert_allclose(probs, alone, atol=1e-6)
        np.testing.assert_allclose(state, state1, atol=1e-6)
        assert np.array_equal(context, context1)


async def test_the_vad_thread_gives_each_speaker_what_it_would_get_alone(
        silero: SileroModel) -> None:
    import asyncio

    from analyzers.vad import SileroBatch

    audio = _calm()[: 6 * SR]
    alone = [_silero(silero).process(audio) for _ in range(3)]
    batch = SileroBatch(silero, max_wait_ms=20)
    try:
        detectors = [_silero(silero) for _ in range(3)]

        async def speaker(det: SileroVoiceActivityDetector) -> np.ndarray:
            out = [await det.process_batched(audio[i:i + 1600], batch)
                   for i in range(0, len(audio), 1600)]
            return np.concatenate(out)

        together = await asyncio.gather(*(speaker(d) for d in detectors))
    finally:
        batch.close()
    for a, t in zip(alone, together, strict=True):
        assert np.array_equal(a, t)
    assert max(batch._scheduler.stats.batch_sizes) > 1  # the speakers did share passes


def test_digital_silence_is_no_speech_without_the_network(silero: SileroModel) -> None:
    class Counting(SileroModel):
        calls = 0

        def run(self, items: list) -> list:  # type: ignore[override]
            Counting.calls += 1
            return super().run(items)

    counting = Counting(silero._session)
    vad = SileroVoiceActivityDetector(VadConfig(engine="silero"), counting)
    assert not vad.process(np.zeros(10 * SR, np.float32)).any()
    assert Counting.calls == 0  # a muted microphone costs no forward pass
    speech = _calm()[: 4 * SR]
    assert vad.process(speech).any() and Counting.calls == 1
