"""One self-contained HTML page: each speaker's stress index and arousal over time, spikes marked.

Inline SVG only: no scripts, no external assets, so the page opens anywhere and leaks nothing.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from bridge.offline.analyze import AnalyzeResult, SpeakerSummary, format_table

__all__ = ["render_report", "write_report"]

W, H, PAD = 900, 220, 40


def _x(t: float, span: float) -> float:
    return PAD + (W - 2 * PAD) * (t / span if span > 0 else 0)


def _y(v: float, lo: float, hi: float) -> float:
    return H - PAD - (H - 2 * PAD) * ((v - lo) / (hi - lo))


def _chart(s: SpeakerSummary, span: float) -> str:
    parts = [f'<svg viewBox="0 0 {W} {H}" width="100%" role="img" '
             f'aria-label="stress and arousal of {escape(s.speaker)}">']
    for start, end in s.spike_spans:
        x0, x1 = _x(start, span), _x(end if end is not None else span, span)
        parts.append(f'<rect class="spike" x="{x0:.1f}" y="{PAD}" width="{max(x1 - x0, 2):.1f}" '
                     f'height="{H - 2 * PAD}"><title>spike {start:.1f}-'
                     f'{"end" if end is None else f"{end:.1f}"} s</title></rect>')
    for v in (0.0, 0.5, 1.0):
        y = _y(v, 0, 1)
        parts.append(f'<line class="grid" x1="{PAD}" x2="{W - PAD}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text x="{PAD - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.1f}</text>')
    step = next(s for s in (5, 10, 30, 60, 300, 600, 1800, 3600, 36000) if span / s <= 12)
    t = 0.0
    while t <= span:
        x = _x(t, span)
        parts.append(f'<text x="{x:.1f}" y="{H - PAD + 16}" text-anchor="middle">{t:.0f}s</text>')
        t += step
    stress = " ".join(f"{_x(t, span):.1f},{_y(v, 0, 1):.1f}" for t, v, _, _ in s.series)
    arousal = " ".join(f"{_x(t, span):.1f},{_y(a, -1, 1):.1f}" for t, _, a, _ in s.series
                       if a is not None)
    calib = [t for t, _, _, c in s.series if c]
    if calib:
        parts.append(f'<rect class="calib" x="{PAD}" y="{PAD}" '
                     f'width="{_x(max(calib), span) - PAD:.1f}" height="{H - 2 * PAD}">'
                     '<title>calibrating baseline</title></rect>')
    if stress:
        parts.append(f'<polyline class="stress" points="{stress}"/>')
    if arousal:
        parts.append(f'<polyline class="arousal" points="{arousal}"/>')
    parts.append("</svg>")
    return "".join(parts)


def render_report(result: AnalyzeResult, title: str = "affect-bridge report") -> str:
    span = max((t for s in result.speakers for t, *_ in s.series), default=0.0)
    span = max(span, max((s.audio_s for s in result.speakers), default=0.0), 1.0)
    sections = []
    for s in result.speakers:
        note = f'<p class="err">{escape(s.error)}</p>' if s.error else ""
        body = _chart(s, span) if s.series else "<p>No speech found.</p>"
        sections.append(f"<section><h2>{escape(s.speaker)} <small>{escape(s.source)}</small>"
                        f"</h2>{note}{body}</section>")
    degraded = "".join(f"<li>{escape(k)}: {escape(v)}</li>" for k, v in result.degraded.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:960px;color:#222}}
pre{{background:#f4f4f4;padding:1em;overflow:auto}}
svg text{{font-size:11px;fill:#555}} .grid{{stroke:#ddd}}
.stress{{fill:none;stroke:#c0392b;stroke-width:2}}
.arousal{{fill:none;stroke:#2e86c1;stroke-width:1.5;stroke-dasharray:4 3}}
.spike{{fill:#f5b7b1;opacity:.6}} .calib{{fill:#eee;opacity:.7}} .err{{color:#c0392b}}
.legend span{{margin-right:1.5em}}
</style></head><body>
<h1>{escape(title)}</h1>
<p class="legend"><span style="color:#c0392b">&#9644; stress index (0..1)</span>
<span style="color:#2e86c1">&#9476; arousal (-1..1)</span>
<span style="background:#f5b7b1">&nbsp;spike&nbsp;</span>
<span style="background:#eee">&nbsp;calibrating&nbsp;</span></p>
<pre>{escape(format_table(result))}</pre>
{"<p>Degraded analyzers:</p><ul>" + degraded + "</ul>" if degraded else ""}
{"".join(sections)}
<p><small>The stress index is a relative vocal-stress indicator: how far each voice moved from
that speaker's own baseline. It is not a clinical measure and not a cortisol estimate.</small></p>
</body></html>
"""


def write_report(result: AnalyzeResult, path: Path) -> None:
    path.write_text(render_report(result), encoding="utf-8")
