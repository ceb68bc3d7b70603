"""The Helm chart: renders with default and non-default values, lints clean, its schema rejects
bad values, and the rendered manifests validate against a current Kubernetes (kubernetes-validate).

Helm itself comes from helm-python-sdk (Helm's Go SDK bundled in a wheel; there is no helm binary
in the reachable registries).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from bridge.config import load_settings
from tests.conftest import ROOT

CHART = ROOT / "helm" / "affect-bridge"
K8S_VERSION = "1.34.0"  # a current release (kubernetes-validate knows up to 1.37)
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # Prometheus Operator CRDs: not core schemas

NON_DEFAULT = {
    "replicaCount": 3,
    "gpu": {"enabled": True},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                       "metricsToken": True},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "existingSecret": "affect-bridge-secrets",
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name="ab", namespace="monitoring")
    docs = []
    for name, text in out.items():
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [sts] = by_kind(docs, "StatefulSet")
    [container] = sts["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_lints_clean() -> None:
    result = helm.lint(str(CHART))
    assert result["errors"] == [] and result["messages"] == [], result


@pytest.mark.parametrize("values", [{}, NON_DEFAULT], ids=["defaults", "non-default"])
def test_rendered_manifests_validate_against_kubernetes(values: dict[str, Any]) -> None:
    docs = render(values)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Service", "ConfigMap", "ServiceAccount"} <= kinds
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_defaults_secure_pod_and_valid_config(tmp_path: Path) -> None:
    docs = render({})
    container = _container(docs)
    sec = container["securityContext"]
    assert sec["readOnlyRootFilesystem"] and not sec["allowPrivilegeEscalation"]
    assert sec["capabilities"]["drop"] == ["ALL"]
    [sts] = by_kind(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "outbox"
    assert {s["metadata"]["name"] for s in by_kind(docs, "Secret")} == {"ab-affect-bridge"}
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PrometheusRule")
    # The config the pod reads is one the service accepts (with the shard the pod gets).
    [config] = [c for c in by_kind(docs, "ConfigMap") if "config.toml" in (c.get("data") or {})]
    toml_text = config["data"]["config.toml"]
    parsed = tomllib.loads(toml_text)
    assert parsed["listen"] == "0.0.0.0:9464"
    assert parsed["outbox"]["path"].startswith("/var/lib/affect-bridge/")
    path = tmp_path / "config.toml"
    path.write_text(toml_text)
    settings = load_settings(path, shard={"index": 0, "count": 1})
    assert settings.listen == "0.0.0.0:9464"


def test_non_default_values_shard_gpu_monitoring_and_existing_secret() -> None:
    docs = render(NON_DEFAULT)
    [sts] = by_kind(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    container = _container(docs)
    env = _env(container)
    assert env["AFFECT_BRIDGE_SHARD__COUNT"] == "3"
    assert env["AFFECT_BRIDGE_SHARD__INDEX"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}
    assert env["AFFECT_BRIDGE_API_TOKEN"]["secretKeyRef"]["name"] == "affect-bridge-secrets"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["AFFECT_BRIDGE_CACHE_DIR"].startswith("/var/lib/affect-bridge/")  # the volume
    assert "/var/lib/affect-bridge" in mounts
    assert not by_kind(docs, "Secret")  # the existing one is used
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    pod = sts["spec"]["template"]["spec"]
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod["tolerations"])
    [monitor] = by_kind(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    # /metrics protected: the bridge reads the token from the Secret, Prometheus scrapes with it
    assert env["AFFECT_BRIDGE_METRICS_TOKEN"]["secretKeyRef"] == {
        "name": "affect-bridge-secrets", "key": "metrics-token", "optional": True}
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"] == {
        "name": "affect-bridge-secrets", "key": "metrics-token"}
    [rule] = by_kind(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules_file = yaml.safe_load((CHART / "files" / "alerts.rules.yml").read_text())
    assert rule["spec"]["groups"] == rules_file["groups"]  # the promtool-tested rules


def test_dashboards_configmap_carries_the_generated_json() -> None:
    docs = render({})
    [cm] = [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("dashboards")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = sorted((CHART / "files" / "dashboards").glob("*.json"))
    assert files, "no dashboards generated (dashboards/generate.py)"
    assert sorted(cm["data"]) == [f.name for f in files]
    for f in files:
        assert json.loads(cm["data"][f.name]) == json.loads(f.read_text())


@pytest.mark.parametrize("values", [
    {"replicaCount": -1},
    {"replicaCount": 0},
    {"replicas": 3},  # unknown top-level key
    {"gpu": {"enabled": "yes"}},
    {"service": {"port": 70000}},
    {"config": {"shard": {"index": 1}}},  # set by the chart, not by hand
])
def test_schema_rejects_bad_values(values: dict[str, Any]) -> None:
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmError):
            chart.validate_schema(values)
        with pytest.raises(helm.HelmError):
            chart.render(values, name="ab", namespace="monitoring")
