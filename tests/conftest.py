"""Shared test helpers: fixture paths, synthetic signals, tiny models saved to disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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


@pytest.fixture(scope="session")
def tiny_emotion_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_emotion_model(tmp_path_factory.mktemp("models") / "tiny-er")


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a model hub: this machine has none, and CI must not depend on one."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def require_tool(name: str) -> str:
    """Tools .ci/setup installs. Missing in CI is a failure, not a skip."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/setup should have installed it")
        pytest.skip(f"{name} not installed (run bash .ci/setup)")
    return path
