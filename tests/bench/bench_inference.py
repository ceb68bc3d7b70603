"""bench_pipeline.py's emotion-inference parts: precisions side by side, and what a user pays at
start-up (fresh processes). Run through ``bench_pipeline.py --precision`` / ``--startup``.

Precision (in this process, one torch thread, as the bridge's inference thread runs on 2 cores):
every variant of the random-init wav2vec2-base classifier on the same 4 s input, interleaved,
audio-seconds per CPU-second of the calling thread, and each one's agreement with fp32 on the
probe signals; the previous default ("int8 (before)": dynamic int8 of the unfolded model with the
convolutional encoder, what ``quantize = "auto"`` chose) against what ``precision = "auto"``
picks now; a per-operator profile of both.

Start-up (fresh child processes, their own rusage): ``python -c "import torch, transformers"``;
``affect-bridge analyze`` of a 3 s clip with the model configured, the first time on a machine
and every later time; the whole analyze of the conversation against the reference approach as a
fresh process (imports and model load included, both), and the same the first time; and
``affect-bridge run`` with the model loaded: time and CPU to ready the first time and later, its
peak RSS once ready. A first time starts the background job that measures the precisions and
prepares the model (``analyzers/prepare_job.py``): it is not the user's process, so not in that
process's figures; the bench waits for it to end before the next run and reports its CPU
(from its log line) beside the first run's.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from procstat import process_tree, processes_cpu  # tests/bench/, beside this script

JOB_DONE = re.compile(r"measured and prepared in the background, ([0-9.]+) CPU-s")

SR = 16_000
ROOT = Path(__file__).resolve().parents[2]


def _thread_rate(model: Any, x: Any, runs: int) -> list[float]:
    import torch

    out = []
    with torch.inference_mode():
        for _ in range(runs):
            t0 = time.thread_time()
            model(x)
            out.append(x.numel() / SR / (time.thread_time() - t0))  # every row's audio
    return out


def precision_part(model_dir: Path, repeat: int) -> dict[str, Any]:
    """Every precision side by side on one thread; see the module doc."""
    import torch
    from transformers import AutoModelForAudioClassification

    from analyzers.emotion import fold_weight_norm
    from analyzers.precision import candidates, choose, native_bf16, probe_signals, to_precision

    torch.set_num_threads(1)
    # Loaded twice: a weight-normed (parametrised) module does not survive copy.deepcopy.
    before = AutoModelForAudioClassification.from_pretrained(model_dir).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(before, {torch.nn.Linear}, dtype=torch.qint8,
                                               inplace=True)
    folded = AutoModelForAudioClassification.from_pretrained(model_dir).eval()
    fold_weight_norm(folded)
    variants: dict[str, Any] = {"int8 (before)": before, "fp32": folded}
    names = ["fp32+matmul", "int8", "int8+matmul"]
    if native_bf16():
        names += ["bf16", "bf16+matmul"]
    for name in names:
        variants[name] = to_precision(folded, name, inplace=False)

    def probs(model: Any, audio: np.ndarray) -> np.ndarray:
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        x = torch.from_numpy((audio - audio.mean()) / np.sqrt(audio.var() + 1e-7))[None]
        with torch.inference_mode():
            out = model(x.to(dtype))
            logits = out["logits"] if isinstance(out, dict) else out.logits  # traced: a dict
        return torch.softmax(logits.double(), -1)[0].numpy()

    started = time.perf_counter()
    _, decision = choose(copy.deepcopy(folded), probs, candidates())
    choose_s = time.perf_counter() - started
    chosen = decision.precision
    prepared = f"{chosen} prepared"  # what the bridge runs: the traced copy (analyzers/prepared)
    variants[prepared] = _traced(variants[chosen])

    probes = probe_signals()
    reference = [probs(folded, p) for p in probes]
    agreement = {name: float(np.mean([0.5 * np.abs(probs(m, p) - r).sum()
                                      for p, r in zip(probes, reference, strict=True)]))
                 for name, m in variants.items()}
    rng = np.random.default_rng(0)
    x = torch.from_numpy((0.1 * rng.standard_normal(4 * SR)).astype(np.float32))[None]
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for m in variants.values():  # warm-up
        dtype = next(p.dtype for p in m.parameters() if p.is_floating_point())
        _thread_rate(m, x.to(dtype), 1)
    for _ in range(repeat):  # interleaved
        for name, m in variants.items():
            dtype = next(p.dtype for p in m.parameters() if p.is_floating_point())
            rates[name] += _thread_rate(m, x.to(dtype), 2)
    median = {name: float(np.median(v)) for name, v in rates.items()}
    dtype = next(p.dtype for p in variants[prepared].parameters() if p.is_floating_point())
    batches = _batch_rates(variants[prepared], x.to(dtype), repeat)
    profiles = {label: _profile(variants[name], x)
                for label, name in (("before (int8, conv encoder, weight norm per call)",
                                     "int8 (before)"), (f"now ({chosen})", chosen))}
    result = {
        "native_bf16": native_bf16(), "candidates": candidates(), "chosen": chosen,
        "choose_wall_s": round(choose_s, 1), "decision_rates": decision.rates,
        "audio_s_per_cpu_s": {k: round(v, 2) for k, v in median.items()},
        "agreement_tv": {k: round(v, 5) for k, v in agreement.items()},
        "default_vs_before": median[chosen] / median["int8 (before)"],
        "prepared_vs_before": median[prepared] / median["int8 (before)"],
        "prepared_batch_rates": batches,
        "profiles": profiles,
    }
    print("\n== emotion inference, one thread, 4 s input, median of "
          f"{2 * repeat} interleaved runs (native bf16: {'yes' if native_bf16() else 'no'})")
    for name in variants:
        print(f"  {name:16s} {median[name]:7.2f} audio-s per CPU-s   TV vs fp32 "
              f"{agreement[name]:.4f}" + ("   <- chosen by auto" if name == chosen else ""))
    if not native_bf16():
        print("  bf16: not a candidate here (no AMX / AVX512-BF16: torch emulates it)")
    print(f"  auto chose {chosen} in {choose_s:.1f} s ({decision.describe()})")
    print(f"  default now / before: {result['default_vs_before']:.2f}x eager, "
          f"{result['prepared_vs_before']:.2f}x prepared (what the bridge runs)")
    base = batches["1"]
    print(f"  {prepared}, one thread, audio-s per CPU-s by batch of equal 4 s chunks: "
          + ", ".join(f"{b}: {r:.1f} ({r / base:.2f}x)" for b, r in batches.items()))
    for label, rows in profiles.items():
        print(f"  profile {label}: " + ", ".join(f"{r['op']} {r['ms']:.0f} ms" for r in rows[:6]))
    return result


def _traced(model: Any) -> Any:
    """``model`` as analyzers/prepared.py keeps it: traced, saved, loaded again."""
    import tempfile

    import torch

    from analyzers.precision import probe_signals
    from analyzers.prepared import load_prepared, save_prepared

    before = os.environ.get("AFFECT_BRIDGE_CACHE_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AFFECT_BRIDGE_CACHE_DIR"] = tmp
        try:
            save_prepared(model, "bench" * 8, "x", ["a", "b", "c", "d"], True,
                          probe_signals(1.0)[1])
            loaded = load_prepared("bench" * 8, "x")
        finally:  # the caller's cache directory, as it was
            if before is None:
                del os.environ["AFFECT_BRIDGE_CACHE_DIR"]
            else:
                os.environ["AFFECT_BRIDGE_CACHE_DIR"] = before
    assert loaded is not None
    with torch.inference_mode():
        return loaded.module


def _batch_rates(model: Any, x: Any, repeat: int) -> dict[str, float]:
    """One thread, batches of 1, 2, 4, 8 copies of ``x``, interleaved: audio-s per CPU-s."""
    seen: dict[int, list[float]] = {b: [] for b in (1, 2, 4, 8)}
    for b in seen:
        _thread_rate(model, x.expand(b, -1).contiguous(), 1)  # warm-up per shape
    for _ in range(repeat):
        for b in seen:
            seen[b] += _thread_rate(model, x.expand(b, -1).contiguous(), max(1, 4 // b))
    return {str(b): round(float(np.median(v)), 2) for b, v in seen.items()}


def _profile(model: Any, x: Any) -> list[dict[str, Any]]:
    import torch

    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    with torch.inference_mode():
        model(x.to(dtype))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(x.to(dtype))
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1.0
    return [{"op": e.key, "ms": e.self_cpu_time_total / 1000,
             "share": e.self_cpu_time_total / total} for e in rows[:10]]


def startup_part(model_dir: Path, clip: Path, conversation: Path, conversation_s: float,
                 workdir: Path, run_child: Any) -> dict[str, Any]:
    """Fresh processes; see the module doc. ``run_child(cmd, audio_s, workdir, name, env)``."""
    cache = workdir / "cache"
    env = {"AFFECT_BRIDGE_CACHE_DIR": str(cache)}
    config = workdir / "emotion.toml"
    config.write_text(f'analyzers = ["prosody", "emotion"]\n[emotion]\nmodel = "{model_dir}"\n'
                      'device = "cpu"\n', encoding="utf-8")
    analyze = [sys.executable, "-m", "bridge.cli", "analyze", "--format", "table", "--config",
               str(config)]
    imports = run_child([sys.executable, "-c", "import torch, transformers"], 0.0, workdir,
                        "imports", env)
    first = run_child([*analyze, str(clip)], 3.0, workdir, "clip-first", env)
    clip_job = _wait_for_job(cache)
    later = [run_child([*analyze, str(clip)], 3.0, workdir, f"clip-later-{i}", env)
             for i in range(2)]
    later_cpu = float(np.median([c.cpu_s for c in later]))
    later_rss = max(c.peak_rss_mb for c in later)
    # The whole analysis later (prepared), the reference, and the whole analysis the first
    # time on the machine with this checkpoint (an empty cache each time), alternating, three
    # times each (this machine's speed drifts by tens of percent within minutes): medians of
    # each, ratios of the medians. A first run's background job ends before the next run.
    wholes, references, firsts, jobs = [], [], [], []
    for i in range(3):
        wholes.append(run_child([*analyze, str(conversation)], conversation_s, workdir,
                                f"whole-{i}", env))
        references.append(run_child([sys.executable, "-c", _REFERENCE_CHILD, str(model_dir),
                                     str(conversation)], conversation_s, workdir,
                                    f"reference-{i}", env))
        fresh_cache = workdir / f"cache-first-{i}"
        firsts.append(run_child([*analyze, str(conversation)], conversation_s, workdir,
                                f"whole-first-{i}", {"AFFECT_BRIDGE_CACHE_DIR": str(fresh_cache)}))
        jobs.append(_wait_for_job(fresh_cache))
    whole, reference, whole_first = (_median_run(wholes), _median_run(references),
                                     _median_run(firsts))
    whole_job = jobs[firsts.index(whole_first)]
    # `run` (workers auto) to ready: the first start with the checkpoint, then later ones.
    fresh = {"AFFECT_BRIDGE_CACHE_DIR": str(workdir / "cache3")}
    run_first = _run_ready(config, fresh)
    run_job = _wait_for_job(workdir / "cache3")
    run_later = [_run_ready(config, fresh) for _ in range(2)]
    run_later_wall = float(np.median([r["wall_s"] for r in run_later]))
    run_later_cpu = float(np.median([r["cpu_s"] for r in run_later]))
    run_rss = max(r["rss_mb"] for r in run_later)
    result = {
        "import_torch_transformers_cpu_s": imports.cpu_s,
        "clip_first_cpu_s": first.cpu_s, "clip_first_rss_mb": first.peak_rss_mb,
        "clip_later_cpu_s": later_cpu, "clip_later_rss_mb": later_rss,
        "clip_later_vs_imports": later_cpu / imports.cpu_s,
        "whole_cpu_s": whole.cpu_s, "whole_rss_mb": whole.peak_rss_mb,
        "reference_cpu_s": reference.cpu_s, "reference_rss_mb": reference.peak_rss_mb,
        "whole_vs_reference_per_cpu": reference.cpu_s / whole.cpu_s,
        "whole_first_cpu_s": whole_first.cpu_s, "whole_first_rss_mb": whole_first.peak_rss_mb,
        "whole_first_vs_reference_per_cpu": reference.cpu_s / whole_first.cpu_s,
        "whole_first_vs_later": whole_first.cpu_s / whole.cpu_s,
        "whole_runs_cpu_s": {"later": [w.cpu_s for w in wholes],
                             "reference": [r.cpu_s for r in references],
                             "first": [f.cpu_s for f in firsts], "first_jobs": jobs},
        "background_job_cpu_s": {"clip": clip_job, "whole": whole_job, "run": run_job},
        "run_first": run_first, "run_later": run_later,
        "run_first_vs_later_wall": run_first["wall_s"] / run_later_wall,
        "run_first_vs_later_cpu": run_first["cpu_s"] / run_later_cpu,
        "run_ready_rss_mb": run_rss,
    }
    print("\n== start-up: fresh processes (CPU = user + sys of the process; RSS = its peak)")
    print(f"  python -c 'import torch, transformers'      {imports.cpu_s:6.2f} CPU-s  "
          f"{imports.peak_rss_mb:6.0f} MB")
    print(f"  analyze 3 s clip, first time on the machine  {first.cpu_s:6.2f} CPU-s  "
          f"{first.peak_rss_mb:6.0f} MB  (+ {_cpu(clip_job)} in the background job)")
    print(f"  analyze 3 s clip, later (median of 2)        {later_cpu:6.2f} CPU-s  "
          f"{later_rss:6.0f} MB  = {result['clip_later_vs_imports']:.2f}x the imports")
    print("  (whole process later / reference / first time: medians of 3 alternating runs: "
          f"{', '.join(f'{w.cpu_s:.2f}' for w in wholes)} / "
          f"{', '.join(f'{r.cpu_s:.2f}' for r in references)} / "
          f"{', '.join(f'{f.cpu_s:.2f}' for f in firsts)} CPU-s)")
    print(f"  analyze {conversation_s:.0f} s conversation, whole process      {whole.cpu_s:6.2f} "
          f"CPU-s  {whole.peak_rss_mb:6.0f} MB")
    print(f"  the same, first time with this checkpoint       {whole_first.cpu_s:6.2f} "
          f"CPU-s  {whole_first.peak_rss_mb:6.0f} MB  = {result['whole_first_vs_later']:.2f}x "
          f"the later run (+ {_cpu(whole_job)} in the background job)")
    print(f"  reference approach, whole process            {reference.cpu_s:6.2f} CPU-s  "
          f"{reference.peak_rss_mb:6.0f} MB  -> ours {result['whole_vs_reference_per_cpu']:.2f}x "
          f"per CPU-s later, {result['whole_first_vs_reference_per_cpu']:.2f}x the first time")
    print(f"  affect-bridge run (workers auto) to ready, first start  {run_first['wall_s']:5.1f} s "
          f"{run_first['cpu_s']:6.2f} CPU-s (+ {_cpu(run_job)} in the background job)")
    print(f"  the same, later starts (median of 2)            {run_later_wall:5.1f} s "
          f"{run_later_cpu:6.2f} CPU-s  -> first / later {result['run_first_vs_later_wall']:.2f}x "
          f"wall, {result['run_first_vs_later_cpu']:.2f}x CPU")
    print(f"  affect-bridge run with the model, peak RSS once ready (all its processes, "
          f"summed): {run_rss:.0f} MB")
    return result


def _cpu(job: float | None) -> str:
    return "none" if job is None else f"{job:.2f} CPU-s"


def _wait_for_job(cache: Path, timeout_s: float = 900.0) -> float | None:
    """The background job a first start began in ``cache``: wait for its end (so that it does
    not share the machine with the next run); its CPU-seconds, from its log line. None when no
    job was started (``prepare = "at_load"``)."""
    log = cache / "prepare.log"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if not text and not _jobs_running():
            return None
        found = JOB_DONE.findall(text)
        if found and not _jobs_running():
            return float(found[-1])
        if "background preparation failed" in text:
            raise RuntimeError(f"the background job failed:\n{text[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"the background job in {cache} did not end in {timeout_s:.0f} s")


def _jobs_running() -> bool:
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        if "analyzers.prepare_job" in (proc.info["cmdline"] or []):
            return True
    return False


def _median_run(runs: list[Any]) -> Any:
    """The run with the median CPU time."""
    return sorted(runs, key=lambda r: r.cpu_s)[len(runs) // 2]


# The reference approach as a whole process: its imports, model load and one request.
_REFERENCE_CHILD = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from pathlib import Path
from bench_pipeline import Reference
ref = Reference.load(Path(sys.argv[1]))
ref.analyze(Path(sys.argv[2]).read_bytes())
"""


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(hwm.split()[1]) / 1024


def _run_ready(config: Path, env: dict[str, str]) -> dict[str, float]:
    """``affect-bridge run`` with ``config`` until /readyz answers: seconds from the start, the
    CPU-seconds of its processes (the supervisor and its workers; a background job is not
    counted: see the module doc), and the peak RSS (VmHWM) of those processes, summed."""
    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "run", "--config", str(config),
                             "--listen", f"127.0.0.1:{port}"], cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(6000):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if json.loads(r.read()).get("status") in ("ready", "degraded"):
                        break
            except OSError:
                pass
            time.sleep(0.05)
        wall = time.perf_counter() - started
        tree = [p for p in process_tree(psutil.Process(proc.pid))
                if "analyzers.prepare_job" not in _cmdline(p)]
        return {"wall_s": wall, "cpu_s": processes_cpu(tree),
                "rss_mb": sum(_peak_rss_mb(p.pid) for p in tree)}
    finally:
        proc.terminate()
        proc.wait(30)


def _cmdline(proc: Any) -> list[str]:
    try:
        return list(proc.cmdline())
    except Exception:
        return []
