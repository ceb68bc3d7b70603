"""``affect-bridge models check MODEL``: what a checkpoint is, and its refusals, from the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import TINY_ENCODER, build_tiny_whisper_classifier, run_cli


def _check(*args: str) -> tuple[int, str, str]:
    proc = run_cli("models", "check", *args)
    return proc.returncode, proc.stdout, proc.stderr


def test_a_dimensional_model_is_described_with_its_precision_and_speed(
        tiny_dimensional_model: Path) -> None:
    code, out, err = _check(str(tiny_dimensional_model), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["family"] == "dimensional" and report["inputs"] == "input_values"
    assert report["outputs"]["dimensions"] == ["arousal", "dominance", "valence"]
    assert report["head_weights"] and all(report["head_weights"].values())
    assert report["parameters"] > 10_000 and report["refused"] is None
    assert report["precision"] in ("fp32", "bf16", "bf16+matmul", "int8")
    assert report["audio_s_per_s"] > 0 and report["processor"]


def test_the_table_names_labels_with_their_canonical_names(tmp_path: Path) -> None:
    path = build_tiny_whisper_classifier(tmp_path / "whisper", labels=("ang", "neu", "joy"))
    code, out, err = _check(str(path))
    assert code == 0, err
    assert "WhisperForAudioClassification" in out and "input_features" in out
    assert "ang -> angry" in out and "joy -> happy" in out
    assert "4 of 4 present" in out and "audio-seconds per second" in out


def test_a_refused_checkpoint_exits_2_with_the_reason(
        tiny_dimensional_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "m"
    shutil.copytree(tiny_dimensional_model, path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["Wav2Vec2ForSequenceClassification"]
    (path / "config.json").write_text(json.dumps(cfg))
    code, out, _ = _check(str(path))
    assert code == 2
    assert "0 of 4 present" in out and "projector.weight" in out
    assert "refused" in out and "initialised at random" in out
    assert "precision" not in out  # nothing is loaded or measured


def test_a_bare_encoder_and_remote_code_are_refused(tmp_path: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    Wav2Vec2Model(Wav2Vec2Config(**TINY_ENCODER)).save_pretrained(tmp_path / "bare")
    code, out, _ = _check(str(tmp_path / "bare"), "--json")
    assert code == 2 and "bare encoder" in json.loads(out)["refused"]
    cfg = json.loads((tmp_path / "bare" / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForAudioClassification": "modeling_x.X"}
    (tmp_path / "bare" / "config.json").write_text(json.dumps(cfg))
    code, out, _ = _check(str(tmp_path / "bare"))
    assert code == 2 and "trust_remote_code" in out


def test_a_model_that_is_not_there_exits_2(tmp_path: Path) -> None:
    code, _, err = _check("nobody/not-cached")
    assert code == 2 and "not in the local model cache" in err
    code, _, err = _check(str(tmp_path / "missing-dir"))
    assert code == 2 and "missing-dir" in err
