"""Per-window stress features of the detection corpus, computed once and cached.

The expensive part of the detection benchmark is prosody; the detector itself is cheap. So every
case is run once through the same windowing + VAD + prosody + ``stress_features`` the pipeline
uses, and the per-window results (never audio) are kept in a JSON cache keyed by the source of
every module that shapes them. The detector is then replayed over them with any settings.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from analyzers.prosody import FrameCache, analyze_prosody  # noqa: E402
from analyzers.stress import stress_features  # noqa: E402
from analyzers.types import AudioChunk, QuietWindow  # noqa: E402
from analyzers.windowing import SpeechWindower  # noqa: E402
from tests.bench import detection_corpus as corpus  # noqa: E402

CACHE = ROOT / ".bench-cache" / "detection"
_KEYED = ["tests/bench/detection_corpus.py", "tests/bench/detection_features.py", "tests/noise.py",
          "analyzers/prosody.py", "analyzers/windowing.py", "analyzers/vad.py"]


@dataclass(frozen=True)
class Track:
    """One case's windows: ("w", end_s, new_voiced_s, features) or ("q", end_s)."""

    voice: str
    name: str
    group: str
    duration_s: float
    shift_s: float | None
    items: list[Any]


def _key() -> str:
    h = hashlib.sha256()
    for rel in _KEYED:
        h.update((ROOT / rel).read_bytes())
    return h.hexdigest()[:16]


def extract(samples: Any) -> list[Any]:
    windower = SpeechWindower()
    cache = FrameCache()
    items: list[Any] = []
    sr = corpus.SR
    for i in range(0, len(samples), sr):
        for due in windower.push_due(AudioChunk(samples[i:i + sr], i / sr)):
            if isinstance(due, QuietWindow):
                items.append(["q", round(due.end_s, 3)])
                continue
            prosody = analyze_prosody(due, cache=cache)
            if prosody.unvoiced is not None:  # not scored: time without speech (bridge/analysis)
                items.append(["q", round(due.end_s, 3)])
                continue
            feats = stress_features(prosody, None)
            items.append(["w", round(due.end_s, 3), round(due.new_voiced_s, 3),
                          {k: round(v, 6) for k, v in feats.items()}])
    return items


def _voice_job(index: int) -> tuple[int, float]:
    path = CACHE / f"{_key()}-{index:02d}.json"
    if path.exists():
        return index, 0.0
    t0 = time.process_time()
    out = []
    for case in corpus.cases(index):
        out.append({"voice": case.voice, "name": case.name, "group": case.group,
                    "duration_s": case.duration_s, "shift_s": case.shift_s,
                    "items": extract(case.samples)})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, path)
    return index, time.process_time() - t0


def load(voices: int = len(corpus.VOICES), jobs: int | None = None) -> list[Track]:
    """Every case of the first ``voices`` voices, extracting what the cache lacks."""
    CACHE.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(voices) if not (CACHE / f"{_key()}-{i:02d}.json").exists()]
    if todo:
        print(f"extracting features for {len(todo)} voice(s) (cached in {CACHE})", flush=True)
        with multiprocessing.get_context("spawn").Pool(jobs or os.cpu_count() or 1) as pool:
            for index, cpu in pool.imap_unordered(_voice_job, todo):
                print(f"  {corpus.VOICES[index]}: {cpu:.0f} CPU-s", flush=True)
    tracks: list[Track] = []
    for i in range(voices):
        for c in json.loads((CACHE / f"{_key()}-{i:02d}.json").read_text()):
            tracks.append(Track(**c))
    return tracks


if __name__ == "__main__":
    t = load()
    print(len(t), "cases")
