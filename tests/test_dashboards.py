"""The Grafana dashboards: the checked-in JSON is what ``dashboards/generate.py`` writes, every panel
queries the ``${datasource}`` variable, and every PromQL expression parses (``promtool check rules``).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest
import yaml
from prometheus_client import generate_latest

from analyzers.stress import StressConfig
from bridge.delivery.prometheus import PrometheusSink
from tests.conftest import ROOT, require_tool


def _import_generator() -> ModuleType:
    """``dashboards/generate.py`` is a script, not a package module: load it by path."""
    spec = importlib.util.spec_from_file_location("dashboards_generate", ROOT / "dashboards" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _import_generator()

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SUBSTITUTIONS = {
    "call": "janus:1234", "speaker": ".*", "__rate_interval": "1m", "__interval": "1m", "__range": "1h",
}
SPIKE_ANNOTATION = 'changes(affect_stress_spikes_total{call=~"$call",speaker=~"$speaker"}[1m]) > 0'
# $name, ${name}, ${name:format} and [[name]]: Grafana's variable syntaxes.
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
LABEL_VALUES = re.compile(r"\s*label_values\((?P<selector>.+),\s*\w+\s*\)\s*", re.DOTALL)
QUERY_RESULT = re.compile(r"\s*query_result\((?P<selector>.+)\)\s*", re.DOTALL)
NOT_PROMQL = re.compile(r"\s*(label_values|label_names|metrics)\(.*\)\s*", re.DOTALL)


def _load(uid: str) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads((ROOT / "dashboards" / f"{uid}.json").read_text()))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _variables(dashboard_json: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard_json.get("templating", {}).get("list", [])}


def _annotations(dashboard_json: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in dashboard_json.get("annotations", {}).get("list", [])
            if (a.get("datasource") or {}).get("type") == "prometheus"]


def _variable_promql(query: str | dict[str, Any]) -> str | None:
    """The PromQL inside a Prometheus variable query, None for Grafana-only functions."""
    text = query.get("query", "") if isinstance(query, dict) else query
    if match := LABEL_VALUES.fullmatch(text) or QUERY_RESULT.fullmatch(text):
        return match["selector"].strip()
    return None if NOT_PROMQL.fullmatch(text) or not text.strip() else text


def substitute(expr: str, substitutions: dict[str, str]) -> str:
    """``expr`` with Grafana variables replaced; keys are names with or without ``$``."""
    values = {name.lstrip("$"): value for name, value in substitutions.items()}

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        return values.get(name, match[0])

    return VARIABLE.sub(value, expr)


def panel_queries(dashboard_json: dict[str, Any], substitutions: dict[str, str]) -> list[str]:
    """Every PromQL expression of a dashboard (variables, annotations, panel targets),
    with Grafana variables substituted, e.g. ``{"call": "janus:1234", "__rate_interval": "1m"}``."""
    exprs: list[str] = []
    for variable in _variables(dashboard_json).values():
        if variable.get("type") == "query" and (promql := _variable_promql(variable.get("query", ""))):
            exprs.append(promql)
    for annotation in _annotations(dashboard_json):
        exprs.extend(e for e in (annotation.get("expr"), annotation.get("target", {}).get("expr")) if e)
    for panel in _panels(dashboard_json.get("panels", [])):
        exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
    return [substitute(expr, substitutions) for expr in exprs]


def _promtool_check(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    rules = [{"record": f"dashboard_query_{n}", "expr": expr} for n, expr in enumerate(exprs)]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    return subprocess.run([require_tool("promtool"), "check", "rules", str(path)],
                          capture_output=True, text=True, timeout=30, check=False)


def _datasource_refs(node: Any) -> Iterator[Any]:
    """Every ``datasource`` value anywhere in the JSON."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasource_refs(item)


UIDS = [generate.CALL_MONITOR_UID, generate.OPERATIONS_UID]


def test_uids_are_stable() -> None:
    assert UIDS == ["affect-bridge-call-monitor", "affect-bridge-operations"]
    assert sorted(generate.dashboards()) == sorted(UIDS)
    for folder in generate.OUTPUT_DIRS:
        assert sorted(p.stem for p in folder.glob("*.json")) == sorted(UIDS), folder
    for uid in UIDS:
        assert _load(uid)["uid"] == uid


def test_checked_in_json_is_what_the_generator_writes() -> None:
    assert generate.check() == [], "out of date: run .venv/bin/python dashboards/generate.py"
    assert generate.main(["--check"]) == 0
    for uid in UIDS:
        copies = {(folder / f"{uid}.json").read_bytes() for folder in generate.OUTPUT_DIRS}
        assert len(copies) == 1, f"{uid}.json differs between {generate.OUTPUT_DIRS}"
        [text] = copies
        assert text.endswith(b"}\n")
        assert text.decode() == generate.render(generate.dashboards()[uid]())  # deterministic


def test_check_names_stale_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    dirs = (tmp_path / "dashboards", tmp_path / "chart")
    monkeypatch.setattr(generate, "OUTPUT_DIRS", dirs)
    assert generate.main(["--check"]) == 1  # nothing written yet
    assert generate.main([]) == 0
    assert generate.main(["--check"]) == 0
    stale = dirs[1] / f"{generate.OPERATIONS_UID}.json"
    stale.write_text(stale.read_text().replace("p99", "p98"))
    capsys.readouterr()
    assert generate.main(["--check"]) == 1
    assert str(stale) in capsys.readouterr().err


@pytest.mark.parametrize("uid", UIDS)
def test_every_panel_and_target_uses_the_datasource_variable(uid: str) -> None:
    dashboard = _load(uid)
    datasource = _variables(dashboard)["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    panels = list(_panels(dashboard["panels"]))
    assert len([p for p in panels if p["type"] != "row"]) >= 6
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        for target in panel.get("targets", []):
            assert target.get("datasource") == DATASOURCE, panel["title"]
            assert target["expr"] and target["refId"]
        assert panel["type"] == "row" or panel.get("targets"), f"{panel['title']} has no query"
    # Nothing anywhere names a datasource uid other than the variable.
    assert all(ref == DATASOURCE for ref in _datasource_refs(dashboard))


def test_call_monitor_variables_annotation_and_stress_panel() -> None:
    dashboard = _load(generate.CALL_MONITOR_UID)
    variables = _variables(dashboard)
    assert list(variables) == ["datasource", "call", "speaker"]
    assert variables["call"]["query"] == "label_values(affect_stress_index, call)"
    assert variables["speaker"]["query"] == 'label_values(affect_stress_index{call=~"$call"}, speaker)'
    for name in ("call", "speaker"):
        assert variables[name]["type"] == "query"
        assert variables[name]["multi"] and variables[name]["includeAll"]
        assert variables[name]["datasource"] == DATASOURCE
    [spikes] = _annotations(dashboard)
    assert spikes["expr"] == SPIKE_ANNOTATION and spikes["enable"]
    assert spikes["datasource"] == DATASOURCE
    [stress] = [p for p in dashboard["panels"] if p["title"] == "Stress index"]
    assert stress["targets"][0]["expr"] == 'affect_stress_index{call=~"$call",speaker=~"$speaker"}'
    defaults = stress["fieldConfig"]["defaults"]
    assert (defaults["min"], defaults["max"]) == (0, 1)
    assert StressConfig().on in [step["value"] for step in defaults["thresholds"]["steps"]]
    assert defaults["custom"]["thresholdsStyle"]["mode"] != "off"
    assert "relative" in stress["description"] and "not a clinical" in stress["description"]
    assert "cortisol" in stress["description"]


def test_call_monitor_shows_arousal_valence_and_dominance_side_by_side() -> None:
    dashboard = _load(generate.CALL_MONITOR_UID)
    panels = {p["title"]: p for p in dashboard["panels"]}
    row = [panels[title] for title in ("Arousal", "Valence", "Dominance")]
    for panel, metric in zip(row, ("affect_arousal", "affect_valence", "affect_dominance"), strict=True):
        assert panel["type"] == "timeseries"
        [target] = panel["targets"]
        assert target["expr"] == f'{metric}{{call=~"$call",speaker=~"$speaker"}}'
        defaults = panel["fieldConfig"]["defaults"]
        assert (defaults["min"], defaults["max"]) == (-1, 1)
    assert "dimensional" in panels["Dominance"]["description"]
    # One row, left to right, filling the 24-column grid.
    grid = [p["gridPos"] for p in row]
    assert len({(g["y"], g["h"]) for g in grid}) == 1
    assert [g["x"] for g in grid] == [0, grid[0]["w"], grid[0]["w"] + grid[1]["w"]]
    assert sum(g["w"] for g in grid) == 24


def test_operations_has_only_the_datasource_variable() -> None:
    dashboard = _load(generate.OPERATIONS_UID)
    assert list(_variables(dashboard)) == ["datasource"]
    assert any(p["type"] == "row" for p in dashboard["panels"])


def test_panel_queries_substitutes_every_variable() -> None:
    exprs = panel_queries(_load(generate.CALL_MONITOR_UID), SUBSTITUTIONS)
    assert exprs[:2] == ["affect_stress_index", 'affect_stress_index{call=~"janus:1234"}']
    assert SPIKE_ANNOTATION.replace("$call", "janus:1234").replace("$speaker", ".*") in exprs
    assert 'rate(affect_speech_seconds_total{call=~"janus:1234",speaker=~".*"}[1m])' in exprs
    assert substitute("x[${__range}] [[call]] ${call:regex}", {"$__range": "1h", "call": "c"}) == "x[1h] c c"
    for uid in UIDS:
        for expr in panel_queries(_load(uid), SUBSTITUTIONS):
            assert not VARIABLE.search(expr), expr


def test_queries_use_metrics_the_bridge_exports() -> None:
    metrics = PrometheusSink()
    try:
        exposition = generate_latest(metrics.registry).decode()
    finally:
        metrics.close()
    exported: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\w+) (\w+)$", exposition, re.MULTILINE):
        suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
        exported.update(name + suffix for suffix in suffixes)
    for uid in UIDS:
        for expr in panel_queries(_load(uid), SUBSTITUTIONS):
            used = set(re.findall(r"\baffect_\w+", expr))
            assert used <= exported, f"{expr}: {sorted(used - exported)} not exported by the bridge"


def test_every_expression_passes_promtool(tmp_path: Path) -> None:
    exprs = [e for uid in UIDS for e in panel_queries(_load(uid), SUBSTITUTIONS)]
    assert len(exprs) >= 20
    result = _promtool_check(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout
    broken = _promtool_check(["rate(affect_dropped_total[$__rate_interval])"], tmp_path)
    assert broken.returncode != 0  # the check does parse PromQL
