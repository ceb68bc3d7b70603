"""Grafana dashboards as code.

``python dashboards/generate.py`` writes ``dashboards/<uid>.json`` and the Helm chart's copy in
``helm/affect-bridge/files/dashboards/``; ``--check`` writes nothing and exits 1 naming the files
that differ from what this script produces.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from analyzers.stress import StressConfig

# The SDK warns at import that it prefers the v2 schema; file provisioning and Grafana's
# dashboard sidecar load the v1 JSON model built here.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import bargauge, common, dashboard, prometheus, stat, timeseries
    from grafana_foundation_sdk.cog import builder as cogbuilder
    from grafana_foundation_sdk.cog import variants as cogvariants
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import dashboard as model
    from grafana_foundation_sdk.models.common import (
        BarGaugeDisplayMode,
        BigValueGraphMode,
        DataSourceRef,
        GraphThresholdsStyleMode,
        LegendDisplayMode,
        LegendPlacement,
        SortOrder,
        TooltipDisplayMode,
        VizOrientation,
    )

__all__ = ["CALL_MONITOR_UID", "OPERATIONS_UID", "OUTPUT_DIRS", "check", "dashboards", "render", "write"]

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_DIRS = (ROOT / "dashboards", ROOT / "helm" / "affect-bridge" / "files" / "dashboards")
CALL_MONITOR_UID = "affect-bridge-call-monitor"
OPERATIONS_UID = "affect-bridge-operations"
TAGS = ["affect-bridge"]
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SPEAKERS = 'call=~"$call",speaker=~"$speaker"'
STRESS_SPIKE_ON = StressConfig().on  # the default [stress] on threshold of the spike detector
RATE = "5m"  # window for rates of process-wide counters and histograms
FAST_RATE = "1m"  # frames and CPU: cheap, frequent series


def query(expr: str, legend: str = "__auto", *, instant: bool = False) -> prometheus.Dataquery:
    """A PromQL target; ``legend`` is Grafana's legend template."""
    target = prometheus.Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE)
    return target.instant() if instant else target.range()


def _targets(queries: Sequence[prometheus.Dataquery]) -> list[cogbuilder.Builder[cogvariants.Dataquery]]:
    return [q.ref_id(ref) for ref, q in zip(string.ascii_uppercase, queries, strict=False)]


def _thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (dashboard.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE)
            .steps([model.Threshold(value=value, color=color) for value, color in steps]))


def graph(title: str, queries: Sequence[prometheus.Dataquery], *, unit: str = "short",
          width: int = 12, height: int = 8, description: str = "") -> timeseries.Panel:
    """A time series panel with a list legend and a shared tooltip."""
    return (timeseries.Panel().title(title).description(description).datasource(DATASOURCE)
            .targets(_targets(queries)).unit(unit).span(width).height(height)
            .fill_opacity(10).line_width(1).span_nulls(False)
            .legend(common.VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.LIST)
                    .placement(LegendPlacement.BOTTOM))
            .tooltip(common.VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING)))


def single(title: str, target: prometheus.Dataquery, *, unit: str = "short", decimals: int = 0,
           width: int = 6, description: str = "") -> stat.Panel:
    """A stat panel showing the last value of one instant query."""
    return (stat.Panel().title(title).description(description).datasource(DATASOURCE)
            .targets(_targets([target])).unit(unit).span(width).height(4).decimals(decimals)
            .graph_mode(BigValueGraphMode.NONE)
            .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))


def bars(title: str, target: prometheus.Dataquery, *, unit: str, width: int = 12,
         max_value: float | None = None, description: str = "") -> bargauge.Panel:
    """A horizontal bar gauge with one bar per series of an instant query."""
    panel = (bargauge.Panel().title(title).description(description).datasource(DATASOURCE)
             .targets(_targets([target])).unit(unit).span(width).height(8).min(0)
             .orientation(VizOrientation.HORIZONTAL).display_mode(BarGaugeDisplayMode.GRADIENT)
             .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    return panel.max(max_value) if max_value is not None else panel


def row(title: str) -> dashboard.Row:
    """An expanded row; the panels added after it belong to it."""
    return dashboard.Row(title).collapsed(False).datasource(DATASOURCE)


def _datasource_variable() -> dashboard.DatasourceVariable:
    return dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")


def _label_variable(name: str, label: str, promql: str) -> dashboard.QueryVariable:
    return (dashboard.QueryVariable(name).label(label).datasource(DATASOURCE).query(promql)
            .definition(promql).multi(True).include_all(True).all_value(".*")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC))


def _base(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (dashboard.Dashboard(title).uid(uid).description(description).tags(TAGS)
            .time("now-1h", "now").refresh("30s").timezone("browser").annotations([])
            .with_variable(_datasource_variable()))


def dimension(title: str, metric: str, description: str) -> timeseries.Panel:
    """One affect dimension per speaker, -1..1; three fit side by side."""
    return (graph(title, [query(f"{metric}{{{SPEAKERS}}}", "{{speaker}} ({{call}})")], width=8,
                  description=description).min(-1).max(1).decimals(2))


def call_monitor() -> dashboard.Dashboard:
    """Per-call, per-speaker affect: stress, arousal, valence, dominance, emotion mix, speech,
    spikes."""
    spikes = (dashboard.AnnotationQuery().name("Stress spikes").datasource(DATASOURCE).enable(True)
              .icon_color("red").expr(f"changes(affect_stress_spikes_total{{{SPEAKERS}}}[1m]) > 0")
              .step("1m").title_format("Stress spike").text_format("{{speaker}} in call {{call}}")
              .tag_keys("call,speaker"))
    relative = ("A relative vocal-stress indicator: the evidence built up over the speaker's "
                "recent speech that their voice has moved from their own calm baseline in "
                "stress-linked directions (0 = none; it rises while the shift lasts and drains "
                "when it ends). It is not a clinical or cortisol measure. The line marks the "
                f"default spike threshold ({STRESS_SPIKE_ON}).")
    return (
        _base(CALL_MONITOR_UID, "affect-bridge / Call monitor",
              "Live voice affect of the speakers in the selected calls.")
        .with_variable(_label_variable("call", "Call", "label_values(affect_stress_index, call)"))
        .with_variable(_label_variable(
            "speaker", "Speaker", 'label_values(affect_stress_index{call=~"$call"}, speaker)'))
        .annotation(spikes)
        .with_panel(single("Active speakers", query(
            f"count(affect_stress_index{{{SPEAKERS}}}) or vector(0)", instant=True), width=8,
            description="Speakers in the selected calls whose voice is being analysed now."))
        .with_panel(single("Stress spikes in range", query(
            f"sum(increase(affect_stress_spikes_total{{{SPEAKERS}}}[$__range])) or vector(0)",
            instant=True), width=8, description="Stress spikes that started in the time range."))
        .with_panel(single("Peak stress in range", query(
            f"max(max_over_time(affect_stress_index{{{SPEAKERS}}}[$__range]))", instant=True),
            decimals=2, width=8, description="The highest stress index of the selected speakers."))
        .with_panel(graph("Stress index", [query(
            f"affect_stress_index{{{SPEAKERS}}}", "{{speaker}} ({{call}})")], width=24, height=9,
            description=relative)
            .min(0).max(1).decimals(2)
            .thresholds(_thresholds((None, "green"), (STRESS_SPIKE_ON, "red")))
            .thresholds_style(common.GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.DASHED)))
        .with_panel(dimension("Arousal", "affect_arousal",
                              "Arousal from the emotion model, -1 (calm) to 1 (excited)."))
        .with_panel(dimension("Valence", "affect_valence",
                              "Valence from the emotion model, -1 (negative) to 1 (positive)."))
        .with_panel(dimension("Dominance", "affect_dominance",
                              "Dominance from a dimensional emotion model, -1 (submissive) to 1 "
                              "(dominant). Empty with a categorical model, which gives none."))
        .with_panel(bars("Emotion mix", query(
            f"avg by (emotion) (affect_emotion_probability{{{SPEAKERS}}})", "{{emotion}}", instant=True),
            unit="percentunit", max_value=1,
            description="Latest emotion probabilities, averaged over the selected speakers."))
        .with_panel(bars("Speech time in range", query(
            f"sum by (call, speaker) (increase(affect_speech_seconds_total{{{SPEAKERS}}}[$__range]))",
            "{{speaker}} ({{call}})", instant=True), unit="s",
            description="Voiced seconds heard per speaker in the time range."))
        .with_panel(graph("Talk share", [query(
            f"rate(affect_speech_seconds_total{{{SPEAKERS}}}[$__rate_interval])", "{{speaker}} ({{call}})")],
            unit="percentunit", width=24,
            description="Fraction of the time each speaker is voiced.").min(0).max(1))
    )


def operations() -> dashboard.Dashboard:
    """Process-wide health: load, latency, inference, drops, webhooks, process."""
    def quantiles(metric: str, by: str, legend: str) -> list[prometheus.Dataquery]:
        return [query(f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket[{RATE}])))",
                      f"{legend}p{int(q * 100)}") for q in (0.5, 0.99)]

    def deliveries(selector: str = "") -> str:
        return f"sum by (endpoint, outcome) (rate(affect_webhook_deliveries_total{selector}[{RATE}]))"

    return (
        _base(OPERATIONS_UID, "affect-bridge / Bridge operations",
              "Load, latency, inference, drops and webhook delivery of the bridge processes.")
        .with_row(row("Load"))
        .with_panel(graph("Calls and speakers active", [
            query("sum(affect_calls_active)", "calls"), query("sum(affect_speakers_active)", "speakers")]))
        .with_panel(graph("Audio frames per second", [query(
            f"sum by (instance) (rate(affect_audio_frames_total[{FAST_RATE}]))", "{{instance}}")],
            unit="cps"))
        .with_row(row("Latency and inference"))
        .with_panel(graph("Pipeline latency", quantiles(
            "affect_pipeline_latency_seconds", "le", ""), unit="s",
            description="From the end of a speech window to its affect.sample being published."))
        .with_panel(graph("Inference time by analyzer", quantiles(
            "affect_inference_seconds", "le, analyzer", "{{analyzer}} "), unit="s",
            description="Model time per inference batch."))
        .with_panel(graph("Mean inference batch size", [query(
            f"sum by (analyzer) (rate(affect_inference_batch_size_sum[{RATE}]))"
            f" / sum by (analyzer) (rate(affect_inference_batch_size_count[{RATE}]))", "{{analyzer}}")]))
        .with_panel(graph("Drops by stage", [query(
            f"sum by (stage) (rate(affect_dropped_total[{RATE}]))", "{{stage}}")], unit="cps",
            description="Work dropped per stage: window_queue, inference_<analyzer>, webhook_outbox, "
                        "metrics (speakers over the cap)."))
        .with_row(row("Webhooks"))
        .with_panel(graph("Webhook deliveries", [query(
            deliveries(), "{{endpoint}} {{outcome}}")], unit="reqps"))
        .with_panel(graph("Webhook failures", [query(
            deliveries('{outcome=~"failed|disabled"}'), "{{endpoint}} {{outcome}}")],
            unit="reqps", description="Deliveries that ran out of retries, or endpoints disabled by 410."))
        .with_panel(graph("Webhook outbox depth", [query(
            "sum by (instance) (affect_webhook_outbox_pending)", "{{instance}}")],
            description="Rows waiting in each replica's webhook outbox."))
        .with_panel(graph("Webhook request duration p99", [query(
            f"histogram_quantile(0.99, sum by (le, endpoint) "
            f"(rate(affect_webhook_delivery_seconds_bucket[{RATE}])))", "{{endpoint}}")], unit="s"))
        .with_row(row("Process"))
        .with_panel(graph("Process CPU", [query(
            f"rate(process_cpu_seconds_total[{FAST_RATE}]) and on (job, instance) affect_build_info",
            "{{instance}}")], unit="percentunit",
            description="The bridge process (prometheus_client process collector, Linux)."))
        .with_panel(graph("Process memory", [query(
            "process_resident_memory_bytes and on (job, instance) affect_build_info", "{{instance}}")],
            unit="bytes",
            description="The bridge process (prometheus_client process collector, Linux)."))
    )


def dashboards() -> dict[str, Callable[[], dashboard.Dashboard]]:
    """The dashboards by uid."""
    return {CALL_MONITOR_UID: call_monitor, OPERATIONS_UID: operations}


def render(builder: dashboard.Dashboard) -> str:
    """Deterministic JSON: panels numbered in order, sorted keys, trailing newline."""
    data: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for number, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = number
    for annotation in data["annotations"]["list"]:
        # The SDK moves every annotation toggle into the controls menu; keep them in sight.
        annotation.pop("placement", None)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def outputs() -> dict[Path, str]:
    """Every file this script owns and its contents."""
    rendered = {uid: render(make()) for uid, make in dashboards().items()}
    return {folder / f"{uid}.json": text for folder in OUTPUT_DIRS for uid, text in rendered.items()}


def _stale(wanted: dict[Path, str]) -> list[Path]:
    return [path for path, text in wanted.items()
            if not path.is_file() or path.read_text(encoding="utf-8") != text]


def check() -> list[Path]:
    """The files that are missing or differ from what would be written."""
    return _stale(outputs())


def write() -> list[Path]:
    """Write the files that differ; returns them."""
    wanted = outputs()
    stale = _stale(wanted)
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted[path], encoding="utf-8")
    return stale


def _display(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        stale = check()
        for path in stale:
            print(f"out of date: {_display(path)} (run python dashboards/generate.py)", file=sys.stderr)
        return 1 if stale else 0
    for path in write():
        print(f"wrote {_display(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
