import numpy as np
import pytest

from analyzers.vad import VadConfig, VoiceActivityDetector, sanitize
from bridge.audio import read_file
from tests.conftest import CALM, SR, harmonic


def _speech_fraction(samples: np.ndarray, **cfg: int) -> float:
    return float(VoiceActivityDetector(VadConfig(**cfg)).process(samples).mean())


def test_silence_is_not_speech() -> None:
    assert _speech_fraction(np.zeros(5 * SR, np.float32)) == 0.0


def test_quiet_noise_is_not_speech() -> None:
    noise = (np.random.default_rng(1).standard_normal(5 * SR) * 0.005).astype(np.float32)
    assert _speech_fraction(noise, aggressiveness=3, hangover_ms=0) < 0.05


def test_speech_fixture_is_mostly_speech_in_its_sentences() -> None:
    audio = np.concatenate([c[0].samples for c in read_file(CALM)])
    vad = VoiceActivityDetector(VadConfig(hangover_ms=0))
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
    short = VoiceActivityDetector(VadConfig(hangover_ms=0)).process(audio)
    long = VoiceActivityDetector(VadConfig(hangover_ms=300)).process(audio)
    assert long.sum() - short.sum() == pytest.approx(10, abs=1)  # 300 ms / 30 ms frames


def test_nan_and_inf_are_treated_as_silence() -> None:
    bad = np.full(SR, np.nan, np.float32)
    bad[::3] = np.inf
    assert _speech_fraction(bad) == 0.0
    assert np.isfinite(sanitize(bad)).all()


@pytest.mark.parametrize("cfg", [{"aggressiveness": 4}, {"frame_ms": 25}, {"hangover_ms": -1}])
def test_bad_config_is_rejected(cfg: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        VadConfig(**cfg)
