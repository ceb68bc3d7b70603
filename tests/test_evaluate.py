"""``affect-bridge evaluate`` on labelled recordings the tests lay out (the committed speech
fixtures, labelled by how make_speech.py made them), and on bad label files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bridge.config import Settings
from bridge.offline.detection import Segment, auc, score_stress
from bridge.offline.evaluate import (
    Estimate,
    LabelError,
    ccc,
    evaluate,
    format_report,
    pearson,
    read_labels,
    score_dimensions,
    to_unit,
)
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


# Dimensional labels: arousal / valence / dominance, scored by CCC.

def test_ccc_and_pearson_against_hand_computed_values() -> None:
    x = [1.0, 2.0, 3.0, 4.0]
    assert ccc(x, x) == pytest.approx(1.0) and pearson(x, x) == pytest.approx(1.0)
    # Shifted by 1: var 1.25 each, cov 1.25, bias^2 1 -> 2.5 / 3.5; r is blind to the shift.
    shifted = [v + 1 for v in x]
    assert ccc(x, shifted) == pytest.approx(2.5 / 3.5) and pearson(x, shifted) == pytest.approx(1)
    # Scaled by 2: var 1.25 and 5, cov 2.5, bias^2 6.25 -> 5 / 12.5 = 0.4.
    scaled = [2 * v for v in x]
    assert ccc(x, scaled) == pytest.approx(0.4) and pearson(x, scaled) == pytest.approx(1)
    # Imperfect and shifted: var 2/3 each, cov 1/3 -> r 0.5; bias^2 1 -> (2/3) / (7/3) = 2/7.
    assert pearson([1, 2, 3], [2, 1, 3]) == pytest.approx(0.5)
    assert ccc([1, 2, 3], [2, 1, 3]) == pytest.approx(0.5)
    assert ccc([1, 2, 3], [3, 2, 4]) == pytest.approx(2 / 7)
    assert ccc([1, 2, 3], [3, 2, 4]) < pearson([1, 2, 3], [3, 2, 4])
    # Reversed about another mean: cov -2/3, bias^2 16 -> (-4/3) / (4/3 + 16) = -1/13.
    assert ccc([1, 2, 3], [-1, -2, -3]) == pytest.approx(-1 / 13)
    assert pearson([1, 2, 3], [-1, -2, -3]) == pytest.approx(-1)
    # Undefined cases are NaN; a constant prediction has CCC 0 but no r.
    assert math.isnan(ccc([1.0], [1.0])) and math.isnan(pearson([1.0], [2.0]))
    assert ccc([1, 2, 3], [0, 0, 0]) == 0 and math.isnan(pearson([1, 2, 3], [0, 0, 0]))
    assert math.isnan(ccc([0.5, 0.5], [0.5, 0.5]))


def test_dimensional_header_empty_cells_and_the_label_range(tmp_path: Path) -> None:
    labels = _layout(tmp_path, "# ratings 1..7\nfile,start_s,end_s,valence,Arousal\n"
                               "alice_calm.flac,0,10,1,4\nalice_calm.flac,10,20,,7\n"
                               "alice_calm.flac,20,30,5.5,\n")
    got = read_labels(labels, (1, 7))
    assert got.mode == "dimensional" and got.dimensions == ("valence", "arousal")
    assert got.label_range == (1, 7)
    assert [r.values for r in got.rows] == [{"valence": -1.0, "arousal": 0.0}, {"arousal": 1.0},
                                            {"valence": 0.5}]
    assert [r.row for r in got.rows] == [3, 4, 5]
    assert to_unit(0.25, 0, 1) == -0.5 and to_unit(0.3, -1, 1) == pytest.approx(0.3)
    tsv = _layout(tmp_path, "file\tstart_s\tend_s\tdominance\nalice_calm.flac\t0\t5\t-0.5\n",
                  "d.tsv")
    assert read_labels(tsv).rows[0].values == {"dominance": -0.5}  # default range -1..1


@pytest.mark.parametrize(("text", "label_range", "message"), [
    ("file,start_s,end_s,arousal\nalice_calm.flac,0,5,high\n", None,
     "row 2: arousal must be a number or empty, got 'high'"),
    ("file,start_s,end_s,arousal,valence,arousal\n", None, "row 1: column 'arousal' appears twice"),
    ("file,start_s,end_s,arousal,mood\n", None, "row 1: unknown column 'mood'"),
    ("file,start_s,end_s,label,valence\n", None, "row 1: unknown column 'label'"),
    ("file,start_s,end_s\n", None, "row 1: the header names no label column"),
    ("file,start_s,end_s,valence\nalice_calm.flac,0,5,0.2\nalice_calm.flac,5,9,1.5\n", None,
     "row 3: valence 1.5 is outside the label range -1..1"),
    ("file,start_s,end_s,valence\nalice_calm.flac,0,5,0\n", (1, 7),
     "row 2: valence 0 is outside the label range 1..7"),
    ("file,start_s,end_s,valence\nalice_calm.flac,0,5,nan\n", None, "row 2: valence nan is outside"),
    ("file,start_s,end_s,arousal,valence\nalice_calm.flac,0,5,0.1\n", None,
     "row 2: expected 5 columns (file, start_s, end_s, arousal, valence), got 4"),
    ("file,start_s,end_s,arousal,valence\nalice_calm.flac,0,5,,\n", None,
     "row 2: no value for any of arousal, valence"),
    ("file,start_s,end_s,arousal\nalice_calm.flac,0,5,0\nalice_calm.flac,4,9,0\n", None,
     "row 3: overlaps row 2"),
    ("alice_calm.flac,0,5,0.4\n", None, "row 1: unknown label '0.4'.*need a header naming"),
    ("file,start_s,end_s,arousal\nalice_calm.flac,0,5,3\n", (7, 1), "LOW < HIGH, got 7 1"),
    ("file,start_s,end_s,arousal\nalice_calm.flac,0,5,3\n", (math.nan, 1), "LOW < HIGH"),
    ("alice_calm.flac,0,5,calm\n", (1, 7), "a label range applies to dimensional labels only"),
])
def test_bad_dimensional_label_files(tmp_path: Path, text: str,
                                     label_range: tuple[float, float] | None,
                                     message: str) -> None:
    labels = _layout(tmp_path, text)
    with pytest.raises(LabelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_labels(labels, label_range)


def test_segment_predictions_are_window_means_and_gaps_are_counted(tmp_path: Path) -> None:
    labels = read_labels(_layout(tmp_path, "file,start_s,end_s,arousal,valence,dominance\n"
                                           "alice_calm.flac,0,10,-0.5,0.5,\n"
                                           "alice_calm.flac,10,20,0.5,,0\n"
                                           "alice_calm.flac,20,30,0,0,0\n"
                                           "alice_calm.flac,40,45,1,-1,1\n"))
    path = labels.rows[0].path
    estimates = {path: [
        Estimate(2.0, {"arousal": -0.2, "valence": 0.4, "dominance": 0.1}, "model"),
        Estimate(9.9, {"arousal": 0.0, "valence": 0.2}, "model"),  # no dominance: ignored for it
        Estimate(10.0, {"arousal": 0.6, "dominance": 0.3}, "model"),  # [start, end): segment 2
        Estimate(25.0, {"arousal": 0.1, "valence": -0.1, "dominance": 0.0}, "model"),
        Estimate(35.0, {"arousal": 0.9, "valence": 0.9, "dominance": 0.9}, "model"),  # unlabelled
    ]}  # nothing in 40..45: counted as no prediction
    r = score_dimensions(labels, estimates)
    a, v, d = (r["dimensions"][k] for k in ("arousal", "valence", "dominance"))
    assert (a["labelled"], a["n"], a["no_prediction"]) == (4, 3, 1)
    assert a["ccc"] == pytest.approx(round(ccc([-0.5, 0.5, 0.0], [-0.1, 0.6, 0.1]), 4))
    assert a["pearson"] == pytest.approx(round(pearson([-0.5, 0.5, 0.0], [-0.1, 0.6, 0.1]), 4))
    assert a["mean_prediction"] == pytest.approx(0.2) and a["source"] == "model"
    assert (v["labelled"], v["n"]) == (3, 2)
    assert v["ccc"] == pytest.approx(round(ccc([0.5, 0.0], [0.3, -0.1]), 4))
    assert (d["labelled"], d["n"]) == (3, 2)  # segment 1's only dominance is at 2.0: 0.1
    assert d["mean_prediction"] == pytest.approx(0.15) and d["mean_label"] == pytest.approx(0)
    assert r["label_range"] == [-1.0, 1.0]
    assert any(w.startswith("arousal: 1 of 4 labelled segments had no prediction")
               for w in r["warnings"])
    table = format_report({"mode": "dimensional", "labels": "l.csv", "files": 1, "segments": 4,
                           **r})
    assert "dimensional labels" in table and "CCC" in table and "Pearson r" in table
    assert "note: arousal: 1 of 4" in table


def test_a_categorical_model_is_marked_and_cannot_give_dominance(tmp_path: Path) -> None:
    labels = read_labels(_layout(tmp_path, "file,start_s,end_s,arousal,dominance\n"
                                           "alice_calm.flac,0,10,0.2,0.1\n"
                                           "alice_calm.flac,10,20,-0.2,0.3\n"))
    path = labels.rows[0].path
    categorical = {path: [Estimate(5.0, {"arousal": 0.3, "valence": 0.1}, "labels"),
                          Estimate(15.0, {"arousal": -0.1, "valence": 0.0}, "labels")]}
    r = score_dimensions(labels, categorical)
    assert r["dimensions"]["arousal"]["source"] == "labels"
    assert r["dimensions"]["arousal"]["n"] == 2 and r["dimensions"]["arousal"]["ccc"] is not None
    dominance = r["dimensions"]["dominance"]
    assert dominance == {"ccc": None, "pearson": None, "n": 0, "labelled": 2, "no_prediction": 2,
                         "source": None, "mean_label": None, "mean_prediction": None}
    assert r["warnings"][0].startswith("arousal: source labels") and "circumplex" in r["warnings"][0]
    assert any("dominance: the emotion model gives none" in w for w in r["warnings"])
    table = format_report({"mode": "dimensional", "labels": "l.csv", "files": 1, "segments": 2,
                           **r})
    assert "labels" in table.splitlines()[2] and "note: arousal: source labels" in table
    only_dominance = read_labels(_layout(tmp_path, "file,start_s,end_s,dominance\n"
                                                   "alice_calm.flac,0,10,0.2\n", "dom.csv"))
    with pytest.raises(LabelError, match="need a dimensional model that predicts them"):
        score_dimensions(only_dominance, categorical)
    with pytest.raises(LabelError, match="made no arousal/valence estimate"):
        score_dimensions(only_dominance, {path: []})


async def test_dimensional_labels_without_the_emotion_analyzer_fail_before_analysis(
        tmp_path: Path) -> None:
    labels = read_labels(_layout(tmp_path, "file,start_s,end_s,valence\nalice_calm.flac,0,5,0\n"))
    with pytest.raises(LabelError, match="not configured"):
        await evaluate(labels, Settings(analyzers=["prosody"]))


def test_dimensional_labels_end_to_end(tmp_path: Path, tiny_dimensional_model: Path) -> None:
    labels = _layout(tmp_path, "file,start_s,end_s,arousal,valence,dominance\n"
                               "alice_calm.flac,0,15,2,5,\n"
                               "alice_calm.flac,15,30,3,4,4\n"
                               "alice_calm.flac,30,45,,6,5\n")
    cfg = tmp_path / "c.toml"
    # fp32 pinned: a measured choice may pick bf16 on a busy machine, whose coarser outputs can
    # leave the tiny model's predictions constant across segments (Pearson r then undefined).
    cfg.write_text(f'analyzers = ["prosody", "emotion"]\n[emotion]\n'
                   f'model = "{tiny_dimensional_model}"\ndevice = "cpu"\nprecision = "fp32"\n')
    out = tmp_path / "figures.json"
    proc = run_cli("evaluate", str(labels), "--config", str(cfg), "--label-range", "1", "7",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["mode"] == "dimensional" and r["segments"] == 3 and r["label_range"] == [1, 7]
    assert list(r["dimensions"]) == ["arousal", "valence", "dominance"]
    for dim, labelled in (("arousal", 2), ("valence", 3), ("dominance", 2)):
        m = r["dimensions"][dim]
        assert m["n"] == labelled and m["no_prediction"] == 0 and m["source"] == "model"
        assert -1 <= m["ccc"] <= 1 and -1 <= m["pearson"] <= 1
        assert abs(m["ccc"]) <= abs(m["pearson"]) + 1e-4
    assert r["warnings"] == []
    assert "range 1..7 mapped onto -1..1" in proc.stdout
    assert proc.stdout.splitlines()[2].split()[0] == "arousal"


def test_a_bad_label_range_exits_2_before_any_analysis(tmp_path: Path) -> None:
    labels = _layout(tmp_path, "file,start_s,end_s,arousal\nalice_calm.flac,0,5,3\n")
    proc = run_cli("evaluate", str(labels), "--label-range", "7", "1")
    assert proc.returncode == 2
    assert "LOW < HIGH" in proc.stderr and "Traceback" not in proc.stderr
