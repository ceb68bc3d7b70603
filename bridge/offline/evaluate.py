"""``affect-bridge evaluate``: the detector measured on a user's own labelled recordings.

Labels are a CSV or TSV with the columns ``file, start_s, end_s, label`` (a header row with those
names is optional; paths are relative to the labels file). Either every label is ``calm`` or
``stressed`` (stress mode: detection rate, delay, false spikes per hour, window-level ROC AUC; see
:mod:`bridge.offline.detection`), or every label is an emotion (emotion mode: unweighted average recall
and the confusion matrix of the segment's dominant predicted emotion; needs the emotion model).

Dimensional mode: a header ``file, start_s, end_s`` followed by one or more of ``arousal``,
``valence``, ``dominance`` (required: it names the columns), numeric cells, an empty cell meaning
"not labelled". Labels are mapped linearly from the label range (default -1..1) onto -1..1. Per
dimension, a segment's prediction is the mean of the affect samples in [start_s, end_s); the
report gives Lin's concordance correlation coefficient (CCC), Pearson r, and how many segments had
no prediction. A categorical model's arousal/valence come from its emotion labels (the circumplex
table), not from a regression head: allowed, and the report says ``source: labels``.

Each file is analysed as ``analyze`` does (mixed to mono, one speaker) with the same settings.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analyzers.emotion import CANONICAL, canonical_label
from bridge import events as ev
from bridge.config import Settings
from bridge.offline.analyze import analyze_files, plan_sources
from bridge.offline.detection import Segment, auc, percentile, score_stress

__all__ = ["DIMENSIONS", "Estimate", "LabelError", "Labelled", "Labels", "ccc", "evaluate",
           "format_report", "pearson", "read_labels", "score_dimensions", "to_unit"]

COLUMNS = ("file", "start_s", "end_s", "label")
STRESS_LABELS = {"calm", "stressed"}
DIMENSIONS = ("arousal", "valence", "dominance")
UNIT = (-1.0, 1.0)


class LabelError(ValueError):
    """A labels file that cannot be used; the message names the row."""


@dataclass(frozen=True, slots=True)
class Labelled:
    path: Path
    start_s: float
    end_s: float
    label: str  # "" in dimensional mode
    row: int
    values: dict[str, float] = field(default_factory=dict)  # dimensional: labelled ones, on -1..1


@dataclass(frozen=True, slots=True)
class Labels:
    """A checked labels file: its mode ("stress", "emotion" or "dimensional") and rows."""

    path: Path
    mode: str
    rows: list[Labelled]
    dimensions: tuple[str, ...] = ()  # dimensional mode: the header's, in its order
    label_range: tuple[float, float] = UNIT  # dimensional mode: the labels' scale


def to_unit(value: float, low: float, high: float) -> float:
    """``value`` on ``low..high`` mapped linearly onto -1..1."""
    return -1.0 + 2.0 * (value - low) / (high - low)


def read_labels(path: Path, label_range: tuple[float, float] | None = None) -> Labels:
    """Parse and check the labels file (raises :class:`LabelError` naming the bad row).

    ``label_range`` is the scale of dimensional labels (default -1..1); giving it for other
    labels is an error, so that a mistaken file is not measured as something else."""
    if label_range is not None:
        low, high = label_range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise LabelError(f"the label range needs two finite numbers LOW < HIGH, got "
                             f"{low:g} {high:g}")
    low, high = label_range or UNIT
    if not path.is_file():
        raise LabelError(f"labels file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise LabelError(f"{path}: not a UTF-8 text file") from None
    first = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first or path.suffix.lower() == ".tsv" else ","
    rows: list[Labelled] = []
    dims: tuple[str, ...] | None = None
    expect_header = True
    for n, cells in enumerate(csv.reader(io.StringIO(text), delimiter=delimiter), start=1):
        cells = [c.strip() for c in cells]
        if not any(cells) or cells[0].startswith("#"):
            continue
        where = f"{path.name} row {n}"
        if expect_header:  # the first row that is neither blank nor a comment may be one
            expect_header = False
            names = [c.lower() for c in cells]
            if names == list(COLUMNS):
                continue
            if names[:3] == list(COLUMNS[:3]):
                dims = _dimension_columns(names[3:], where)
                continue
        rows.append(_row(path, cells, n, dims, (low, high), where))
    if not rows:
        raise LabelError(f"{path}: no labelled rows")
    if dims is not None:
        _check_overlaps(path, rows)
        return Labels(path, "dimensional", rows, dims, (low, high))
    if label_range is not None:
        raise LabelError(f"{path.name}: a label range applies to dimensional labels only (a "
                         f"header file,start_s,end_s,arousal,...); these are categorical")
    mode = _categorical_mode(path, rows)
    _check_overlaps(path, rows)
    return Labels(path, mode, rows)


def _row(path: Path, cells: list[str], n: int, dims: tuple[str, ...] | None,
         label_range: tuple[float, float], where: str) -> Labelled:
    """One labelled row (its cells stripped); raises LabelError saying what is wrong."""
    columns = COLUMNS if dims is None else (*COLUMNS[:3], *dims)
    if len(cells) != len(columns):
        raise LabelError(f"{where}: expected {len(columns)} columns ({', '.join(columns)}), "
                         f"got {len(cells)}")
    name, start, end = cells[:3]
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
    if dims is None:
        return Labelled(file, start_s, end_s, cells[3].lower(), n)
    values = _dimension_values(cells[3:], dims, *label_range, where)
    return Labelled(file, start_s, end_s, "", n, values)


def _categorical_mode(path: Path, rows: list[Labelled]) -> str:
    """``stress`` (calm/stressed) or ``emotion`` labels; LabelError for anything else."""
    known = ", ".join(sorted(STRESS_LABELS | (set(CANONICAL) - {"other"})))
    for r in rows:
        if r.label not in STRESS_LABELS and canonical_label(r.label) == "other":
            hint = (" (numeric labels need a header naming their dimensions, e.g. "
                    "file,start_s,end_s,arousal,valence)" if _is_number(r.label) else "")
            raise LabelError(f"{path.name} row {r.row}: unknown label {r.label!r} (use calm and "
                             f"stressed, or emotions: {known}){hint}")
    mode = "stress" if {r.label for r in rows} <= STRESS_LABELS else "emotion"
    if mode == "emotion":
        for r in rows:
            if r.label == "stressed":
                raise LabelError(f"{path.name} row {r.row}: label 'stressed' cannot be mixed "
                                 f"with emotion labels (one kind per file)")
    return mode


def _check_overlaps(path: Path, rows: list[Labelled]) -> None:
    by_file: dict[Path, list[Labelled]] = defaultdict(list)
    for r in rows:
        by_file[r.path].append(r)
    for segs in by_file.values():
        segs.sort(key=lambda r: r.start_s)
        for a, b in itertools.pairwise(segs):
            if b.start_s < a.end_s:
                raise LabelError(f"{path.name} row {b.row}: overlaps row {a.row} of the same file")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _dimension_columns(names: list[str], where: str) -> tuple[str, ...]:
    expected = f"after file, start_s, end_s: label alone, or columns among {', '.join(DIMENSIONS)}"
    if not names:
        raise LabelError(f"{where}: the header names no label column ({expected})")
    seen: list[str] = []
    for name in names:
        if name not in DIMENSIONS:
            raise LabelError(f"{where}: unknown column {name!r} ({expected})")
        if name in seen:
            raise LabelError(f"{where}: column {name!r} appears twice")
        seen.append(name)
    return tuple(seen)


def _dimension_values(cells: list[str], dims: tuple[str, ...], low: float, high: float,
                      where: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for dim, cell in zip(dims, cells, strict=True):
        if not cell:
            continue  # not labelled for this dimension
        try:
            value = float(cell)
        except ValueError:
            raise LabelError(f"{where}: {dim} must be a number or empty, got {cell!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise LabelError(f"{where}: {dim} {cell} is outside the label range {low:g}..{high:g} "
                             f"(set the labels' scale with --label-range LOW HIGH)")
        values[dim] = to_unit(value, low, high)
    if not values:
        raise LabelError(f"{where}: no value for any of {', '.join(dims)}")
    return values


@dataclass(frozen=True, slots=True)
class Estimate:
    """One affect sample's dimensional estimates (only the non-null ones) and their source."""

    offset_s: float
    values: dict[str, float]
    source: str | None  # "model" or "labels" (AffectSampleData.affect_source)


@dataclass
class _Collected:
    samples: list[tuple[float, float, bool]] = field(default_factory=list)
    emotions: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    spike_starts: list[float] = field(default_factory=list)
    estimates: list[Estimate] = field(default_factory=list)


async def evaluate(labels: Labels, settings: Settings,
                   registry: dict[str, type] | None = None) -> dict[str, Any]:
    """Analyse every labelled file and measure; the result is JSON-ready."""
    mode, rows = labels.mode, labels.rows
    if mode == "dimensional" and "emotion" not in settings.analyzers:
        raise LabelError("dimensional labels need the emotion model, which is not configured "
                         "(add \"emotion\" to analyzers)")
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
            dims = {"arousal": d.arousal, "valence": d.valence, "dominance": d.dominance}
            values = {k: v for k, v in dims.items() if v is not None}
            if values:
                c.estimates.append(Estimate(d.offset_s, values, d.affect_source))
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
    elif mode == "dimensional":
        if "emotion" in result.degraded:
            raise LabelError(f"dimensional labels need the emotion model, which is unavailable: "
                             f"{result.degraded['emotion']}")
        out.update(score_dimensions(labels, {f: c.estimates for f, c in got.items()}))
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


def _moments(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float, float, float]:
    if len(x) != len(y):
        raise ValueError(f"{len(x)} values against {len(y)}")
    mx, my = statistics.fmean(x), statistics.fmean(y)
    vx = statistics.fmean([(a - mx) ** 2 for a in x])
    vy = statistics.fmean([(b - my) ** 2 for b in y])
    cov = statistics.fmean([(a - mx) * (b - my) for a, b in zip(x, y, strict=True)])
    return mx, my, vx, vy, cov


def ccc(x: Sequence[float], y: Sequence[float]) -> float:
    """Lin's (1989) concordance correlation coefficient, with population moments:
    ``2 cov / (var_x + var_y + (mean_x - mean_y)^2)``. NaN for fewer than two pairs or when
    undefined (both sides the same constant)."""
    if len(x) < 2:
        return math.nan
    mx, my, vx, vy, cov = _moments(x, y)
    den = vx + vy + (mx - my) ** 2
    return 2 * cov / den if den > 0 else math.nan


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; NaN for fewer than two pairs or a constant side."""
    if len(x) < 2:
        return math.nan
    _, _, vx, vy, cov = _moments(x, y)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else math.nan


def score_dimensions(labels: Labels, estimates: dict[Path, list[Estimate]]) -> dict[str, Any]:
    """CCC, Pearson r and counts per labelled dimension. A segment's prediction is the mean of the
    estimates in [start_s, end_s) that have the dimension; segments without one are counted
    (``no_prediction``). Raises :class:`LabelError` when the model gives none of the labelled
    dimensions at all (e.g. dominance labels with a categorical model)."""
    given = {k for es in estimates.values() for e in es for k in e.values}
    if not given & set(labels.dimensions):
        raise LabelError(_nothing_predicted(labels.dimensions, given))

    def num(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 4)

    dims: dict[str, Any] = {}
    warnings: list[str] = []
    derived: list[str] = []
    for dim in labels.dimensions:
        truth: list[float] = []
        predicted: list[float] = []
        sources: set[str] = set()
        labelled = 0
        for r in labels.rows:
            if dim not in r.values:
                continue
            labelled += 1
            inside = [e for e in estimates.get(r.path, ())
                      if r.start_s <= e.offset_s < r.end_s and dim in e.values]
            if inside:
                truth.append(r.values[dim])
                predicted.append(statistics.fmean(e.values[dim] for e in inside))
                sources.update(e.source or "unknown" for e in inside)
        source = "+".join(sorted(sources)) or None
        dims[dim] = {
            "ccc": num(ccc(truth, predicted)), "pearson": num(pearson(truth, predicted)),
            "n": len(truth), "labelled": labelled, "no_prediction": labelled - len(truth),
            "source": source,
            "mean_label": num(statistics.fmean(truth)) if truth else None,
            "mean_prediction": num(statistics.fmean(predicted)) if predicted else None,
        }
        if "labels" in sources:
            derived.append(dim)
        if dim not in given:
            warnings.append(f"{dim}: the emotion model gives none; it needs a dimensional model "
                            f"that predicts {dim}")
        elif labelled > len(truth):
            warnings.append(f"{dim}: {labelled - len(truth)} of {labelled} labelled segments had "
                            f"no prediction (no estimate inside the segment)")
    if derived:
        warnings.insert(0, f"{', '.join(derived)}: source labels - a categorical model's emotion "
                           f"probabilities through the circumplex table, not a dimensional "
                           f"model's outputs; CCC against them measures that mapping")
    return {"label_range": list(labels.label_range), "dimensions": dims, "warnings": warnings}


def _nothing_predicted(labelled: tuple[str, ...], given: set[str]) -> str:
    if not given:
        return ("dimensional labels need the emotion model, but it made no arousal/valence "
                "estimate inside the recordings (too little speech?)")
    return (f"the emotion model gives {', '.join(sorted(given))}, none of the labelled "
            f"{', '.join(labelled)}: labels for {', '.join(labelled)} need a dimensional model "
            f"that predicts them")


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
    if r["mode"] == "dimensional":
        lo, hi = r["label_range"]
        if (lo, hi) != UNIT:
            lines[0] += f" (range {lo:g}..{hi:g} mapped onto -1..1)"
        lines.append(f"  {'dimension':<11}{'CCC':>7}{'Pearson r':>11}{'n':>6}"
                     f"{'no prediction':>15}  source")
        for dim, m in r["dimensions"].items():
            lines.append(f"  {dim:<11}{f(m['ccc'], '.3f'):>7}{f(m['pearson'], '.3f'):>11}"
                         f"{m['n']:>6}{m['no_prediction']:>15}  {m['source'] or '-'}")
        lines += [f"  note: {w}" for w in r["warnings"]]
        return "\n".join(lines)
    lines.append(f"  unweighted average recall   {r['uar']:.3f}")
    columns = list(next(iter(r["confusion"].values())))
    width = max(len(c) for c in [*columns, "true \\ predicted"]) + 2
    lines.append("  " + "true \\ predicted".ljust(width) + "".join(c.rjust(width) for c in columns))
    for t, row in r["confusion"].items():
        lines.append("  " + t.ljust(width) + "".join(str(row[c]).rjust(width) for c in columns))
    return "\n".join(lines)
