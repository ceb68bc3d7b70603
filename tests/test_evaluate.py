"""``affect-bridge evaluate`` on labelled recordings the tests lay out (the committed speech
fixtures, labelled by how make_speech.py made them), and on bad label files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.detection import Segment, auc, score_stress
from bridge.evaluate import LabelError, read_labels
from tests.conftest import CALM, CALM_THEN_STRESSED, STRESSED_FROM_S, run_cli

PROSODY_ONLY = 'analyzers = ["prosody"]\n'


def _layout(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    for src in (CALM, CALM_THEN_STRESSED):
        link = tmp_path / src.name
        if not link.exists():
            link.symlink_to(src)
    labels = tmp_path / name
    labels.write_text(text, encoding="utf-8")
    return labels


STRESS_LABELS = (
    "file,start_s,end_s,label\n"
    f"alice_calm_then_stressed.flac,0,{STRESSED_FROM_S},calm\n"
    f"alice_calm_then_stressed.flac,{STRESSED_FROM_S},80,stressed\n"
    "alice_calm.flac,0,45,calm\n"
)


def test_stress_labels_give_detection_delay_false_spikes_and_auc(tmp_path: Path) -> None:
    labels = _layout(tmp_path, STRESS_LABELS)
    cfg = tmp_path / "c.toml"
    cfg.write_text(PROSODY_ONLY)
    out = tmp_path / "figures.json"
    proc = run_cli("evaluate", str(labels), "--config", str(cfg), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["mode"] == "stress" and r["files"] == 2 and r["segments"] == 3
    assert r["stressed_segments"] == 1 and r["detected"] == 1 and r["detection_rate"] == 1.0
    assert 0 < r["median_delay_s"] < 35
    assert r["false_spikes"] == 0 and r["false_spikes_per_hour"] == 0
    assert r["calm_hours"] == pytest.approx((STRESSED_FROM_S + 45) / 3600, rel=1e-3)
    assert r["window_auc"] > 0.9
    assert r["windows"]["stressed"] > 10 and r["windows"]["calm"] > 10
    # The table says the same.
    assert "detected  1 of 1 (100%)" in proc.stdout
    assert "window-level ROC AUC" in proc.stdout


def test_tsv_without_header_and_json_output(tmp_path: Path) -> None:
    labels = _layout(tmp_path, STRESS_LABELS.split("\n", 1)[1].replace(",", "\t"), "l.tsv")
    cfg = tmp_path / "c.toml"
    cfg.write_text(PROSODY_ONLY)
    proc = run_cli("evaluate", str(labels), "--config", str(cfg), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["detected"] == 1 and r["false_spikes"] == 0


def test_emotion_labels_give_uar_and_a_confusion_matrix(tmp_path: Path,
                                                        tiny_emotion_model: Path) -> None:
    labels = _layout(tmp_path, "alice_calm.flac,0,20,neutral\nalice_calm.flac,20,45,happy\n"
                               "alice_calm_then_stressed.flac,50,80,angry\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[emotion]\nmodel = "{tiny_emotion_model}"\ndevice = "cpu"\n')
    proc = run_cli("evaluate", str(labels), "--config", str(cfg), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["mode"] == "emotion"
    matrix = r["confusion"]
    assert set(matrix) == {"neutral", "happy", "angry"}
    assert sum(sum(row.values()) for row in matrix.values()) == 3
    assert 0.0 <= r["uar"] <= 1.0
    assert r["uar"] == pytest.approx(sum(r["recall"].values()) / 3, abs=1e-3)  # both rounded


def test_emotion_labels_without_the_model_are_a_clear_error(tmp_path: Path) -> None:
    labels = _layout(tmp_path, "alice_calm.flac,0,20,neutral\n")
    proc = run_cli("evaluate", str(labels), env={"AFFECT_BRIDGE_EMOTION__MODEL": "nobody/none"})
    assert proc.returncode == 2
    assert "emotion labels need the emotion model" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("text", "message"), [
    ("file,start_s,end_s,label\nalice_calm.flac,0,10\n", "row 2: expected 4 columns"),
    ("alice_calm.flac,zero,10,calm\n", "row 1: start_s and end_s must be numbers"),
    ("alice_calm.flac,10,5,calm\n", "row 1: needs 0 <= start_s < end_s"),
    ("alice_calm.flac,-1,5,calm\n", "row 1: needs 0 <= start_s < end_s"),
    ("alice_calm.flac,0,nan,calm\n", "row 1: needs 0 <= start_s < end_s"),
    ("alice_calm.flac,0,5,calm\nnowhere.flac,0,5,calm\n", "row 2: 'nowhere.flac' does not exist"),
    ("alice_calm.flac,0,5,calm\nalice_calm.flac,0,5,stressed\nalice_calm.flac,5,9,bored\n",
     "row 3: unknown label 'bored'"),
    ("alice_calm.flac,0,5,happy\nalice_calm.flac,5,9,stressed\n", "row 2: label 'stressed'"),
    ("alice_calm.flac,0,10,calm\nalice_calm.flac,8,20,stressed\n", "row 2: overlaps row 1"),
    (",0,10,calm\n", "row 1: the file column is empty"),
    ("# only a comment\n\n", "no labelled rows"),
])
def test_bad_label_files_name_the_row(tmp_path: Path, text: str, message: str) -> None:
    labels = _layout(tmp_path, text)
    with pytest.raises(LabelError, match=message.replace("(", r"\(")):
        read_labels(labels)


def test_bad_labels_exit_2_before_any_analysis(tmp_path: Path) -> None:
    labels = _layout(tmp_path, "alice_calm.flac,0,5,calm\nalice_calm.flac,x,9,calm\n")
    proc = run_cli("evaluate", str(labels))
    assert proc.returncode == 2
    assert "labels.csv row 2" in proc.stderr and "Traceback" not in proc.stderr
    missing = run_cli("evaluate", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_score_stress_conventions() -> None:
    segs = [Segment(0, 60, False), Segment(60, 120, True), Segment(120, 180, False)]
    out = score_stress(segs, [30.0, 70.0, 75.0, 150.0],
                       [(10, 0.0, True), (30, 0.1, False), (90, 0.9, False), (150, 0.2, False)])
    assert out.detected == [True] and out.delays_s == [10.0]
    assert out.false_spikes == 2 and out.calm_s == 120
    assert out.calm_index == [0.1, 0.2] and out.stressed_index == [0.9]  # calibration left out
    assert auc([0.1, 0.2], [0.9]) == 1.0
    assert auc([0.5, 0.5], [0.5]) == 0.5
    assert auc([], [1.0]) != auc([], [1.0])  # NaN when a side is empty
