#!/usr/bin/env python
"""Benchmark: webhook events through the durable outbox to a healthy local receiver.

The sink under test is the product's ``WebhookSink`` (SQLite outbox in WAL mode, signing with
two secrets, one endpoint, default ``max_in_flight``). The receiver is a plain aiohttp server in
a separate process on 127.0.0.1 that answers 204 and records when each ``webhook-id`` arrived.

* **throughput**: N events emitted back to back; events per second from the first emit to the
  last delivery (every event committed to the outbox, delivered, and its row removed).
* **latency**: events emitted at a steady rate (default 500/s, about half the throughput
  target); event-to-delivery latency = arrival at the receiver - the moment ``emit`` was
  called, p50 / p99 / max (same machine clock).

This is not a test: it prints figures (and JSON with --json); PASS/FAIL against the targets
(>= 1,000 events/s; p99 < 100 ms) is for information.

    .venv/bin/python tests/bench/bench_webhooks.py [--events N] [--rate R] [--seconds S]
        [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

RECEIVER = r"""
import asyncio, json, sys, time
from aiohttp import web
arrivals = {}
async def hook(request):
    await request.read()
    arrivals.setdefault(request.headers["webhook-id"], time.time())
    return web.Response(status=204)
async def dump(request):
    return web.json_response(arrivals)
async def main():
    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/arrivals", dump)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def run(args: argparse.Namespace) -> dict[str, object]:
    import aiohttp

    from bridge.config import OutboxSettings, WebhookSettings
    from bridge.delivery.webhook import WebhookSink
    from tests.webhook_helpers import joined

    secrets = " ".join("whsec_" + base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    os.environ["AFFECT_BRIDGE_WEBHOOK_SECRET"] = secrets
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RECEIVER, stdout=asyncio.subprocess.PIPE)
    assert receiver.stdout is not None
    port = int(await receiver.stdout.readline())
    url = f"http://127.0.0.1:{port}/hook"
    results: dict[str, object] = {"python": sys.version.split()[0], "cores": os.cpu_count()}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async def phase(name: str, n: int, rate: float | None) -> dict[str, float]:
                sink = WebhookSink([WebhookSettings(url=url, name="bench")],
                                   OutboxSettings(path=Path(tmp) / f"{name}.sqlite3"))
                await sink.start()
                emitted: dict[str, float] = {}
                events = [joined(i) for i in range(n)]
                cpu0, t0 = time.process_time(), time.time()
                for i, event in enumerate(events):
                    if rate is not None:
                        delay = t0 + i / rate - time.time()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    emitted[event.id] = time.time()
                    await sink.emit(event)
                async with aiohttp.ClientSession() as http:
                    while True:
                        async with http.get(f"http://127.0.0.1:{port}/arrivals") as resp:
                            arrivals = await resp.json()
                        if all(i in arrivals for i in emitted):
                            break
                        await asyncio.sleep(0.05)
                while True:  # until every delivered row has been removed
                    if sink.pending <= 0:
                        break
                    await asyncio.sleep(0.01)
                wall = max(arrivals[i] for i in emitted) - t0
                cpu = time.process_time() - cpu0
                await sink.aclose()
                lat = sorted((arrivals[i] - emitted[i]) * 1000 for i in emitted)
                return {"events": n, "wall_s": round(wall, 3),
                        "events_per_s": round(n / wall, 1),
                        "sink_cpu_ms_per_event": round(cpu / n * 1000, 3),
                        "latency_ms_p50": round(statistics.median(lat), 1),
                        "latency_ms_p99": round(lat[int(0.99 * (len(lat) - 1))], 1),
                        "latency_ms_max": round(lat[-1], 1)}

            results["throughput"] = await phase("throughput", args.events, None)
            n = int(args.rate * args.seconds)
            results["latency"] = await phase("latency", n, args.rate)
    finally:
        receiver.kill()
        await receiver.wait()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    results = asyncio.run(run(args))
    tp, lat = results["throughput"], results["latency"]
    assert isinstance(tp, dict) and isinstance(lat, dict)
    print(f"throughput: {tp['events']} events back to back -> {tp['events_per_s']} events/s "
          f"delivered ({tp['sink_cpu_ms_per_event']} ms sink CPU per event); latency under "
          f"that load p50 {tp['latency_ms_p50']} ms, p99 {tp['latency_ms_p99']} ms")
    print(f"latency at {args.rate:g} events/s for {args.seconds:g} s: p50 {lat['latency_ms_p50']}"
          f" ms, p99 {lat['latency_ms_p99']} ms, max {lat['latency_ms_max']} ms")
    print(f"targets: >= 1000 events/s: {'PASS' if tp['events_per_s'] >= 1000 else 'FAIL'}; "
          f"p99 < 100 ms (healthy receiver, steady rate): "
          f"{'PASS' if lat['latency_ms_p99'] < 100 else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
