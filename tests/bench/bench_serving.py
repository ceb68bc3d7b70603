"""Benchmark: the exported emotion model on a real MLServer, against concurrent clients.

What a shared inference server gives on this machine's CPU: audio-seconds per second served,
the round trip each client sees, and the server's CPU, for 1, 2, 4 and 8 concurrent clients
(each sends one 4 s chunk, waits for its answer, sends the next: as the bridge's speakers do),
with the runtime's batching on (up to 16 rows of equal length per forward pass, 20 ms wait) and
off (one row per pass), the two served side by side by one server and measured interleaved.

    .venv/bin/python tests/bench/bench_serving.py [--seconds 20] [--clients 1,2,4,8]
        [--threads 2] [--precision fp32] [--json out.json]

Model: a random-initialised wav2vec2-base classifier (bench_pipeline's, the compute of the real
model), exported by ``affect-bridge export-model``. Server: ``.venv-serving`` (made by
.ci/setup), on 127.0.0.1, on the same cores as the clients (their CPU is small: JSON of the
chunk, about 2 ms each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from procstat import tree_cpu  # noqa: E402

from analyzers.precision import processor  # noqa: E402
from tests.serving import ModelServer  # noqa: E402

CHUNK_S = 4.0
SR = 16_000


def chunk(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(CHUNK_S * SR)) / SR
    f0 = 120 + 80 * rng.random()
    wave = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))
    return (0.1 * wave + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


async def client(session: aiohttp.ClientSession, url: str, body: bytes, until: float,
                 latencies: list[float]) -> int:
    done = 0
    while time.monotonic() < until:
        started = time.perf_counter()
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}
                                ) as reply:
            await reply.read()
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}")
        latencies.append(time.perf_counter() - started)
        done += 1
    return done


async def measure(base: str, model: str, clients: int, seconds: float,
                  server: psutil.Process) -> dict[str, Any]:
    url = f"{base}/v2/models/{model}/infer"
    bodies = [orjson.dumps({"inputs": [{"name": "waveform", "shape": [1, int(CHUNK_S * SR)],
                                        "datatype": "FP32", "data": chunk(i)}]},
                           option=orjson.OPT_SERIALIZE_NUMPY) for i in range(clients)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        warm: list[float] = []
        await asyncio.gather(*(client(session, url, b, time.monotonic() + 1.0, warm)
                               for b in bodies))
        latencies: list[float] = []
        cpu0, t0 = tree_cpu(server), time.monotonic()
        counts = await asyncio.gather(*(client(session, url, b, t0 + seconds, latencies)
                                        for b in bodies))
        wall, cpu = time.monotonic() - t0, tree_cpu(server) - cpu0
    audio = sum(counts) * CHUNK_S
    return {"model": model, "clients": clients, "chunks": sum(counts),
            "audio_s_per_s": round(audio / wall, 2),
            "server_cpu_s_per_audio_s": round(cpu / audio, 4) if audio else None,
            "latency_p50_s": round(statistics.median(latencies), 3),
            "latency_p90_s": round(float(np.quantile(latencies, 0.9)), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="per measurement (20)")
    p.add_argument("--clients", default="1,2,4,8", help="concurrent clients (1,2,4,8)")
    p.add_argument("--threads", type=int, default=2, help="the server's torch threads (2)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "bf16+matmul"))
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    from bench_pipeline import build_model

    from bridge.offline.export import export_model

    print(f"processor: {processor()}")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        model = build_model(work / "wav2vec2-base-random")
        repo = work / "models"
        for name, batch, wait in (("batched", 16, 0.02), ("unbatched", 1, 0.0)):
            exported = export_model(str(model), repo, name=name, precision=args.precision)
            settings_path = exported.path / "model-settings.json"
            settings = json.loads(settings_path.read_text())
            settings["parameters"]["extra"].update(threads=args.threads, max_batch_size=batch,
                                                   max_batch_time=wait)
            settings_path.write_text(json.dumps(settings))
        server = ModelServer(repo, work)
        server.start()
        print(f"MLServer ready in {server.startups[-1]:.1f} s; wav2vec2-base (random), "
              f"{args.precision}, {args.threads} torch threads, {CHUNK_S:.0f} s chunks")
        try:
            assert server._proc is not None
            proc = psutil.Process(server._proc.pid)
            rows = []
            for clients in (int(c) for c in args.clients.split(",")):
                for name in ("batched", "unbatched"):
                    r = asyncio.run(measure(server.url, name, clients, args.seconds, proc))
                    rows.append(r)
                    print(f"  {name:9s} clients {clients}: {r['audio_s_per_s']:6.2f} audio-s/s, "
                          f"server {r['server_cpu_s_per_audio_s']} CPU-s per audio-s, "
                          f"round trip p50 {r['latency_p50_s']} s, p90 {r['latency_p90_s']} s")
        finally:
            server.stop()
    if args.json:
        args.json.write_text(json.dumps({"processor": processor(), "threads": args.threads,
                                         "precision": args.precision, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
