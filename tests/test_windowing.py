import numpy as np
import pytest

from analyzers.types import AudioChunk, QuietWindow
from analyzers.vad import VadConfig
from analyzers.windowing import SpeechWindower, WindowConfig
from tests.conftest import SR, harmonic


def windower(config: WindowConfig | None = None) -> SpeechWindower:
    """The windowing logic under test, over webrtcvad: these tests' voices are synthetic
    harmonic tones, which webrtcvad calls speech and Silero (rightly) does not."""
    return SpeechWindower(config, VadConfig(engine="webrtc"))


def stream(audio: np.ndarray, windower: SpeechWindower, step: int = 960) -> list:
    out = []
    for i in range(0, len(audio), step):
        out += windower.push(AudioChunk(audio[i : i + step], i / SR))
    return out


def talk(seconds: float) -> np.ndarray:
    """Alternating 1.5 s of voice and 0.5 s of silence."""
    piece = np.concatenate([harmonic(160, 1.5), np.zeros(SR // 2, np.float32)])
    reps = int(np.ceil(seconds / 2.0))
    return np.tile(piece, reps)[: int(seconds * SR)]


def test_a_window_every_hop_covering_the_last_window_s() -> None:
    w = windower(WindowConfig(window_s=4.0, hop_s=2.0))
    windows = stream(talk(20.0), w)
    ends = [round(x.end_s, 2) for x in windows]
    assert ends == pytest.approx([2.01, 4.02, 6.0, 8.01, 10.02, 12.0, 14.01, 16.02, 18.0, 20.01][:len(ends)],
                                 abs=0.05)
    assert len(windows) >= 9
    for x in windows[1:]:
        assert x.end_s - x.start_s == pytest.approx(4.0, abs=0.03)
        assert len(x.samples) == len(x.speech_mask) * 480
        assert 0.5 < x.voiced_s / 4.0 < 0.95


def test_silence_gives_no_windows_and_min_voiced_is_respected() -> None:
    w = windower(WindowConfig(min_voiced_s=1.0))
    assert stream(np.zeros(10 * SR, np.float32), w) == []
    blip = np.concatenate([np.zeros(3 * SR, np.float32), harmonic(150, 0.5),
                           np.zeros(3 * SR, np.float32)])
    assert stream(blip, windower(WindowConfig(min_voiced_s=1.0))) == []
    assert stream(blip, windower(WindowConfig(min_voiced_s=0.3)))


def test_every_voiced_second_reaches_the_emotion_model_once_in_chunks() -> None:
    w = windower(WindowConfig(emotion_chunk_s=3.0, emotion_max_s=8.0))
    windows = stream(talk(30.0), w) + w.flush()
    handed = [len(x.new_speech) / SR for x in windows]
    nonzero = [h for h in handed if h > 0]
    # Every chunk but the last (the flush) is one length, the chunk's to a VAD frame: chunks
    # of several speakers can share a forward pass. The rest waits for the next chunk.
    assert len(nonzero) > 3 and len(set(nonzero[:-1])) == 1
    assert nonzero[0] == pytest.approx(3.0, abs=w.vad.frame_s / 2)
    assert nonzero[-1] <= nonzero[0]
    assert sum(handed) == pytest.approx(w.speech_s, abs=0.01)


def test_new_speech_is_capped() -> None:
    # A window only every 20 s: the speech waiting for the model keeps just the newest 5 s.
    w = windower(WindowConfig(window_s=20, hop_s=20, emotion_chunk_s=5, emotion_max_s=5))
    windows = stream(harmonic(150, 21.0), w)
    assert len(windows[0].new_speech) / SR == pytest.approx(5.0, abs=0.03)


def test_chunk_boundaries_do_not_matter() -> None:
    audio = talk(12.0)
    a = stream(audio, windower(), step=160)
    b = stream(audio, windower(), step=7919)
    assert [x.end_s for x in a] == [x.end_s for x in b]
    assert all(np.array_equal(x.samples, y.samples) for x, y in zip(a, b, strict=True))


def test_time_starts_at_the_first_chunk() -> None:
    w = windower()
    audio = harmonic(150, 5.0)
    windows = [win for i in range(0, len(audio), 960)
               for win in w.push(AudioChunk(audio[i : i + 960], 100.0 + i / SR))]
    assert windows[0].end_s == pytest.approx(102.0, abs=0.05)


@pytest.mark.parametrize("kw", [{"hop_s": 5.0, "window_s": 4.0}, {"min_voiced_s": 5.0},
                                {"emotion_chunk_s": 9.0, "emotion_max_s": 8.0}])
def test_bad_config(kw: dict) -> None:
    with pytest.raises(ValueError):
        WindowConfig(**kw)


def _due(windows: list) -> list[tuple]:
    out = []
    for x in windows:
        if isinstance(x, QuietWindow):
            out.append(("quiet", round(x.since_s, 2), round(x.end_s, 2)))
        else:
            out.append(("speech", round(x.end_s, 2), round(x.voiced_s, 2)))
    return out


def test_a_gap_as_silence_lands_windows_where_zeros_would() -> None:
    """push_silence(n) places speech after a gap exactly where n zero samples would, reports the
    windows inside the gap (the ones still holding speech, then one quiet run), and costs
    O(window), not O(gap)."""
    speech = talk(6.0)
    gap = 37 * SR + 123  # 37 s and a bit: not on the frame grid

    def with_zeros() -> list:
        w = windower()
        out = [*w.push_due(AudioChunk(speech, 0.0))]
        for i in range(0, gap, SR):
            out += w.push_due(AudioChunk(np.zeros(min(SR, gap - i), np.float32), 0.0))
        out += w.push_due(AudioChunk(speech, 0.0))
        return out

    def with_gap() -> tuple[list, SpeechWindower]:
        w = windower()
        out = [*w.push_due(AudioChunk(speech, 0.0))]
        out += w.push_silence(gap)
        out += w.push_due(AudioChunk(speech, 0.0))
        return out, w

    zeros = with_zeros()
    gapped, w = with_gap()
    speech_z = [d for d in _due(zeros) if d[0] == "speech"]
    speech_g = [d for d in _due(gapped) if d[0] == "speech"]
    assert speech_g == speech_z  # same times, same voiced seconds
    total_s = (2 * len(speech) + gap) / SR
    assert total_s - 2.0 < speech_g[-1][1] <= total_s  # the last hop before the end
    quiet_z = [d for d in _due(zeros) if d[0] == "quiet"]
    quiet_g = [x for x in gapped if isinstance(x, QuietWindow)]
    # every quiet window of the zeros run is covered by the reported quiet runs
    assert quiet_g and quiet_g[0].since_s == pytest.approx(quiet_z[0][1], abs=0.05)
    assert max(x.end_s for x in quiet_g) == pytest.approx(quiet_z[-1][2], abs=0.05)
    assert len(quiet_g) < len(quiet_z) / 4  # the long middle came back as one run
    assert w.audio_s == pytest.approx((2 * len(speech) + gap) / SR, abs=0.03)
    assert w.speech_s == pytest.approx(with_zeros_speech(speech), abs=0.1)


def with_zeros_speech(speech: np.ndarray) -> float:
    w = windower()
    w.push_due(AudioChunk(speech, 0.0))
    return 2 * w.speech_s


def test_silence_before_any_audio_is_refused() -> None:
    with pytest.raises(ValueError, match="first audio"):
        windower().push_silence(SR)


def test_windows_carry_the_speakers_own_level_once_known() -> None:
    audio = talk(12.0)
    windows = stream(audio, windower())
    assert windows[0].own_level_db is None  # under 3 s of speech heard by then
    tone = harmonic(160, 1.5)
    expected = 10 * np.log10(np.mean(tone.astype(np.float64) ** 2))
    assert windows[-1].own_level_db == pytest.approx(expected, abs=1.5)


@pytest.mark.parametrize("engine", ["webrtc", "silero"])
def test_windows_do_not_depend_on_how_the_audio_is_cut(engine: str) -> None:
    """Live audio comes in 20 ms frames, a file in its codec's frames, analyze joins a second
    at a time: the windows (masks, speech, the speaker's own level) must be the same. Digital
    silence in the middle of a chunk, and a voice that gets louder, are where they used not
    to be (the own level looked ahead to the end of the caller's chunk; Silero judged silence
    per call)."""
    from bridge.pipeline.audio import read_file
    from tests.conftest import CALM

    speech = np.concatenate([c.samples for [c] in read_file(CALM)])[:12 * SR]
    audio = np.concatenate([0.3 * speech[:5 * SR], np.zeros(SR // 3, np.float32),
                            speech[5 * SR:]]).astype(np.float32)

    def windows(cut: int) -> list[tuple[float, float | None, bytes, bytes]]:
        w = SpeechWindower(WindowConfig(), VadConfig(engine=engine))  # type: ignore[arg-type]
        out = []
        for i in range(0, len(audio), cut):
            out += w.push_due(AudioChunk(audio[i:i + cut], i / SR))
        return [(x.end_s, getattr(x, "own_level_db", None),
                 np.asarray(getattr(x, "speech_mask", [])).tobytes(),
                 np.asarray(getattr(x, "new_speech", [])).tobytes()) for x in out]

    frame_by_frame = windows(320)
    assert sum(1 for _, level, _, _ in frame_by_frame if level is not None) >= 3
    assert windows(4096) == frame_by_frame
    assert windows(SR) == frame_by_frame
    assert windows(3 * SR + 17) == frame_by_frame
