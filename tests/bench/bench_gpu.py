#!/usr/bin/env python
"""Benchmark: emotion inference on a GPU, audio-seconds per second against batch size, next to the
device's bf16 matmul-bound limit. One short run (well under 5 minutes on one GPU).

The model is a random-init wav2vec2-base classifier (the default checkpoint's architecture and
compute; random weights compute what trained ones do), run the way the bridge runs it on CUDA:
``EmotionModel.predict`` on equal-length chunks (``emotion_chunk_s``, 4 s), bf16 where the GPU
has it (else fp16), batches of 1 to ``--max-batch``. The limit: wav2vec2-base costs about 13.9
GFLOP per audio-second (measured from the model's FLOP count, printed), so a device that does F
bf16 FLOP/s on a large matmul can do at most F / 13.9e9 audio-s/s.

    .venv/bin/python tests/bench/bench_gpu.py [--max-batch 512] [--seconds 4] [--json OUT]

Without CUDA it says so and exits 0 (nothing measured). Figures go to stdout and, with --json,
to a file. Not a test: nothing here is compared with a limit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
SR = 16_000


def matmul_limit(torch: object, dtype: object, n: int = 8192, repeat: int = 20) -> float:
    """The device's sustained FLOP/s on an n x n matmul in ``dtype``."""
    import torch as t

    a = t.randn(n, n, device="cuda", dtype=dtype)
    b = t.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    t.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeat):
        a @ b
    t.cuda.synchronize()
    return 2 * n**3 * repeat / (time.perf_counter() - started)


def model_flops_per_audio_s(model: object, seconds: float) -> float:
    """FLOPs of one forward pass per audio-second, counted by torch's FLOP counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, int(seconds * SR), device="cuda",
                    dtype=next(model.parameters()).dtype)  # type: ignore[attr-defined]
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)  # type: ignore[operator]
    return counter.get_total_flops() / seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-batch", type=int, default=512)
    p.add_argument("--seconds", type=float, default=4.0, help="chunk length (emotion_chunk_s)")
    p.add_argument("--budget-s", type=float, default=150.0, help="stop adding batch sizes after")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: torch sees no CUDA device here: nothing measured")
        return 0
    from bench_pipeline import build_model  # tests/bench/, beside this script

    from analyzers.emotion import EmotionConfig, EmotionModel

    started = time.perf_counter()
    name = torch.cuda.get_device_name(0)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    limit_flops = matmul_limit(torch, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp))
        model = EmotionModel(EmotionConfig(model=str(model_dir), device="cuda",
                                           precision="auto", max_batch=args.max_batch))
        load_started = time.perf_counter()
        model.load()
        load_s = time.perf_counter() - load_started
    flops = model_flops_per_audio_s(model._model, args.seconds)
    limit = limit_flops / flops
    rng = np.random.default_rng(0)
    chunk = (0.1 * rng.standard_normal(int(args.seconds * SR))).astype(np.float32)
    rows = []
    batch = 1
    while batch <= args.max_batch and time.perf_counter() - started < args.budget_s:
        waves = [chunk] * batch
        model.predict(waves)  # warm-up (cuDNN/cuBLAS choose kernels for this shape)
        torch.cuda.synchronize()
        runs, t0 = 0, time.perf_counter()
        while runs < 3 or time.perf_counter() - t0 < 2.0:
            model.predict(waves)
            runs += 1
        torch.cuda.synchronize()
        rate = batch * args.seconds * runs / (time.perf_counter() - t0)
        rows.append({"batch": batch, "audio_s_per_s": round(rate, 1),
                     "of_limit": round(rate / limit, 3)})
        print(f"batch {batch:4d}: {rate:10.1f} audio-s/s  ({rate / limit:6.1%} of the limit)")
        batch *= 2
    result = {"device": name, "precision": model.precision, "load_s": round(load_s, 2),
              "matmul_tflops": round(limit_flops / 1e12, 1),
              "gflop_per_audio_s": round(flops / 1e9, 2),
              "limit_audio_s_per_s": round(limit, 1), "rows": rows,
              "torch": torch.__version__, "wall_s": round(time.perf_counter() - started, 1)}
    print(f"{name}, {model.precision}: large-matmul {limit_flops / 1e12:.1f} TFLOP/s, model "
          f"{flops / 1e9:.2f} GFLOP per audio-s -> limit {limit:,.0f} audio-s/s; best "
          f"{max(r['audio_s_per_s'] for r in rows):,.0f} audio-s/s "
          f"(batch {max(rows, key=lambda r: r['audio_s_per_s'])['batch']})")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
