from pathlib import Path

import pytest

from analyzers.emotion import EmotionConfig
from analyzers.prosody import ProsodyConfig
from analyzers.semantic import SemanticConfig
from analyzers.stress import StressConfig
from analyzers.vad import VadConfig
from analyzers.windowing import WindowConfig
from bridge.config import ConfigError, load_settings, read_secret
from tests.conftest import CALM, run_cli


def test_defaults() -> None:
    s = load_settings()
    assert s.listen == "127.0.0.1:9464"
    assert s.analyzers == ["prosody", "emotion"]
    assert s.emotion.model == "superb/wav2vec2-base-superb-er"
    assert s.stress.on == 0.6 and s.stress.off == 0.3
    # The analyzers' own config types are the sections: one definition of every default.
    assert (s.vad, s.windowing, s.prosody, s.emotion, s.semantic, s.stress) == (
        VadConfig(), WindowConfig(), ProsodyConfig(), EmotionConfig(), SemanticConfig(),
        StressConfig())


def test_toml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('analyzers = ["prosody"]\n[stress]\non = 0.7\noff = 0.5\n[vad]\naggressiveness = 3\n')
    s = load_settings(cfg)
    assert s.analyzers == ["prosody"] and s.stress.on == 0.7 and s.vad.aggressiveness == 3
    monkeypatch.setenv("AFFECT_BRIDGE_STRESS__ON", "0.8")
    monkeypatch.setenv("AFFECT_BRIDGE_EMOTION__MODEL", "/models/er")
    s = load_settings(cfg)
    assert s.stress.on == 0.8 and s.stress.off == 0.5 and s.emotion.model == "/models/er"
    monkeypatch.setenv("AFFECT_BRIDGE_VAD__ENGINE", "webrtc")
    monkeypatch.setenv("AFFECT_BRIDGE_STRESS__WEIGHTS", '{"f0": 0.5}')
    monkeypatch.setenv("AFFECT_BRIDGE_EMOTION__DIMENSION_RANGE", "[-1, 1]")
    s = load_settings(cfg)
    assert s.vad.engine == "webrtc" and s.vad.aggressiveness == 3
    assert s.stress.weights == {"f0": 0.5} and s.emotion.dimension_range == (-1.0, 1.0)
    monkeypatch.setenv("AFFECT_BRIDGE_VAD__FRAME_MS", "32")  # webrtc's are 10, 20 or 30
    with pytest.raises(ConfigError, match=r"vad\.frame_ms: .*webrtc frames are 10, 20 or 30 ms"):
        load_settings(cfg)


def test_settings_survive_the_trip_to_a_worker() -> None:
    """A worker process gets the settings as JSON (bridge/workers/pool.py) and loads them."""
    s = load_settings(None, vad={"engine": "webrtc", "frame_ms": 20}, emotion={
        "dimension_range": [0, 2]}, stress={"weights": {"f0": 0.5}})
    back = load_settings(None, **s.model_dump(mode="json"))
    assert (back.vad, back.emotion, back.stress) == (s.vad, s.emotion, s.stress)
    assert back.model_dump() == s.model_dump()
    assert s.analyzer_options()["emotion"]["dimension_range"] == (0.0, 2.0)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[vad]\naggressiveness = 7\n", "vad.aggressiveness"),
        ("[stress]\non = 0.3\noff = 0.5\n", "off < on"),
        ("[windowing]\nhop_s = 5\nwindow_s = 4\n", "hop_s"),
        ("unknown_key = 1\n", "unknown_key"),
        ("[emotion]\nmodle = 'x'\n", "emotion.modle"),
        ("[stress.weights]\npitch = 1.0\n", "pitch"),
        ("this is = not toml [", "not valid TOML"),
        # every window's prosody would fail: no pitch range left
        ("[prosody]\nfmin_hz = 300\nfmax_hz = 200\n", "fmax_hz (200) must be at least"),
        # a typo in a webhook's event filter would mean silence
        ("[[webhooks]]\nurl = 'http://127.0.0.1:9/h'\nevents = ['stress.spikes.*']\n",
         "'stress.spikes.*' matches no event type"),
        ("[emotion]\ndevice = 'gpu'\n", "emotion.device"),
        ("[emotion]\ndimension_range = [1, 0]\n", "emotion.dimension_range: Value error, must be"),
        ("[stress.floors]\nf0 = 0\n", "stress.floors.f0: Input should be greater than 0"),
        ("[vad]\nengine = 'rnnoise'\n", "vad.engine"),
        ("[semantic]\nnum_beams = 0\n", "semantic.num_beams"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert needle in str(info.value)


def test_a_secret_file_wins_over_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    from bridge.service import api_token

    monkeypatch.setenv("AB_TEST_SECRET", " from-env ")
    monkeypatch.delenv("AB_TEST_UNSET", raising=False)
    secret = tmp_path / "secret"
    secret.write_text("\nfrom-file \n\n")
    assert read_secret("AB_TEST_SECRET", None, "test secret") == "from-env"
    assert read_secret("AB_TEST_SECRET", secret, "test secret") == "from-file"
    secret.write_text("from-file\nsecond line\n")  # refused: never silently cut short
    with pytest.raises(ConfigError, match=r"test secret: file .* more than one line") as info:
        read_secret("AB_TEST_SECRET", secret, "test secret")
    assert "from-file" not in str(info.value) and "second" not in str(info.value)
    assert read_secret("AB_TEST_UNSET", None, "test secret") is None
    secret.write_text(" \n")
    with pytest.raises(ConfigError, match=r"test secret: file .* is empty"):
        read_secret("AB_TEST_SECRET", secret, "test secret")
    # The control API's token is read the same way.
    monkeypatch.delenv("AFFECT_BRIDGE_API_TOKEN_FILE", raising=False)
    monkeypatch.setenv("AFFECT_BRIDGE_API_TOKEN", "env-token")
    assert api_token() == "env-token"
    secret.write_text("file-token\n")
    monkeypatch.setenv("AFFECT_BRIDGE_API_TOKEN_FILE", str(secret))
    assert api_token() == "file-token"
    monkeypatch.setenv("AFFECT_BRIDGE_API_TOKEN_FILE", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"AFFECT_BRIDGE_API_TOKEN_FILE: file .* is unreadable"
                       ) as info:
        api_token()
    assert "env-token" not in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_cli_reports_bad_config_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[vad]\nframe_ms = 25\n")
    proc = run_cli("analyze", str(CALM), "--config", str(cfg))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "vad.frame_ms" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_unknown_analyzer_fails_at_start(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('analyzers = ["prosody", "telepathy"]\n')
    proc = run_cli("analyze", str(CALM), "--config", str(cfg))
    assert proc.returncode == 2
    assert "unknown analyzer 'telepathy'" in proc.stderr and "prosody" in proc.stderr


def test_log_level_from_config(tmp_path: Path) -> None:
    import soundfile as sf

    clip = tmp_path / "clip.flac"  # 3 s of the calm fixture: the warning comes at load
    audio, rate = sf.read(CALM, frames=3 * 16000, dtype="float32")
    sf.write(clip, audio, rate)
    cfg = tmp_path / "quiet.toml"
    cfg.write_text('log_level = "ERROR"\n')
    quiet = run_cli("analyze", str(clip), "--format", "table", "--config", str(cfg))
    loud = run_cli("analyze", str(clip), "--format", "table")
    assert quiet.returncode == loud.returncode == 0
    assert "WARNING" in loud.stderr and "WARNING" not in quiet.stderr
    cfg.write_text('log_level = "CHATTY"\n')
    assert run_cli("analyze", str(clip), "--config", str(cfg)).returncode == 2


async def test_the_demo_writes_nothing_into_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No webhook: no outbox at all. A webhook without a configured outbox path: the outbox
    goes to the user's state directory, not the working directory."""
    from bridge.control.runtime import Runtime
    from bridge.demo.run import _demo_outbox

    cwd, state = tmp_path / "cwd", tmp_path / "state"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.setenv("AFFECT_BRIDGE_WEBHOOK_SECRET", "whsec_" + "QUJD" * 8)
    plain = _demo_outbox(load_settings(None, analyzers=["prosody"]))
    runtime = Runtime.build(plain)
    await runtime.start()
    await runtime.aclose()
    assert runtime.webhooks is None and list(cwd.iterdir()) == []
    hooked = _demo_outbox(load_settings(None, analyzers=["prosody"],
                                        webhooks=[{"url": "http://127.0.0.1:9/hook"}]))
    assert hooked.outbox.path == state / "affect-bridge" / "demo-outbox.sqlite3"
    runtime = Runtime.build(hooked)
    await runtime.start()
    await runtime.aclose()
    assert list(cwd.iterdir()) == [] and hooked.outbox.path.exists()
    chosen = tmp_path / "mine.sqlite3"
    assert _demo_outbox(load_settings(None, webhooks=[{"url": "http://127.0.0.1:9/hook"}],
                                      outbox={"path": str(chosen)})).outbox.path == chosen


async def test_a_gpu_that_torch_cannot_see_degrades_emotion_only(tiny_emotion_model: Path) -> None:
    """emotion.device = "cuda:N" for a GPU torch does not have (any CPU-only machine): start-up
    goes on, emotion reports itself unavailable saying why, prosody runs."""
    from bridge.pipeline.analysis import AnalysisEngine

    engine = AnalysisEngine(load_settings(None, analyzers=["prosody", "emotion"], emotion={
        "model": str(tiny_emotion_model), "device": "cuda:99"}))
    await engine.start()
    try:
        assert engine.has("prosody") and not engine.has("emotion")
        assert "cuda:99" in engine.degraded["emotion"] and "GPU" in engine.degraded["emotion"]
    finally:
        await engine.aclose()
