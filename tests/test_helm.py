"""The Helm chart: renders with default and non-default values, lints clean, its schema rejects
bad values, and the rendered manifests validate against a current Kubernetes (kubernetes-validate).

Helm itself comes from helm-python-sdk (Helm's Go SDK bundled in a wheel; there is no helm binary
in the reachable registries).
"""

from __future__ import annotations

import json
import os
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from bridge.config import Settings, load_settings
from bridge.control.routing import Router
from bridge.control.shard import owns
from tests.conftest import ROOT

CHART = ROOT / "helm" / "affect-bridge"
K8S_VERSION = "1.34.0"  # a current release (kubernetes-validate knows up to 1.37)
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # Prometheus Operator CRDs: not core schemas

NON_DEFAULT = {
    "replicaCount": 3,
    "workers": 4,
    "service": {"port": 8123},
    "gpu": {"enabled": True, "image": {"repository": "registry.example/affect-bridge",
                                       "tag": "0.1.0-cuda"}},
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
    assert container["image"] == "registry.example/affect-bridge:0.1.0-cuda"
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
    {"config": {"workers": 2}},  # the top-level workers value sets it
    {"workers": 0},
    {"workers": "many"},
    {"gpu": {"image": {"name": "x"}}},
])
def test_schema_rejects_bad_values(values: dict[str, Any]) -> None:
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmError):
            chart.validate_schema(values)
        with pytest.raises(helm.HelmError):
            chart.render(values, name="ab", namespace="monitoring")


# --- The chart as deployed: one port everywhere, pods addressable, the replica count -----------

PREFIX = "AFFECT_BRIDGE_"


def _dockerfile() -> tuple[dict[str, str], list[str]]:
    """The image's environment (every ENV line) and its CMD, from the Dockerfile."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    cmd: list[str] = []
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                env[name] = value
        elif word == "CMD":
            cmd = json.loads(rest)
    return env, cmd


def _config(docs: list[dict[str, Any]]) -> str:
    [cm] = [c for c in by_kind(docs, "ConfigMap") if "config.toml" in (c.get("data") or {})]
    return str(cm["data"]["config.toml"])


def _pod_settings(docs: list[dict[str, Any]], ordinal: int, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings pod ``ordinal`` runs with: the rendered config.toml under the image's
    environment and then the pod's (downward-API index, placeholder secrets), as in the pod."""
    image_env, _ = _dockerfile()
    pod_env: dict[str, str] = dict(image_env)
    for name, value in _env(_container(docs)).items():
        if isinstance(value, str):
            pod_env[name] = value
        elif "fieldRef" in value:
            assert value["fieldRef"]["fieldPath"] == (
                "metadata.labels['apps.kubernetes.io/pod-index']")
            pod_env[name] = str(ordinal)
        else:
            pod_env[name] = f"placeholder-{name.lower()}"
    for name in [n for n in os.environ if n.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in pod_env.items():
        if name.startswith(PREFIX) or name == "HF_HUB_OFFLINE":
            monkeypatch.setenv(name, value)
    path = tmp_path / f"config-{ordinal}.toml"
    path.write_text(_config(docs))
    return load_settings(path)


def _named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def _set_keys(table: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    keys = set()
    for key, value in table.items():
        keys.add((*prefix, key))
        if isinstance(value, dict):
            keys |= _set_keys(value, (*prefix, key))
    return keys


def test_a_non_default_port_is_where_the_pod_listens_and_is_probed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """service.port 8123: the config's listen, the container port, all three probes, both
    Services and the ServiceMonitor agree, and nothing in the image's or the pod's environment
    overrides a key the rendered config sets (the environment beats the file)."""
    docs = render({"service": {"port": 8123}, "replicaCount": 2,
                   "serviceMonitor": {"enabled": True}})
    config = tomllib.loads(_config(docs))
    assert config["listen"] == "0.0.0.0:8123"
    container = _container(docs)
    assert [p["containerPort"] for p in container["ports"]] == [8123]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert _named_port(container, container[probe]["httpGet"]["port"]) == 8123, probe
    for service in by_kind(docs, "Service"):
        [port] = service["spec"]["ports"]
        assert port["port"] == 8123
        assert _named_port(container, port["targetPort"]) == 8123
    [monitor] = by_kind(docs, "ServiceMonitor")
    [service] = [s for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") != "None"]
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]

    # The image: no AFFECT_BRIDGE_* at all; a plain `docker run` listens on 9464 through CMD,
    # which the chart replaces with its own args (no --listen: the config decides).
    image_env, cmd = _dockerfile()
    assert "HF_HUB_OFFLINE" in image_env  # the parser sees the ENV lines
    assert not [n for n in image_env if n.startswith(PREFIX)]
    assert cmd == ["run", "--listen", "0.0.0.0:9464"]
    assert container["args"] == ["run", "--config", "/etc/affect-bridge/config.toml"]
    assert "command" not in container  # the image's ENTRYPOINT (affect-bridge) stays
    # The pod's AFFECT_BRIDGE_* variables touch no key the config file sets.
    rendered = _set_keys(config)
    for name in _env(container):
        if name.startswith(PREFIX):
            path = tuple(name[len(PREFIX):].lower().split("__"))
            assert path not in rendered, f"{name} would override the chart's config"
    assert "AFFECT_BRIDGE_LISTEN" not in _env(container)
    # Together, as the container sees them.
    settings = _pod_settings(docs, 1, tmp_path, monkeypatch)
    assert settings.listen == "0.0.0.0:8123"
    assert (settings.shard.index, settings.shard.count) == (1, 2)


def test_each_pod_is_addressable_through_the_headless_service(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render({"replicaCount": 3, "service": {"port": 8123}})
    [sts] = by_kind(docs, "StatefulSet")
    [headless] = [s for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") == "None"]
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"] == "ab-affect-bridge-headless"
    assert headless["spec"]["publishNotReadyAddresses"] is True  # starting pods own calls too
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= pod_labels.items()
    # A pod's DNS name is <pod>.<serviceName>.<namespace>.svc; the config's peer addresses are
    # exactly those names on the service port.
    names = [f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}.monitoring.svc"
             for i in range(3)]
    assert names[2] == "ab-affect-bridge-2.ab-affect-bridge-headless.monitoring.svc"
    settings = _pod_settings(docs, 0, tmp_path, monkeypatch)
    for i, name in enumerate(names):
        url = settings.shard.peer(i)
        assert url is not None
        assert (urlsplit(url).hostname, urlsplit(url).port) == (name, 8123)


CALL_IDS = [f"janus:{room}" for room in range(1, 301)] + [f"whep:{i:012x}" for i in range(200)]


@pytest.mark.parametrize("counts", [(2, 3), (3, 2)], ids=["scale-up", "scale-down"])
def test_changing_the_replica_count_rolls_every_pod_and_gives_each_call_one_owner(
        counts: tuple[int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the roll every pod runs with the new count: every call id (what auto-join and the
    control API both shard by) has exactly one owning pod, and every pod forwards a call's
    requests to that same pod."""
    before, after = (render({"replicaCount": n}) for n in counts)
    [sts_before], [sts_after] = by_kind(before, "StatefulSet"), by_kind(after, "StatefulSet")
    # The pod template changes, so the StatefulSet controller replaces every pod.
    assert sts_before["spec"]["template"] != sts_after["spec"]["template"]
    assert sts_after["spec"].get("updateStrategy", {}).get("type", "RollingUpdate") == (
        "RollingUpdate")
    for docs, count in ((before, counts[0]), (after, counts[1])):
        pods = [_pod_settings(docs, i, tmp_path, monkeypatch).shard for i in range(count)]
        assert [(p.index, p.count) for p in pods] == [(i, count) for i in range(count)]
        for call_id in CALL_IDS:
            owners = [p.index for p in pods if owns(call_id, p.index, p.count)]
            assert len(owners) == 1, call_id
            forwarded_to = {Router(p).elsewhere(call_id) for p in pods} - {None}
            assert forwarded_to == {(owners[0], pods[0].peer(owners[0]))}, call_id


def test_workers_value_goes_into_the_config(tmp_path: Path) -> None:
    assert tomllib.loads(_config(render({})))["workers"] == "auto"
    text = _config(render({"workers": 3}))
    assert tomllib.loads(text)["workers"] == 3
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert load_settings(path).worker_count() == 3


def test_remote_emotion_values_become_a_valid_config(tmp_path: Path) -> None:
    """Emotion on an inference server, as the values file's comment shows it."""
    remote = {"url": "http://triton.inference.svc:8000", "model": "affect-emotion",
              "labels": ["neutral", "happy", "angry", "sad"], "token_env": "INFERENCE_TOKEN"}
    text = _config(render({"config": {"emotion": {"backend": "remote", "remote": remote}}}))
    path = tmp_path / "config.toml"
    path.write_text(text)
    settings = load_settings(path)
    assert settings.emotion.backend == "remote"
    assert settings.emotion.remote.url == remote["url"]
    assert settings.emotion.remote.labels == remote["labels"]


def test_gpu_needs_a_cuda_image() -> None:
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmError, match=r"gpu\.enabled needs gpu\.image\.repository"
                                                 r".*TORCH_INDEX"):
            chart.render({"gpu": {"enabled": True}}, name="ab", namespace="monitoring")
    docs = render({"gpu": {"enabled": True, "image": {"repository": "registry.example/ab-cuda"}}})
    container = _container(docs)
    assert container["image"] == "registry.example/ab-cuda:0.1.0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _container(render({}))["image"] == "ghcr.io/affect-bridge/affect-bridge:0.1.0"
