#!/usr/bin/env python
"""Benchmark: ASR cost per speaker-second of the semantic stream (Whisper tiny and base on CPU).

Runs the project's own ``analyzers.semantic.SpeechRecognizer`` (one transformers
``automatic-speech-recognition`` pipeline call per ``transcribe()``) on 4 s chunks of real speech
cut from the demo fixtures, as the semantic stream receives them (``emotion_chunk_s``), for

* random-init Whisper **tiny** and **base** checkpoints built in a temp dir with the real
  architectures, including the real 51865-token vocabulary (the output projection over the
  vocabulary is part of every decoding step); random weights compute exactly what trained ones
  do, nothing is downloaded;
* unbatched (one call per chunk) and batched (calls on groups of 4 and of 8 chunks, as when
  several speakers' chunks wait together).

Random weights decode arbitrary tokens and may stop at once or run to the limit, so the decode
length is forced: every chunk generates exactly ``NEW_TOKENS`` tokens (about 3 tokens per second
of English conversational speech x 4 s), via ``min_new_tokens == max_new_tokens``, a
benchmark-only override of the recognizer's generate arguments. Every ``model.generate`` call the
pipeline makes is recorded (batch size, tokens generated), so the batching and the decode length
are checked, not assumed. The recognizer decodes greedily (``semantic.num_beams = 1``; without
it transformers' ASR pipeline would add ``num_beams=5``); ``--beams 5`` measures beam search.

The inference runs in the main thread with torch threads set as the semantic stream's inference
thread sets them (``set_cpu_threads("cpu", 0)``: half the cores).

This is not a test (pytest does not collect it) and nothing is timed against a limit.

    HF_HUB_OFFLINE=1 .venv/bin/python tests/bench/bench_asr.py [--quick] [--json OUT.json]
        [--chunks N] [--repeat R] [--tuned-malloc] [--beams N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# Before transformers / huggingface_hub are imported (they are imported lazily below).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from analyzers.types import SAMPLE_RATE  # noqa: E402

FIXTURES = tuple(ROOT / "bridge" / "assets" / "demo" / f"{name}.flac"
                 for name in ("alice_calm_then_stressed", "bob_calm", "carol_calm"))

CHUNK_S = 4.0  # the semantic stream's chunk length (emotion_chunk_s)
TOKENS_PER_SECOND = 3.0  # English conversational speech, Whisper BPE tokens per second
NEW_TOKENS = round(TOKENS_PER_SECOND * CHUNK_S)  # 12, forced for every chunk
BATCH_SIZES = (1, 4, 8)
CHUNKS, CHUNKS_QUICK = 24, 8
REPEAT, REPEAT_QUICK = 2, 1
SEED = 0
PROMPT_LEN = 4  # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>

# The real checkpoints' architectures (openai/whisper-tiny, openai/whisper-base).
ARCHS: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 384, "layers": 4, "heads": 6, "ffn": 1536},
    "base": {"d_model": 512, "layers": 6, "heads": 8, "ffn": 2048},
}
REAL_PARAMS = {"tiny": 37_760_640, "base": 72_593_920}  # parameter counts of the real checkpoints
VOCAB_SIZE = 51865  # multilingual Whisper
N_TEXT_TOKENS = 50257  # byte-level BPE tokens before <|endoftext|>
N_LANGUAGES = 99
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>
# suppress_tokens of the real multilingual generation configs (only their number matters here).
SUPPRESS_TOKENS = [
    1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93, 359, 503,
    522, 542, 873, 893, 902, 918, 922, 931, 1350, 1853, 1982, 2460, 2627, 3246, 3253, 3268, 3536,
    3846, 3961, 4183, 4667, 6585, 6647, 7273, 9061, 9383, 10428, 10929, 11938, 12033, 12331, 12562,
    13793, 14157, 14635, 15265, 15618, 16553, 16604, 18362, 18956, 20075, 21675, 22520, 26130,
    26161, 26435, 28279, 29464, 31650, 32302, 32470, 36865, 42863, 47425, 49870, 50254, 50258,
    50358, 50359, 50360, 50361, 50362,
]

# glibc malloc settings for --tuned-malloc: keep large freed blocks in the heap instead of
# returning them to the kernel. By default every tensor over the (dynamic, at most 32 MiB) mmap
# threshold is a fresh mmap whose pages fault in zeroed on first touch and are unmapped on free;
# batched Whisper's activations are that large, and the faults cost as much as the arithmetic.
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736",
                 "MALLOC_TOP_PAD_": "536870912"}

Float32Array = npt.NDArray[np.float32]


# --------------------------------------------------------------------------------------------
# Checkpoints


def build_whisper(path: Path, arch: str) -> tuple[Path, int]:
    """A random-init Whisper with the real architecture ``arch`` and the real vocabulary size and
    special-token ids, saved so that ``SpeechRecognizer.load`` reads it offline. Returns the
    directory and the parameter count."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    a = ARCHS[arch]
    path.mkdir(parents=True, exist_ok=True)
    # Byte-level base alphabet, padded with unique filler tokens to the real 50257 text tokens.
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    while len(vocab) < N_TEXT_TOKENS:
        vocab[f"<|filler_{len(vocab)}|>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    eot = "<|endoftext|>"
    languages = ["<|en|>", *(f"<|lang_{i}|>" for i in range(1, N_LANGUAGES))]
    specials = ["<|startoftranscript|>", *languages, "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    tok = WhisperTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), unk_token=eot,
                           bos_token=eot, eos_token=eot, pad_token=eot)
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(N_TIMESTAMPS)])
    if len(tok) != VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {len(tok)} tokens, not {VOCAB_SIZE}")
    ids: dict[str, int] = {}
    for t in (eot, *specials):
        i = tok.convert_tokens_to_ids(t)
        assert isinstance(i, int)
        ids[t] = i
    cfg = WhisperConfig(
        vocab_size=VOCAB_SIZE, num_mel_bins=80, d_model=a["d_model"],
        encoder_layers=a["layers"], decoder_layers=a["layers"],
        encoder_attention_heads=a["heads"], decoder_attention_heads=a["heads"],
        encoder_ffn_dim=a["ffn"], decoder_ffn_dim=a["ffn"],
        max_source_positions=1500, max_target_positions=448,
        pad_token_id=ids[eot], bos_token_id=ids[eot], eos_token_id=ids[eot],
        decoder_start_token_id=ids["<|startoftranscript|>"],
    )
    torch.manual_seed(SEED)
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids[eot],
        pad_token_id=ids[eot], bos_token_id=ids[eot], max_length=448, is_multilingual=True,
        lang_to_id={t: ids[t] for t in languages},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], suppress_tokens=SUPPRESS_TOKENS,
        begin_suppress_tokens=[220, ids[eot]],
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(path)
    return path, sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Inputs


def speech_chunks(n: int) -> list[Float32Array]:
    """``n`` 4 s chunks of speech: consecutive slices of the three demo recordings, taken in
    turn (alice, bob, carol, alice, ...), skipping the first 0.5 s of each file."""
    from bridge.pipeline.audio import read_file

    size, skip = int(CHUNK_S * SAMPLE_RATE), SAMPLE_RATE // 2
    pools: list[list[Float32Array]] = []
    for path in FIXTURES:
        audio = np.concatenate([c.samples for chunks in read_file(path) for c in chunks])
        audio = audio[skip:].astype(np.float32, copy=False)
        pools.append([audio[i:i + size] for i in range(0, len(audio) - size + 1, size)])
    out: list[Float32Array] = []
    k = 0
    while len(out) < n:
        if all(k >= len(p) for p in pools):
            raise SystemExit(f"the fixtures hold only {len(out)} chunks of {CHUNK_S:g} s; ask for fewer")
        out.extend(p[k] for p in pools if k < len(p))
        k += 1
    return out[:n]


# --------------------------------------------------------------------------------------------
# Recording what the pipeline asks of the model


@dataclass
class GenerateCall:
    batch: int
    new_tokens: list[int]  # per sequence, not counting the forced prompt nor end-of-text padding
    wall_s: float
    params: dict[str, Any]  # the generate arguments that are not tensors, as the pipeline passed them


class GenerateRecorder:
    """Wraps ``model.generate`` (the pipeline calls it once per batch) to record each call."""

    def __init__(self, model: Any, eot_id: int, sot_id: int) -> None:
        self.calls: list[GenerateCall] = []
        self.inner: Callable[..., Any] = model.generate
        self._eot, self._sot = eot_id, sot_id
        model.generate = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        features = kwargs.get("input_features", args[0] if args else None)
        t0 = time.perf_counter()
        out = self.inner(*args, **kwargs)
        wall = time.perf_counter() - t0
        seqs = out["sequences"] if isinstance(out, dict) else out
        params = {k: v for k, v in kwargs.items() if isinstance(v, int | float | str | bool)}
        self.calls.append(GenerateCall(int(features.shape[0]) if features is not None else -1,
                                       [self.count(s.tolist()) for s in seqs], wall, params))
        return out

    def count(self, seq: list[int]) -> int:
        """New tokens of one returned sequence. Whisper's short-form generate strips the decoder
        prompt (<|startoftranscript|><|en|><|transcribe|><|notimestamps|>) from what it returns;
        count defensively either way, and drop end-of-text padding at the end."""
        body = seq[PROMPT_LEN:] if seq and seq[0] == self._sot else list(seq)
        while body and body[-1] == self._eot:
            body.pop()
        return len(body)


# --------------------------------------------------------------------------------------------
# Timing


def busy_s() -> float | None:
    """CPU-seconds all CPUs have spent busy so far: user+nice+system+irq+softirq+steal of the
    first line of ``/proc/stat``; None where unavailable."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    arch: str
    batch: int
    rep: int
    speaker_s: float
    wall_s: float
    cpu_s: float
    sys_s: float  # kernel part of cpu_s (page faults of large fresh allocations, mostly)
    other_cpu_s: float | None
    generate_wall_s: float
    calls: int
    call_batches: list[int]
    new_tokens: list[int] = field(default_factory=list)
    num_beams: list[int] = field(default_factory=list)


def timed_run(asr: Any, recorder: GenerateRecorder, chunks: list[Float32Array], batch: int,
              arch: str, rep: int) -> Run:
    groups = [chunks[i:i + batch] for i in range(0, len(chunks), batch)]
    first = len(recorder.calls)
    b0, w0, c0, s0 = busy_s(), time.perf_counter(), time.process_time(), os.times().system
    for group in groups:
        asr.transcribe(group)
    wall, cpu, b1 = time.perf_counter() - w0, time.process_time() - c0, busy_s()
    sys_s = os.times().system - s0
    other = None if b0 is None or b1 is None else max(0.0, b1 - b0 - cpu)
    calls = recorder.calls[first:]
    return Run(arch, batch, rep, len(chunks) * CHUNK_S, wall, cpu, sys_s, other,
               sum(c.wall_s for c in calls), len(calls), [c.batch for c in calls],
               [n for c in calls for n in c.new_tokens],
               sorted({int(c.params.get("num_beams", 1)) for c in calls}))


# --------------------------------------------------------------------------------------------
# Report


@dataclass
class Summary:
    arch: str
    batch: int
    speaker_s: float
    wall_s: float
    cpu_s: float
    sys_share: float  # kernel share of cpu_s
    cpu_per_speaker_s: float
    wall_per_speaker_s: float
    rtf: float  # speaker-seconds per wall-second
    speakers_one_thread: float  # = rtf: speakers one inference thread keeps up with
    speakers_machine: float  # speaker-seconds per CPU-second x cores
    other_cpu_s: list[float | None]
    generate_share: float  # model.generate wall / total wall
    tokens_per_chunk: list[int]  # distinct values seen
    batches_seen: list[int]
    num_beams: list[int]


def summarise(runs: list[Run], cores: int) -> list[Summary]:
    out = []
    keys = sorted({(r.arch, r.batch) for r in runs}, key=lambda k: (list(ARCHS).index(k[0]), k[1]))
    for arch, batch in keys:
        rs = [r for r in runs if (r.arch, r.batch) == (arch, batch)]
        wall = statistics.median(r.wall_s for r in rs)
        cpu = statistics.median(r.cpu_s for r in rs)
        speaker_s = rs[0].speaker_s
        gen = statistics.median(r.generate_wall_s / r.wall_s for r in rs)
        sys_share = statistics.median(r.sys_s / r.cpu_s for r in rs)
        out.append(Summary(arch, batch, speaker_s, wall, cpu, sys_share, cpu / speaker_s, wall / speaker_s,
                           speaker_s / wall, speaker_s / wall, speaker_s / cpu * cores,
                           [r.other_cpu_s for r in rs], gen,
                           sorted({n for r in rs for n in r.new_tokens}),
                           sorted({b for r in rs for b in r.call_batches}),
                           sorted({b for r in rs for b in r.num_beams})))
    return out


def print_table(summaries: list[Summary], cores: int) -> None:
    head = (f"{'model':<5} {'batch':>5} {'spk-s':>6} {'wall s':>7} {'CPU s':>7} {'CPU-s/spk-s':>11} "
            f"{'wall-s/spk-s':>12} {'RTF':>6} {'spk/thread':>10} {f'spk/{cores} cores':>12} "
            f"{'sys %':>6} {'gen %':>6} {'tok/chunk':>9} {'beams':>5}  other procs CPU s")
    print(head)
    print("-" * len(head))
    for s in summaries:
        other = ", ".join("n/a" if o is None else f"{o:.1f}" for o in s.other_cpu_s)
        tokens = "/".join(str(t) for t in s.tokens_per_chunk)
        beams = "/".join(str(b) for b in s.num_beams)
        print(f"{s.arch:<5} {s.batch:>5} {s.speaker_s:>6.0f} {s.wall_s:>7.2f} {s.cpu_s:>7.2f} "
              f"{s.cpu_per_speaker_s:>11.4f} {s.wall_per_speaker_s:>12.4f} {s.rtf:>6.2f} "
              f"{s.speakers_one_thread:>10.2f} {s.speakers_machine:>12.2f} "
              f"{100 * s.sys_share:>5.0f}% {100 * s.generate_share:>5.0f}% {tokens:>9} {beams:>5}  {other}")


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"{CHUNKS_QUICK} chunks, 1 repetition")
    parser.add_argument("--json", type=Path, help="write all figures here")
    parser.add_argument("--chunks", type=int, help=f"4 s chunks per run (default {CHUNKS}; "
                        "a multiple of 8 keeps every batched call full)")
    parser.add_argument("--repeat", type=int, help=f"interleaved timed runs per configuration "
                        f"(default {REPEAT})")
    parser.add_argument("--tuned-malloc", action="store_true",
                        help="re-run this script with "
                        + " ".join(f"{k}={v}" for k, v in MALLOC_TUNING.items()))
    parser.add_argument("--beams", type=int, default=0,
                        help="override num_beams (default: the product's setting, "
                             "SemanticConfig.num_beams = 1, greedy; 5 is the pipeline's own default)")
    args = parser.parse_args(argv)
    if args.tuned_malloc and any(os.environ.get(k) != v for k, v in MALLOC_TUNING.items()):
        # glibc reads these once, at start-up: they only take effect in a fresh process.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_TUNING})
    malloc_env = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"}
    n_chunks = args.chunks or (CHUNKS_QUICK if args.quick else CHUNKS)
    repeat = args.repeat or (REPEAT_QUICK if args.quick else REPEAT)

    import torch
    import transformers

    from analyzers.emotion import set_cpu_threads
    from analyzers.semantic import SemanticConfig, SpeechRecognizer

    transformers.utils.logging.disable_progress_bar()
    cores = os.cpu_count() or 1
    set_cpu_threads("cpu", 0)  # as the semantic inference thread: half the cores
    threads = torch.get_num_threads()
    chunks = speech_chunks(n_chunks)
    print(f"ASR cost per speaker-second: Whisper tiny/base, random init, real architectures "
          f"(vocab {VOCAB_SIZE}), CPU")
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {platform.processor() or platform.machine()}, {cores} cores, "
          f"torch threads {threads} (set_cpu_threads('cpu', 0), main thread)")
    print("glibc malloc: " + (" ".join(f"{k}={v}" for k, v in malloc_env.items()) or "defaults"))
    print(f"input: {n_chunks} chunks x {CHUNK_S:g} s of speech from {len(FIXTURES)} demo recordings "
          f"= {n_chunks * CHUNK_S:g} speaker-s per run; batch sizes {list(BATCH_SIZES)}; "
          f"{repeat} interleaved repetition(s), medians")
    print(f"decode length forced: {NEW_TOKENS} new tokens per chunk ({TOKENS_PER_SECOND:g} tokens/s x "
          f"{CHUNK_S:g} s; min_new_tokens = max_new_tokens = {NEW_TOKENS}, benchmark-only override)")
    print("search: " + (f"num_beams={args.beams} (--beams, benchmark-only override)" if args.beams else
                        "the product's setting (semantic.num_beams = 1: greedy; transformers' ASR pipeline "
                        "would otherwise add num_beams=5)"))
    print()

    runs: list[Run] = []
    models: dict[str, tuple[Any, GenerateRecorder]] = {}
    params: dict[str, int] = {}
    checks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-asr-") as tmp:
        for arch in ARCHS:
            t0 = time.perf_counter()
            path, params[arch] = build_whisper(Path(tmp) / f"whisper-{arch}", arch)
            asr = SpeechRecognizer(SemanticConfig(asr_model=str(path), max_new_tokens=NEW_TOKENS,
                                                  language="en", device="cpu"))
            asr.load()
            # Benchmark-only override: random weights would stop anywhere; force the decode length.
            asr._generate["min_new_tokens"] = NEW_TOKENS
            if args.beams:
                asr._generate["num_beams"] = args.beams
            model = asr._pipe.model
            tok = asr._pipe.tokenizer
            eot = int(tok.convert_tokens_to_ids("<|endoftext|>"))
            recorder = GenerateRecorder(model, eot, int(tok.convert_tokens_to_ids("<|startoftranscript|>")))
            print(f"whisper-{arch}: {params[arch]:,} parameters (real checkpoint: "
                  f"{REAL_PARAMS[arch]:,}), attention {model.config._attn_implementation}, "
                  f"{model.dtype}, built + loaded in {time.perf_counter() - t0:.1f} s")
            checks[arch] = check_decode_length(asr, recorder, chunks[0])
            models[arch] = (asr, recorder)
            asr.transcribe(chunks[:max(BATCH_SIZES)])  # untimed warm-up (the check ran batch 1)
        print()

        total = time.perf_counter()
        for rep in range(repeat):
            for arch, (asr, recorder) in models.items():
                for batch in BATCH_SIZES:
                    run = timed_run(asr, recorder, chunks, batch, arch, rep)
                    runs.append(run)
                    other = "n/a" if run.other_cpu_s is None else f"{run.other_cpu_s:.1f}"
                    print(f"  rep {rep + 1}/{repeat} {arch:<4} batch {batch}: wall {run.wall_s:6.2f} s, "
                          f"CPU {run.cpu_s:6.2f} s (sys {run.sys_s:5.2f}), other procs CPU {other} s, "
                          f"{run.calls} generate calls of batch {sorted(set(run.call_batches))}, "
                          f"tokens/chunk {sorted(set(run.new_tokens))}, beams {run.num_beams}", flush=True)
        total_s = time.perf_counter() - total

    summaries = summarise(runs, cores)
    print()
    print(f"Medians of {repeat} run(s). spk-s: speaker-seconds (seconds of one speaker's speech sent "
          f"to ASR); RTF: speaker-s per wall-s;")
    print(f"spk/thread: speakers talking non-stop that one inference thread ({threads} torch "
          f"thread(s)) keeps up with (= RTF);")
    print(f"spk/{cores} cores: speaker-s per CPU-s x {cores} cores, the speakers one {cores}-core machine "
          f"could keep up with if it did nothing else;")
    print("sys %: kernel share of the CPU time (page faults on large fresh tensors, mostly);")
    print("gen %: share of wall time inside model.generate (the rest: feature extraction to 30 s "
          "log-mel, batching, decoding text).")
    print()
    print_table(summaries, cores)
    print()
    for arch in ARCHS:
        b1 = next(s for s in summaries if (s.arch, s.batch) == (arch, 1))
        for s in summaries:
            if s.arch == arch and s.batch != 1:
                print(f"{arch}: batch {s.batch} vs unbatched: CPU per speaker-s x"
                      f"{s.cpu_per_speaker_s / b1.cpu_per_speaker_s:.2f}, wall x"
                      f"{s.wall_per_speaker_s / b1.wall_per_speaker_s:.2f}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"timed runs took {total_s:.0f} s; peak RSS of the process {peak_mb:.0f} MB")

    if args.json:
        report = {
            "environment": {"python": platform.python_version(), "torch": torch.__version__,
                            "transformers": transformers.__version__, "cores": cores,
                            "torch_threads": threads, "processor": platform.processor(),
                            "malloc_env": malloc_env},
            "settings": {"chunk_s": CHUNK_S, "chunks": n_chunks, "new_tokens": NEW_TOKENS,
                         "tokens_per_second": TOKENS_PER_SECOND, "batch_sizes": list(BATCH_SIZES),
                         "repeat": repeat, "vocab_size": VOCAB_SIZE, "archs": ARCHS,
                         "beams_override": args.beams},
            "parameters": params,
            "decode_check": checks,
            "runs": [asdict(r) for r in runs],
            "summary": [asdict(s) for s in summaries],
            "timed_total_s": total_s,
            "peak_rss_mb": peak_mb,
        }
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


def check_decode_length(asr: Any, recorder: GenerateRecorder, chunk: Float32Array) -> dict[str, Any]:
    """Run ``transcribe`` on one chunk, then ``model.generate`` straight on the same features with
    the arguments the pipeline passed, and print how many tokens came out of each."""
    import torch

    first = len(recorder.calls)
    asr.transcribe([chunk])
    call = recorder.calls[first]
    features = asr._pipe.feature_extractor(chunk, sampling_rate=SAMPLE_RATE,
                                           return_tensors="pt").input_features
    with torch.no_grad():
        seqs = recorder.inner(input_features=features, **call.params)
    direct = seqs.tolist()[0]
    print(f"  decode check: the pipeline called generate with {call.params} on features "
          f"{tuple(features.shape)}: {call.new_tokens} new tokens; model.generate called directly "
          f"with the same: returned {len(direct)} tokens, {recorder.count(list(direct))} new")
    return {"via_transcribe": call.new_tokens, "pipeline_generate_kwargs": call.params,
            "direct_returned": len(direct), "direct_new": recorder.count(list(direct)),
            "features_shape": list(features.shape)}


if __name__ == "__main__":
    sys.exit(main())
