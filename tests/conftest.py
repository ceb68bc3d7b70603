"""Shared test helpers: fixture paths, synthetic signals, tiny models saved to disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
DEMO = ROOT / "bridge" / "assets" / "demo"
CALM = FIXTURES / "audio" / "alice_calm.flac"
CALM_THEN_STRESSED = DEMO / "alice_calm_then_stressed.flac"
STRESSED_FROM_S = 45.0  # make_speech.py: about 45 s calm, then stressed
SR = 16000

# Before anything imports huggingface_hub (it reads this once): no test may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"


def harmonic(f0: float, seconds: float = 2.0, *, jitter: float = 0.0, shimmer: float = 0.0,
             seed: int = 0, amplitude: float = 0.3) -> np.ndarray:
    """A glottal-like harmonic signal with a known F0, built cycle by cycle with a continuous
    phase: each cycle's length is perturbed by ``jitter`` (relative s.d.) and its amplitude by
    ``shimmer`` (relative s.d.)."""
    rng = np.random.default_rng(seed)
    cycles = int(seconds * f0 * 1.2) + 2
    periods = SR / f0 * (1 + jitter * rng.standard_normal(cycles))
    amps = amplitude * (1 + shimmer * rng.standard_normal(cycles))
    edges = np.concatenate([[0.0], np.cumsum(periods)])
    n = np.arange(int(seconds * SR))
    phase = np.interp(n, edges, np.arange(len(edges)))  # cycle number, fractional
    cycle = np.minimum(phase.astype(int), cycles - 1)
    wave = sum(np.sin(2 * np.pi * k * phase) / k for k in range(1, 8))
    return (amps[cycle] * wave / 2).astype(np.float32)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
            ) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=ROOT)


def build_tiny_emotion_model(path: Path, labels: tuple[str, ...] = ("neu", "hap", "ang", "sad"),
                             ) -> Path:
    """A ~40k-parameter wav2vec2 classifier, random weights, saved like a hub checkpoint."""
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForSequenceClassification,
    )

    cfg = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        classifier_proj_size=16, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
    )
    model = Wav2Vec2ForSequenceClassification(cfg)
    model.save_pretrained(path)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0,
                             do_normalize=True, return_attention_mask=False).save_pretrained(path)
    return path


def load_in_two_processes(model: Path, cache_dir: Path, **options: str) -> list[str]:
    """Two processes load the emotion analyzer for ``model`` at once, as ``run --workers 2``
    does on a fresh machine, then close it; their logs (both must exit 0)."""
    extra = "".join(f", {k}={v!r}" for k, v in options.items())
    script = ("import logging, sys\n"
              "logging.basicConfig(level=logging.INFO)\n"
              "from analyzers.emotion import EmotionAnalyzer, EmotionConfig\n"
              f"a = EmotionAnalyzer(EmotionConfig(model=sys.argv[1], device='cpu'{extra}))\n"
              "a.load()\n"
              "a.close()\n")
    env = {**os.environ, "AFFECT_BRIDGE_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(model)], cwd=ROOT, env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    return logs


TINY_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
                    num_conv_pos_embedding_groups=2)
CLASSIFIER_FAMILIES = {  # family -> (config class, model class), all in transformers
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2ForSequenceClassification"),
    "hubert": ("HubertConfig", "HubertForSequenceClassification"),
    "wavlm": ("WavLMConfig", "WavLMForSequenceClassification"),
    "data2vec-audio": ("Data2VecAudioConfig", "Data2VecAudioForSequenceClassification"),
}
RAVDESS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")


def _labels(labels: tuple[str, ...]) -> dict[str, Any]:
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)}}


def _save_extractor(path: Path) -> None:
    from transformers import Wav2Vec2FeatureExtractor

    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0,
                             do_normalize=True, return_attention_mask=False).save_pretrained(path)


def build_tiny_classifier(path: Path, family: str = "wav2vec2", *, weighted: bool = False,
                          labels: tuple[str, ...] = RAVDESS) -> Path:
    """A tiny audio sequence classifier of ``family`` (random weights), saved like a hub
    checkpoint; ``weighted``: superb-style weighted layer sum."""
    import transformers

    config_name, model_name = CLASSIFIER_FAMILIES[family]
    cfg = getattr(transformers, config_name)(**TINY_ENCODER, classifier_proj_size=16,
                                             use_weighted_layer_sum=weighted, **_labels(labels))
    getattr(transformers, model_name)(cfg).save_pretrained(path)
    _save_extractor(path)
    return path


def build_tiny_whisper_classifier(path: Path, labels: tuple[str, ...] = RAVDESS) -> Path:
    """A tiny ``WhisperForAudioClassification`` (the class of the whisper-large-v3 emotion
    checkpoints), random weights, with Whisper's feature extractor (log-mel input_features)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    cfg = WhisperConfig(num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_source_positions=1500, classifier_proj_size=16,
                        **_labels(labels))
    WhisperForAudioClassification(cfg).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(path)
    return path


def build_tiny_dimensional(path: Path, *, size: dict[str, Any] | None = None) -> Path:
    """A tiny dimensional model of the audEERING form (``Wav2Vec2ForSpeechClassification``:
    arousal, dominance, valence), random weights with the output bias at 0.5 (the middle of
    its 0..1 range, so that no output sits at the edge of -1..1)."""
    import torch
    from transformers import Wav2Vec2Config

    from analyzers.dimensional import Wav2Vec2ForSpeechClassification

    cfg = Wav2Vec2Config(**(size or TINY_ENCODER), final_dropout=0.1,
                         architectures=["Wav2Vec2ForSpeechClassification"],
                         **_labels(("arousal", "dominance", "valence")))
    model = Wav2Vec2ForSpeechClassification(cfg)
    with torch.no_grad():
        model.classifier.out_proj.bias.fill_(0.5)
    model.save_pretrained(path)
    _save_extractor(path)
    return path


WHISPER_SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>",
                    "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
                    "<|notimestamps|>")


def build_tiny_whisper(path: Path) -> Path:
    """A ~90k-parameter Whisper (random weights) with a byte-level tokenizer and the generation
    config multilingual Whisper checkpoints carry, saved like a hub checkpoint."""
    import json

    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    eot = WHISPER_SPECIALS[0]
    tok = WhisperTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), unk_token=eot,
                           bos_token=eot, eos_token=eot, pad_token=eot)
    tok.add_special_tokens({"additional_special_tokens": list(WHISPER_SPECIALS[1:])})
    ids = {t: tok.convert_tokens_to_ids(t) for t in WHISPER_SPECIALS}
    cfg = WhisperConfig(
        vocab_size=len(tok), num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=64,
        pad_token_id=ids[eot], bos_token_id=ids[eot], eos_token_id=ids[eot],
        decoder_start_token_id=ids["<|startoftranscript|>"],
    )
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids[eot],
        pad_token_id=ids[eot], bos_token_id=ids[eot], max_length=64, is_multilingual=True,
        lang_to_id={"<|en|>": ids["<|en|>"], "<|de|>": ids["<|de|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], suppress_tokens=[], begin_suppress_tokens=[],
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(path)
    return path


def build_tiny_text_classifier(path: Path, labels: tuple[str, ...] = ("NEGATIVE", "POSITIVE"),
                               ) -> Path:
    """A tiny BERT sentiment classifier (random weights) with a word-piece vocabulary."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "love", "hate", "the",
             "is", "it", "i", "this", "terrible", "great"]
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    cfg = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                     num_labels=len(labels), id2label=dict(enumerate(labels)),
                     label2id={name: i for i, name in enumerate(labels)})
    BertForSequenceClassification(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("models") / "tiny-whisper")


@pytest.fixture(scope="session")
def tiny_text_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_text_classifier(tmp_path_factory.mktemp("models") / "tiny-sentiment")


@pytest.fixture(scope="session")
def tiny_dimensional_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_dimensional(tmp_path_factory.mktemp("models") / "tiny-dim")


@pytest.fixture(scope="session")
def tiny_emotion_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_emotion_model(tmp_path_factory.mktemp("models") / "tiny-er")


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a model hub: this machine has none, and CI must not depend on one."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A precision cache of this test's own (decisions, prepared models, background jobs)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("AFFECT_BRIDGE_CACHE_DIR", str(path))
    return path


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the precision measurements in this process (each a run of
    :func:`analyzers.precision.choose`; a background job's are its own)."""
    import analyzers.emotion as emotion_module
    from analyzers.precision import choose

    calls: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return choose(*args, **kwargs)

    monkeypatch.setattr(emotion_module, "choose", counting)
    return calls


def emotion_tv(a: Any, b: Any) -> float:
    """Total-variation distance between two categorical emotion estimates."""
    return 0.5 * sum(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities)


@pytest.fixture(autouse=True, scope="session")
def _own_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite's precision decisions live in a cache of its own, not the user's (child
    processes inherit it); tests about the cache set their own."""
    before = os.environ.get("AFFECT_BRIDGE_CACHE_DIR")
    os.environ["AFFECT_BRIDGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("AFFECT_BRIDGE_CACHE_DIR", None)
    else:
        os.environ["AFFECT_BRIDGE_CACHE_DIR"] = before


def require_tool(name: str) -> str:
    """Tools .ci/setup installs. Missing in CI is a failure, not a skip."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/setup should have installed it")
        pytest.skip(f"{name} not installed (run bash .ci/setup)")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SOURCE_TOKEN = "s3cret"


@pytest.fixture
def loopback_ice() -> Iterator[None]:
    """ICE on 127.0.0.1 only: test traffic never leaves loopback."""
    from bridge.live.ice import restrict_host_addresses

    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses(None)


@pytest.fixture
async def source(loopback_ice: None) -> AsyncIterator[Any]:
    """The demo's WHEP media source on loopback, bearer token ``SOURCE_TOKEN``."""
    from bridge.demo.media_source import DemoSource
    from bridge.demo.run import demo_clips

    src = DemoSource(demo_clips(), token=SOURCE_TOKEN)
    await src.start()
    yield src
    await src.aclose()


async def until(pred: Any, what: str, *, limit_s: float = 60.0, step_s: float = 0.02) -> None:
    """Poll ``pred()`` until it is true; ``limit_s`` only keeps a broken bridge from hanging the
    suite (nothing asserts on how long it took)."""
    import asyncio

    for _ in range(max(1, int(limit_s / step_s))):
        if pred():
            return
        await asyncio.sleep(step_s)
    raise AssertionError(f"never saw {what}")


@contextlib.asynccontextmanager
async def api_client(token: str, **settings: Any) -> AsyncIterator[Any]:
    """The control API on a test server over a fresh engine (prosody unless told otherwise)
    and call manager, joins allowed where ``settings`` say (``outbound={"allow": [...]}``):
    the client has ``.manager`` and ``.events`` (every event emitted, kept
    after the block). Calls still open are left, and the engine closed, on the way out."""
    from aiohttp.test_utils import TestClient, TestServer

    from bridge.config import load_settings
    from bridge.connectors.context import join_context
    from bridge.control.app import create_app
    from bridge.live.calls import CallManager
    from bridge.pipeline.analysis import AnalysisEngine

    cfg = load_settings(None, **{"analyzers": ["prosody"], **settings})
    engine = AnalysisEngine(cfg)
    await engine.start()
    events: list[Any] = []

    async def emit(e: Any) -> None:
        events.append(e)

    manager = CallManager(engine, emit)
    try:
        app = create_app(engine, manager, token=token, join=join_context(cfg), shard=cfg.shard)
        async with TestClient(TestServer(app)) as client:
            client.manager, client.events = manager, events
            yield client
    finally:
        await manager.aclose()
        await engine.aclose()
