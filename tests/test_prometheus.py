"""A real Prometheus (Debian ``prometheus``) scrapes a running bridge in a live call; promtool
checks the exposition and unit-tests the alert rules."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.config import load_settings
from bridge.control.app import MANAGER, build_app
from bridge.demo.media_source import DemoSource
from bridge.demo.run import DEMO_SPEAKERS
from tests.conftest import ROOT, SOURCE_TOKEN, free_port, require_tool
from tests.test_dashboards import _panels, substitute
from tests.webhook_helpers import SECRET_A, Receiver

RULES = ROOT / "helm" / "affect-bridge" / "files" / "alerts.rules.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yml"
TOKEN = "prom-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_alert_rules_pass_promtool() -> None:
    promtool = require_tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "6 rules found" in check.stdout
    unit = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True,
                          text=True, check=False, cwd=RULE_TESTS.parent)
    assert unit.returncode == 0, unit.stdout + unit.stderr


@pytest.fixture
async def bridge(source: DemoSource, tiny_emotion_model: Path, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[web.Application, str]]:
    """The service with prosody, a (tiny) emotion model and a webhook to a live receiver, so
    every metric the dashboards show has series."""
    monkeypatch.setenv("AFFECT_BRIDGE_WEBHOOK_SECRET", SECRET_A)
    receiver = await Receiver().start()
    settings = load_settings(
        analyzers=["prosody", "emotion"], emotion={"model": str(tiny_emotion_model)},
        live={"silence_timeout_s": 30.0}, webhooks=[{"url": receiver.url, "name": "hooks"}],
        outbox={"path": str(tmp_path / "outbox.sqlite3")}, outbound={"allow": ["127.0.0.1"]})

    async def discard(event: Any) -> None:
        return None

    app = build_app(settings, token=TOKEN, emit=discard)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield app, f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        await receiver.stop()


async def _prometheus(tmp_path: Path, target: str) -> tuple[asyncio.subprocess.Process, str]:
    binary = require_tool("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{RULES}']\n"
        "scrape_configs:\n  - job_name: affect-bridge\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n")
    address = f"127.0.0.1:{free_port()}"
    proc = await asyncio.create_subprocess_exec(
        binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address={address}", "--log.level=warn",
        stdout=asyncio.subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"))
    return proc, f"http://{address}"


async def _until(check: Any, what: str, limit_s: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy (the bound only stops a hang)."""
    try:
        async with asyncio.timeout(limit_s):
            while True:  # polling another process's state
                if result := await check():
                    return result
                await asyncio.sleep(0.5)
    except TimeoutError:
        raise AssertionError(f"never: {what}") from None


async def _promtool_query(url: str, query: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        require_tool("promtool"), "query", "instant", url, query,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return out.decode() if proc.returncode == 0 else ""


# Series only a dimensional emotion model gives; the tiny test model is categorical.
DIMENSIONAL_ONLY = ("affect_dominance",)


async def _every_panel_has_data(prom: str, http: aiohttp.ClientSession, call_id: str) -> None:
    """Every panel's PromQL, variables substituted, returns data from this Prometheus; panels of
    DIMENSIONAL_ONLY series are queried too and must be empty (a categorical model)."""
    subst = {"datasource": "prometheus", "call": call_id, "speaker": ".*", "__range": "5m",
             "__rate_interval": "1m", "__interval": "1m"}
    queries: dict[str, str] = {}
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        for panel in _panels(dash["panels"]):
            for target in panel.get("targets", []):
                queries[f"{dash['uid']} / {panel['title']}"] = substitute(target["expr"], subst)
    assert len(queries) > 15

    async def empty() -> list[str]:
        missing = []
        for title, query in queries.items():
            async with http.get(f"{prom}/api/v1/query", params={"query": query}) as resp:
                body = await resp.json()
            assert body["status"] == "success", (title, query, body)
            dimensional = any(name in query for name in DIMENSIONAL_ONLY)
            if bool(body["data"]["result"]) == dimensional:
                missing.append(f"{title}: {query}" + (" (has data)" if dimensional else ""))
        return missing

    async def all_have_data() -> bool:
        return not await empty()

    try:
        await _until(all_have_data, "data for every dashboard panel", limit_s=90)
    except AssertionError:
        raise AssertionError(f"panels without the data they should have: {await empty()}") from None


async def test_prometheus_scrapes_per_speaker_series_of_a_live_call(
        tmp_path: Path, source: DemoSource, bridge: tuple[web.Application, str]) -> None:
    app, target = bridge
    promtool = require_tool("promtool")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://{target}/v1/calls", headers=AUTH, json={
                "connector": "whep", "url": source.url, "token": SOURCE_TOKEN, "tracks": 3,
                "displays": list(DEMO_SPEAKERS)}) as resp:
            assert resp.status == 201
            call_id = (await resp.json())["id"]

        async def exposition() -> str:
            async with http.get(f"http://{target}/metrics") as resp:
                assert resp.status == 200
                return await resp.text()

        async def every_speaker_has_an_index() -> str:
            text = await exposition()
            return text if len(re.findall(r"^affect_stress_index\{", text, re.M)) == 3 else ""

        text = await _until(every_speaker_has_an_index, "a stress index for every speaker")
        check = await asyncio.create_subprocess_exec(
            promtool, "check", "metrics", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        lint, _ = await check.communicate(text.encode())
        assert check.returncode == 0 and lint == b"", lint.decode()
        for name in ("affect_build_info", "affect_calls_active 1.0", "affect_speakers_active 3.0",
                     "affect_audio_frames_total", "affect_speech_seconds_total{",
                     "affect_pipeline_latency_seconds_bucket", "affect_stress_spikes_total{"):
            assert name in text, name

        proc, prom = await _prometheus(tmp_path, target)
        try:
            async def scraped() -> str:
                out = await _promtool_query(prom, "affect_stress_index")
                return out if out.count("affect_stress_index{") == 3 else ""

            out = await _until(scraped, "Prometheus has the per-speaker series")
            manager = app[MANAGER]
            speakers = list(manager.calls[call_id].speakers)
            for speaker in speakers:
                assert f'speaker="{speaker}"' in out and f'call="{call_id}"' in out
            up = await _promtool_query(prom, 'up{job="affect-bridge"}')
            assert "=> 1 @" in up
            await _every_panel_has_data(prom, http, call_id)
        finally:
            proc.terminate()
            await proc.wait()

        # A speaker leaves (the connector's speaker-left callback): its series go, others stay.
        gone = speakers[0]
        await manager.calls[call_id].connector._on_speaker_left(gone, "left")
        text = await exposition()
        assert f'speaker="{gone}"' not in text
        assert len(re.findall(r"^affect_stress_index\{", text, re.M)) == 2

        async with http.delete(f"http://{target}/v1/calls/{call_id}", headers=AUTH) as resp:
            assert resp.status == 200
        text = await exposition()
        assert "speaker=" not in text and "affect_calls_active 0.0" in text
