"""``affect-bridge analyze`` end to end, as a user runs it (a subprocess, its exit code, its output)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import CALM, CALM_THEN_STRESSED, FIXTURES, ROOT, SR, require_tool, run_cli


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def of_type(evs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in evs if e["type"] == kind]


def duration(path: Path) -> float:
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        return float(s.duration * s.time_base)


def assert_spikes_only_after(evs: list[dict[str, Any]], boundary_s: float) -> None:
    starts = of_type(evs, "stress.spike.started")
    assert starts, "the stressed part gave no spike"
    for e in starts:
        # The first window above threshold ends after the calm part: it holds stressed speech.
        assert e["data"]["started_s"] > boundary_s, e
        assert e["data"]["offset_s"] > boundary_s, e


def assert_clean_error(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("affect-bridge: error:"), proc.stderr


@pytest.fixture(scope="module")
def stressed_run() -> list[dict[str, Any]]:
    proc = run_cli("analyze", str(CALM_THEN_STRESSED), "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    return events(proc.stdout)


def test_spike_only_in_the_stressed_part(stressed_run: list[dict[str, Any]]) -> None:
    assert_spikes_only_after(stressed_run, duration(CALM))  # same voice and text: same calm length


def test_first_samples_are_calibrating_later_ones_not(stressed_run: list[dict[str, Any]]) -> None:
    samples = of_type(stressed_run, "affect.sample")
    flags = [s["data"]["stress"]["calibrating"] for s in samples]
    assert flags[0] and flags[1]
    assert not flags[-1]
    assert flags == sorted(flags, reverse=True)  # calibration comes first, once
    # No spike events while calibrating.
    last_calib = max(s["data"]["offset_s"] for s in samples if s["data"]["stress"]["calibrating"])
    assert all(e["data"]["offset_s"] > last_calib for e in of_type(stressed_run, "stress.spike.started"))


def test_event_stream_shape(stressed_run: list[dict[str, Any]]) -> None:
    types = [e["type"] for e in stressed_run]
    assert types[0] == "call.joined" and types[-1] == "call.left"
    assert types.count("speaker.joined") == 1 and types.count("speaker.left") == 1
    assert "analyzer.degraded" in types  # the default hub model is not cached here
    ids = [e["id"] for e in stressed_run]
    assert len(set(ids)) == len(ids)
    left = of_type(stressed_run, "speaker.left")[0]["data"]
    assert left["spikes"] == len(of_type(stressed_run, "stress.spike.started"))
    assert 40 < left["speech_s"] < 84
    sample = of_type(stressed_run, "affect.sample")[5]["data"]
    assert sample["emotion"] is None and sample["arousal"] is None
    assert sample["window_end_s"] - sample["window_start_s"] == pytest.approx(4.0, abs=0.05)
    assert 0 <= sample["stress"]["index"] <= 1
    assert sample["prosody"]["f0_hz"] > 100


def test_calm_recording_gives_no_spike() -> None:
    proc = run_cli("analyze", str(CALM))
    assert proc.returncode == 0, proc.stderr
    evs = events(proc.stdout)
    assert len(of_type(evs, "affect.sample")) > 15
    assert not of_type(evs, "stress.spike.started")


@pytest.mark.parametrize(
    ("voice", "text"),
    [
        ("en-gb-x-rp", ["The weather report says it will be mild all week.",
                        "I think the garden could use a little more water.",
                        "We should visit the museum when it opens again.",
                        "My sister is coming over for dinner on Sunday."]),
        ("en-us+m3", ["Please remember to bring the documents tomorrow.",
                      "The train leaves a little after nine in the morning.",
                      "Our neighbours painted their fence a pale shade of green.",
                      "There is fresh bread in the kitchen if you are hungry."]),
    ],
)
def test_unseen_voices_and_texts(tmp_path: Path, voice: str, text: list[str]) -> None:
    require_tool("espeak-ng")
    require_tool("sox")
    text_file = tmp_path / "text.txt"
    text_file.write_text("\n".join(text))
    made = {}
    for mode in ("calm", "calm-then-stressed"):
        made[mode] = tmp_path / f"{mode}.flac"
        subprocess.run([sys.executable, str(FIXTURES / "make_speech.py"), mode, str(made[mode]),
                        "--voice", voice, "--text-file", str(text_file)], check=True)
    calm = run_cli("analyze", str(made["calm"]))
    assert calm.returncode == 0, calm.stderr
    assert not of_type(events(calm.stdout), "stress.spike.started")
    mixed = run_cli("analyze", str(made["calm-then-stressed"]))
    assert mixed.returncode == 0, mixed.stderr
    assert_spikes_only_after(events(mixed.stdout), duration(made["calm"]))


def _decode(path: Path) -> np.ndarray:
    from bridge.pipeline.audio import read_file

    return np.concatenate([c[0].samples for c in read_file(path)])


def test_per_channel_gives_one_speaker_per_channel(tmp_path: Path) -> None:
    left = _decode(CALM)
    right = _decode(CALM_THEN_STRESSED)
    stereo = np.zeros((len(right), 2), np.float32)
    stereo[: len(left), 0] = left
    stereo[:, 1] = right
    path = tmp_path / "two.wav"
    sf.write(path, stereo, SR, subtype="PCM_16")
    proc = run_cli("analyze", str(path), "--per", "channel")
    assert proc.returncode == 0, proc.stderr
    evs = events(proc.stdout)
    joined = {e["speaker"]["id"] for e in of_type(evs, "speaker.joined")}
    assert joined == {"two:ch0", "two:ch1"}
    spiking = {e["speaker"]["id"] for e in of_type(evs, "stress.spike.started")}
    assert spiking == {"two:ch1"}


def test_several_files_one_speaker_each_and_table(tmp_path: Path) -> None:
    proc = run_cli("analyze", str(CALM), str(CALM_THEN_STRESSED), "--format", "table",
                   "--report", str(tmp_path / "r.html"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["speaker", "speech"]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:]}
    assert rows["alice_calm"][4] == "0"
    assert int(rows["alice_calm_then_stressed"][4]) >= 1
    html = (tmp_path / "r.html").read_text()
    assert html.count("<svg") == 2 and 'class="spike"' in html and "<script" not in html
    assert "not a clinical measure" in html


def test_out_writes_events_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    proc = run_cli("analyze", str(CALM), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert of_type(events(out.read_text()), "affect.sample")
    assert "speaker" in proc.stderr  # the summary goes to stderr


def test_emotion_with_a_local_model(tmp_path: Path, tiny_emotion_model: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[emotion]\nmodel = "{tiny_emotion_model}"\ndevice = "cpu"\n')
    proc = run_cli("analyze", str(CALM), "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    evs = events(proc.stdout)
    assert not of_type(evs, "analyzer.degraded")
    samples = of_type(evs, "affect.sample")
    # The first estimate comes once 4 s of speech (emotion_chunk_s) have gathered; it stands
    # until the next one.
    has = [s["data"]["emotion"] is not None for s in samples]
    assert has.index(True) <= 3 and all(has[has.index(True):])
    first = samples[has.index(True)]["data"]
    assert set(first["emotion"]) == {"neutral", "happy", "angry", "sad"}
    assert sum(first["emotion"].values()) == pytest.approx(1.0, abs=1e-3)
    assert first["arousal"] is not None
    assert "emotion" in samples[-1]["data"]["stress"]["components"]


def test_emotion_unavailable_offline_is_one_event_and_one_log_line() -> None:
    proc = run_cli("analyze", str(CALM), env={"AFFECT_BRIDGE_EMOTION__MODEL": "nobody/not-cached"})
    assert proc.returncode == 0
    evs = events(proc.stdout)
    degraded = of_type(evs, "analyzer.degraded")
    assert len(degraded) == 1 and degraded[0]["data"]["analyzer"] == "emotion"
    assert "nobody/not-cached" in degraded[0]["data"]["reason"]
    log_lines = [ln for ln in proc.stderr.splitlines() if "emotion" in ln and "unavailable" in ln]
    assert len(log_lines) == 1
    assert of_type(evs, "affect.sample")  # prosody and stress carry on
    assert "Traceback" not in proc.stderr


# --- bad input -------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.wav").write_bytes(b"")
    assert_clean_error(run_cli("analyze", str(tmp_path / "empty.wav")))


def test_text_file(tmp_path: Path) -> None:
    (tmp_path / "notes.wav").write_text("this is not audio\n" * 50)
    assert_clean_error(run_cli("analyze", str(tmp_path / "notes.wav")))


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert_clean_error(run_cli("analyze", str(tmp_path / "nope.flac")))
    assert_clean_error(run_cli("analyze", str(tmp_path)))


def test_video_without_audio_stream(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height = 32, 32
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    assert_clean_error(run_cli("analyze", str(path)))


def test_files_without_any_audio_are_an_error_not_an_empty_result(tmp_path: Path) -> None:
    """A valid WAV with zero samples, and bytes FFmpeg probes as AAC but cannot decode: one line
    saying so, exit 2, before any analysis (they used to exit 0 with an empty result)."""
    empty = tmp_path / "zero.wav"
    sf.write(empty, np.zeros(0, np.float32), SR)
    proc = run_cli("analyze", str(empty))
    assert_clean_error(proc)
    assert "no audio in that file" in proc.stderr
    rng = np.random.default_rng(1)
    garbage = tmp_path / "garbage.aac"
    garbage.write_bytes(b"\xff\xf1\x50\x80\x02\x1f\xfc" + rng.bytes(20000))  # an ADTS header
    proc = run_cli("analyze", str(garbage))
    assert_clean_error(proc)
    assert proc.stdout == ""  # nothing was analysed


def test_short_file_gives_an_empty_result(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    sf.write(path, _decode(CALM)[int(2 * SR) : int(2.2 * SR)], SR)
    proc = run_cli("analyze", str(path))
    assert proc.returncode == 0, proc.stderr
    evs = events(proc.stdout)
    assert not of_type(evs, "affect.sample")
    assert of_type(evs, "speaker.left")[0]["data"]["speech_s"] < 0.3


def test_nan_and_inf_samples(tmp_path: Path) -> None:
    audio = _decode(CALM)[: 20 * SR].copy()
    audio[::7] = np.nan
    audio[3::11] = np.inf
    audio[5 * SR : 6 * SR] = -np.inf
    path = tmp_path / "garbage.wav"
    sf.write(path, audio, SR, subtype="FLOAT")
    proc = run_cli("analyze", str(path))
    assert proc.returncode == 0, proc.stderr
    evs = events(proc.stdout)
    for s in of_type(evs, "affect.sample"):
        assert 0 <= s["data"]["stress"]["index"] <= 1
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (48000, 2)])
def test_other_rates_and_layouts(tmp_path: Path, rate: int, channels: int) -> None:
    audio = _decode(CALM_THEN_STRESSED)
    resampled = np.interp(np.arange(int(len(audio) * rate / SR)) * SR / rate,
                          np.arange(len(audio)), audio).astype(np.float32)
    data = np.stack([resampled] * channels, axis=1) if channels > 1 else resampled
    path = tmp_path / f"speech_{rate}.wav"
    sf.write(path, data, rate, subtype="PCM_16")
    proc = run_cli("analyze", str(path))
    assert proc.returncode == 0, proc.stderr
    evs = events(proc.stdout)
    samples = of_type(evs, "affect.sample")
    assert samples[-1]["data"]["offset_s"] == pytest.approx(len(audio) / SR, abs=2.5)
    f0 = [s["data"]["prosody"]["f0_hz"] for s in samples[:10] if s["data"]["prosody"]["f0_hz"]]
    assert 150 < float(np.median(f0)) < 260
    assert_spikes_only_after(evs, duration(CALM))


def _peak_rss_mb(args: list[str]) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    return usage.ru_maxrss / 1024


def _silent_flac(path: Path, seconds: int) -> None:
    block = np.zeros(60 * SR, np.int16)
    with sf.SoundFile(path, "w", samplerate=SR, channels=1, subtype="PCM_16", format="FLAC") as f:
        for _ in range(seconds // 60):
            f.write(block)


@pytest.mark.slow
def test_two_hour_silent_file_without_memory_growth(tmp_path: Path) -> None:
    short, long = tmp_path / "one_minute.flac", tmp_path / "two_hours.flac"
    _silent_flac(short, 60)
    _silent_flac(long, 7200)
    base = _peak_rss_mb(["analyze", str(short), "--format", "table"])
    peak = _peak_rss_mb(["analyze", str(long), "--format", "table"])
    assert peak - base < 50, (base, peak)
    proc = run_cli("analyze", str(long))
    evs = events(proc.stdout)
    assert proc.returncode == 0
    assert not of_type(evs, "affect.sample")  # silence: a correct empty result
    assert of_type(evs, "call.left")[0]["data"]["offset_s"] == pytest.approx(7200, abs=1)


def test_debug_turns_on_this_projects_loggers_only() -> None:
    """--debug used to set the root logger to DEBUG: every library (numba's bytecode dumps
    among them) flooded the terminal."""
    import logging

    from bridge.logsafe import configure_logging

    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    try:
        configure_logging(True)
        assert logging.getLogger("bridge.live.calls").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("analyzers.emotion").isEnabledFor(logging.DEBUG)
        for library in ("numba.core.byteflow", "transformers", "aiohttp.client", "some.lib"):
            assert not logging.getLogger(library).isEnabledFor(logging.DEBUG), library
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        for name in ("affect-bridge", "bridge", "analyzers"):
            logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.mark.parametrize("analyzers", ['["prosody"]', '["prosody", "emotion"]'])
def test_without_the_emotion_model_torch_is_never_imported(tmp_path: Path,
                                                           analyzers: str) -> None:
    """Prosody alone needs no torch, nor does an emotion model whose weights are not here: such
    a run does not pay torch's import (about 1.5 CPU-s and 180 MB per process here)."""
    cfg = tmp_path / "analyzers.toml"
    cfg.write_text(f"analyzers = {analyzers}\n")
    code = ("import runpy, sys\n"
            "sys.argv = ['affect-bridge', 'analyze', '--format', 'table', '--config', "
            f"{str(cfg)!r}, {str(CALM)!r}]\n"
            "try:\n    runpy.run_module('bridge.cli', run_name='__main__')\n"
            "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                            "HF_HOME": str(tmp_path / "hf")})  # no weights
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "False False", proc.stdout[-500:]
