"""``affect-bridge evaluate``: the detector measured on a user's own labelled recordings.

Labels are a CSV or TSV with the columns ``file, start_s, end_s, label`` (a header row with those
names is optional; paths are relative to the labels file). Either every label is ``calm`` or
``stressed`` (stress mode: detection rate, delay, false spikes per hour, window-level ROC AUC; see
:mod:`bridge.detection`), or every label is an emotion (emotion mode: unweighted average recall
and the confusion matrix of the segment's dominant predicted emotion; needs the emotion model).
Each file is analysed as ``analyze`` does (mixed to mono, one speaker) with the same settings.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analyzers.emotion import CANONICAL, canonical_label
from bridge import events as ev
from bridge.analyze import analyze_files, plan_sources
from bridge.config import Settings
from bridge.detection import Segment, auc, percentile, score_stress

__all__ = ["LabelError", "Labelled", "Labels", "evaluate", "format_report", "read_labels"]

COLUMNS = ("file", "start_s", "end_s", "label")
STRESS_LABELS = {"calm", "stressed"}


class LabelError(ValueError):
    """A labels file that cannot be used; the message names the row."""


@dataclass(frozen=True, slots=True)
class Labelled:
    path: Path
    start_s: float
    end_s: float
    label: str
    row: int


@dataclass(frozen=True, slots=True)
class Labels:
    """A checked labels file: its mode ("stress" or "emotion") and rows."""

    path: Path
    mode: str
    rows: list[Labelled]


def read_labels(path: Path) -> Labels:
    """Parse and check the labels file (raises :class:`LabelError` naming the bad row)."""
    if not path.is_file():
        raise LabelError(f"labels file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise LabelError(f"{path}: not a UTF-8 text file") from None
    first = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first or path.suffix.lower() == ".tsv" else ","
    rows: list[Labelled] = []
    for n, cells in enumerate(csv.reader(io.StringIO(text), delimiter=delimiter), start=1):
        cells = [c.strip() for c in cells]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if n == 1 and [c.lower() for c in cells] == list(COLUMNS):
            continue
        where = f"{path.name} row {n}"
        if len(cells) != 4:
            raise LabelError(f"{where}: expected 4 columns ({', '.join(COLUMNS)}), got {len(cells)}")
        name, start, end, label = cells
        try:
            start_s, end_s = float(start), float(end)
        except ValueError:
            raise LabelError(f"{where}: start_s and end_s must be numbers, got "
                             f"{start!r} and {end!r}") from None
        if not (math.isfinite(start_s) and math.isfinite(end_s)) or start_s < 0 or end_s <= start_s:
            raise LabelError(f"{where}: needs 0 <= start_s < end_s, got {start_s:g} .. {end_s:g}")
        if not name:
            raise LabelError(f"{where}: the file column is empty")
        file = (path.parent / name) if not Path(name).is_absolute() else Path(name)
        if not file.is_file():
            raise LabelError(f"{where}: {name!r} does not exist (paths are relative to "
                             f"{path.parent})")
        rows.append(Labelled(file, start_s, end_s, label.lower(), n))
    if not rows:
        raise LabelError(f"{path}: no labelled rows")
    known = ", ".join(sorted(STRESS_LABELS | (set(CANONICAL) - {"other"})))
    for r in rows:
        if r.label not in STRESS_LABELS and canonical_label(r.label) == "other":
            raise LabelError(f"{path.name} row {r.row}: unknown label {r.label!r} (use calm and "
                             f"stressed, or emotions: {known})")
    mode = "stress" if {r.label for r in rows} <= STRESS_LABELS else "emotion"
    if mode == "emotion":
        for r in rows:
            if r.label == "stressed":
                raise LabelError(f"{path.name} row {r.row}: label 'stressed' cannot be mixed "
                                 f"with emotion labels (one kind per file)")
    by_file: dict[Path, list[Labelled]] = defaultdict(list)
    for r in rows:
        by_file[r.path].append(r)
    for segs in by_file.values():
        segs.sort(key=lambda r: r.start_s)
        for a, b in itertools.pairwise(segs):
            if b.start_s < a.end_s:
                raise LabelError(f"{path.name} row {b.row}: overlaps row {a.row} of the same file")
    return Labels(path, mode, rows)


@dataclass
class _Collected:
    samples: list[tuple[float, float, bool]] = field(default_factory=list)
    emotions: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    spike_starts: list[float] = field(default_factory=list)


async def evaluate(labels: Labels, settings: Settings,
                   registry: dict[str, type] | None = None) -> dict[str, Any]:
    """Analyse every labelled file and measure; the result is JSON-ready."""
    mode, rows = labels.mode, labels.rows
    files = list(dict.fromkeys(r.path for r in rows))
    sources = {s.speaker_id: s.path for s in plan_sources(files, "file")}
    got: dict[Path, _Collected] = {f: _Collected() for f in files}

    def on_event(event: Any) -> None:
        if event.speaker is None or event.speaker.id not in sources:
            return
        c = got[sources[event.speaker.id]]
        d = event.data
        if isinstance(event, ev.AffectSample):
            c.samples.append((d.offset_s, d.stress.index, d.stress.calibrating))
            if d.emotion:
                c.emotions.append((d.offset_s, d.emotion))
        elif isinstance(event, ev.SpikeStarted):
            c.spike_starts.append(d.offset_s)

    result = await analyze_files(files, settings, on_event=on_event, registry=registry)
    errors = [s.error for s in result.speakers if s.error]
    if errors:
        raise LabelError("; ".join(errors))
    out: dict[str, Any] = {"mode": mode, "labels": str(labels.path), "files": len(files),
                           "segments": len(rows)}
    if mode == "stress":
        out.update(_stress(rows, got))
    else:
        if "emotion" in result.degraded or not any(c.emotions for c in got.values()):
            reason = result.degraded.get("emotion", "no emotion estimates were made")
            raise LabelError(f"emotion labels need the emotion model, which is unavailable: "
                             f"{reason}")
        out.update(_emotion(rows, got))
    return out


def _stress(rows: list[Labelled], got: dict[Path, _Collected]) -> dict[str, Any]:
    detected: list[bool] = []
    delays: list[float] = []
    false = 0
    calm_s = 0.0
    calm_index: list[float] = []
    stressed_index: list[float] = []
    for path, c in got.items():
        segs = [Segment(r.start_s, r.end_s, r.label == "stressed") for r in rows if r.path == path]
        o = score_stress(segs, c.spike_starts, c.samples)
        detected += o.detected
        delays += o.delays_s
        false += o.false_spikes
        calm_s += o.calm_s
        calm_index += o.calm_index
        stressed_index += o.stressed_index

    def num(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 3)

    return {
        "stressed_segments": len(detected),
        "detected": sum(detected),
        "detection_rate": num(sum(detected) / len(detected)) if detected else None,
        "median_delay_s": num(percentile(delays, 50)),
        "p90_delay_s": num(percentile(delays, 90)),
        "calm_hours": round(calm_s / 3600, 4),
        "false_spikes": false,
        "false_spikes_per_hour": num(false / (calm_s / 3600)) if calm_s else None,
        "window_auc": num(auc(calm_index, stressed_index)),
        "windows": {"calm": len(calm_index), "stressed": len(stressed_index)},
    }


def _emotion(rows: list[Labelled], got: dict[Path, _Collected]) -> dict[str, Any]:
    truth: list[str] = []
    predicted: list[str] = []
    for r in rows:
        totals: dict[str, float] = defaultdict(float)
        for t, probs in got[r.path].emotions:
            if r.start_s <= t < r.end_s:
                for k, p in probs.items():
                    totals[k] += p
        truth.append(canonical_label(r.label))
        predicted.append(max(totals, key=totals.__getitem__) if totals else "none")
    classes = sorted(set(truth))
    columns = sorted(set(truth) | set(predicted))
    matrix = {t: {p: 0 for p in columns} for t in classes}
    for true_label, guess in zip(truth, predicted, strict=True):
        matrix[true_label][guess] += 1
    recall = {t: matrix[t][t] / sum(matrix[t].values()) for t in classes}
    return {"uar": round(statistics.fmean(recall.values()), 4),
            "recall": {k: round(v, 4) for k, v in recall.items()},
            "confusion": matrix}


def format_report(r: dict[str, Any]) -> str:
    def f(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    lines = [f"{r['labels']}: {r['segments']} labelled segments in {r['files']} file(s), "
             f"{r['mode']} labels"]
    if r["mode"] == "stress":
        lines += [
            f"  stressed segments detected  {r['detected']} of {r['stressed_segments']} "
            f"({f(r['detection_rate'], '.0%')})",
            f"  delay from segment start    median {f(r['median_delay_s'], '.1f')} s, "
            f"90th percentile {f(r['p90_delay_s'], '.1f')} s",
            f"  false spikes                {r['false_spikes']} in {r['calm_hours'] * 60:.1f} min "
            f"of calm ({f(r['false_spikes_per_hour'], '.2f')} per hour)",
            f"  window-level ROC AUC        {f(r['window_auc'], '.3f')} "
            f"({r['windows']['stressed']} stressed vs {r['windows']['calm']} calm windows)",
        ]
        return "\n".join(lines)
    lines.append(f"  unweighted average recall   {r['uar']:.3f}")
    columns = list(next(iter(r["confusion"].values())))
    width = max(len(c) for c in [*columns, "true \\ predicted"]) + 2
    lines.append("  " + "true \\ predicted".ljust(width) + "".join(c.rjust(width) for c in columns))
    for t, row in r["confusion"].items():
        lines.append("  " + t.ljust(width) + "".join(str(row[c]).rjust(width) for c in columns))
    return "\n".join(lines)
