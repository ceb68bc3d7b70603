"""``affect-bridge export-model``: the repository it writes, served by a real MLServer, gives what
the local model gives; bad requests fail with a one-line error and touch nothing.

Tiny random checkpoints (a wav2vec2 classifier and an audEERING-form dimensional model) are
exported, the first through the command line, the second through :func:`export_model`; one
MLServer (tests/serving.py, .venv-serving) serves both for the whole module.
"""

from __future__ import annotations

import ast
import json
import tomllib
import urllib.error
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import SR, build_tiny_emotion_model, harmonic, run_cli
from tests.serving import ModelServer, triton_config

CATEGORICAL, DIMENSIONAL = "affect-emotion", "affect-dim"
LABELS = ["neu", "hap", "ang", "sad"]  # build_tiny_emotion_model's, in order
TOLERANCE = 1e-4


def _voice(seconds: float, f0: float = 160.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    wave = harmonic(f0, seconds, jitter=0.01, shimmer=0.05, seed=seed)
    return (wave + 0.01 * rng.standard_normal(len(wave))).astype(np.float32)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, tiny_emotion_model: Path,
               tiny_dimensional_model: Path) -> dict[str, Any]:
    from bridge.offline.export import export_model

    root = tmp_path_factory.mktemp("export") / "models"
    cli = run_cli("export-model", str(tiny_emotion_model), "--format", "triton", str(root))
    assert cli.returncode == 0, cli.stderr
    export_model(str(tiny_dimensional_model), root, name=DIMENSIONAL)
    return {"root": root, "cli": cli}


@pytest.fixture(scope="module")
def server(repository: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[ModelServer]:
    mlserver = ModelServer(repository["root"], tmp_path_factory.mktemp("mlserver"))
    mlserver.start()
    try:
        yield mlserver
    finally:
        mlserver.stop()


def _local(path: Path) -> Any:
    from analyzers.emotion import EmotionConfig, EmotionModel

    model = EmotionModel(EmotionConfig(model=str(path), device="cpu", precision="fp32",
                                       threads=1, max_batch=1))
    model.load()
    return model


@pytest.fixture(scope="module")
def local_categorical(tiny_emotion_model: Path) -> Any:
    return _local(tiny_emotion_model)


@pytest.fixture(scope="module")
def local_dimensional(tiny_dimensional_model: Path) -> Any:
    return _local(tiny_dimensional_model)


def test_the_repository_holds_triton_and_mlserver_files(repository: dict[str, Any]) -> None:
    model_dir = repository["root"] / CATEGORICAL
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "1", "affect-bridge.json", "affect_bridge_runtime.py", "config.pbtxt",
        "model-settings.json"]
    config = triton_config(model_dir / "config.pbtxt")  # Triton's own schema
    assert config["name"] == CATEGORICAL and config["platform"] == "pytorch_libtorch"
    assert config["max_batch_size"] >= 8
    assert config["input"] == [{"name": "waveform", "data_type": "TYPE_FP32", "dims": ["-1"]}]
    assert config["output"] == [{"name": "scores", "data_type": "TYPE_FP32", "dims": ["4"]}]
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) > 0
    assert [g.get("kind", "KIND_AUTO") for g in config["instance_group"]] == ["KIND_AUTO"]
    assert "kind: KIND_AUTO" in (model_dir / "config.pbtxt").read_text()
    assert config["parameters"]["INFERENCE_MODE"] == {"string_value": "true"}

    meta = json.loads((model_dir / "affect-bridge.json").read_text())
    assert meta["labels"] == LABELS and meta["kind"] == "categorical"
    assert meta["sample_rate"] == SR and meta["precision"] == "fp32"
    assert meta["input"]["name"] == "waveform" and meta["output"]["shape"] == [-1, 4]
    assert meta["check"]["difference"] <= TOLERANCE

    settings = json.loads((model_dir / "model-settings.json").read_text())
    assert settings["name"] == CATEGORICAL
    assert settings["implementation"] == "affect_bridge_runtime.EmotionRuntime"
    assert settings["parameters"]["uri"] == "./1/model.pt"
    assert settings["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 4]}]

    # The runtime runs where only mlserver and torch are installed.
    tree = ast.parse((model_dir / "affect_bridge_runtime.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {str(node.module).split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert not imported & {"bridge", "analyzers", "transformers"}, imported

    # Triton's libtorch backend maps the input by the name of forward's argument.
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's
        module = torch.jit.load(str(model_dir / "1" / "model.pt"))
    assert [a.name for a in module.forward.schema.arguments][1:] == ["waveform"]


def test_the_command_prints_the_bridge_configuration(repository: dict[str, Any]) -> None:
    printed = tomllib.loads(repository["cli"].stdout)
    assert printed["emotion"]["backend"] == "remote"
    remote = printed["emotion"]["remote"]
    assert remote["model"] == CATEGORICAL and remote["labels"] == LABELS
    assert remote["kind"] == "categorical" and remote["value_range"] == [0.0, 1.0]
    assert remote["url"].startswith("http://127.0.0.1:")


def test_served_scores_are_the_local_models(server: ModelServer, local_categorical: Any,
                                            local_dimensional: Any) -> None:
    waves = [_voice(1.0, 120.0, 1), _voice(2.5, 210.0, 2), _voice(4.0, 160.0, 3)]
    for name, local in ((CATEGORICAL, local_categorical), (DIMENSIONAL, local_dimensional)):
        for wave in waves:
            (row,) = server.infer(name, [wave])
            served = local.head.scores(row, len(wave) / SR)
            (expected,) = local.predict([wave])
            assert served.probabilities.keys() == expected.probabilities.keys()
            for label, p in expected.probabilities.items():
                assert served.probabilities[label] == pytest.approx(p, abs=TOLERANCE)
            assert served.arousal == pytest.approx(expected.arousal, abs=TOLERANCE)
            assert served.valence == pytest.approx(expected.valence, abs=TOLERANCE)
            if name == DIMENSIONAL:
                assert served.dominance == pytest.approx(expected.dominance, abs=TOLERANCE)


def test_served_rows_are_transformers_own(server: ModelServer, tiny_emotion_model: Path) -> None:
    """The raw rows against the reference: transformers' class and feature extractor, softmax."""
    import torch
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    model = Wav2Vec2ForSequenceClassification.from_pretrained(tiny_emotion_model).eval()
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(tiny_emotion_model)
    waves = [_voice(2.0, f0, seed) for seed, f0 in enumerate((110.0, 180.0, 260.0))]
    with torch.inference_mode():
        inputs = extractor(waves, sampling_rate=SR, return_tensors="pt")["input_values"]
        expected = torch.softmax(model(inputs).logits, dim=-1).double().numpy()
    served = server.infer(CATEGORICAL, waves)
    assert served.shape == (3, len(LABELS))
    np.testing.assert_allclose(served, expected, atol=TOLERANCE, rtol=0)


def test_a_batch_gives_the_rows_one_at_a_time_would(server: ModelServer) -> None:
    equal = [_voice(1.5, f0, seed) for seed, f0 in enumerate((100.0, 150.0, 240.0))]
    alone = np.concatenate([server.infer(CATEGORICAL, [w]) for w in equal])
    np.testing.assert_allclose(server.infer(CATEGORICAL, equal), alone, atol=1e-6, rtol=0)

    mixed = [_voice(1.0, 130.0, 4), _voice(2.2, 170.0, 5), _voice(1.0, 220.0, 6)]
    alone = np.concatenate([server.infer(DIMENSIONAL, [w]) for w in mixed])
    np.testing.assert_allclose(server.infer(DIMENSIONAL, mixed, nested=True), alone,
                               atol=1e-6, rtol=0)


def test_concurrent_requests_of_different_lengths_each_get_their_own_rows(
        server: ModelServer) -> None:
    """As bridges send them: one flat [1, samples] row per request, lengths differing, many at
    once. The runtime batches equal lengths only, whatever arrives together."""
    distinct = [_voice(seconds, 100.0 + 15 * i, i)
                for i, seconds in enumerate([1.0, 1.7, 2.4, 1.0, 1.7, 2.4, 1.0, 3.1])]
    waves = distinct * 2
    alone = [server.infer(CATEGORICAL, [w])[0] for w in distinct] * 2
    with ThreadPoolExecutor(len(waves)) as pool:
        together = list(pool.map(lambda w: server.infer(CATEGORICAL, [w])[0], waves))
    np.testing.assert_allclose(np.stack(together), np.stack(alone), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("tensor", "says"), [
    ({"shape": [1, 8000], "datatype": "FP64"}, "must be FP32"),
    ({"shape": [8000], "datatype": "FP32"}, "[batch, samples]"),
    ({"shape": [2, 8000], "datatype": "FP32"}, "do not fill shape"),
    ({"shape": [1, 100], "datatype": "FP32"}, "the model failed on 100 samples"),
])
def test_a_bad_request_is_answered_400_with_the_reason(server: ModelServer,
                                                       tensor: dict[str, Any], says: str) -> None:
    n = tensor["shape"][-1]
    body = {"inputs": [{"name": "waveform", **tensor, "data": [0.01] * n}]}
    with pytest.raises(urllib.error.HTTPError) as failed:
        server.post(f"/v2/models/{CATEGORICAL}/infer", body)
    assert failed.value.code == 400
    assert says in json.loads(failed.value.read())["error"]
    assert server.infer(CATEGORICAL, [_voice(1.0)]).shape == (1, 4)  # still serving


def test_the_server_goes_down_and_comes_back_on_its_port(server: ModelServer) -> None:
    url, before = server.url, server.infer(DIMENSIONAL, [_voice(1.0)])
    server.kill()
    with pytest.raises(urllib.error.URLError):
        server.infer(DIMENSIONAL, [_voice(1.0)], timeout_s=5)
    server.start()
    assert server.url == url
    np.testing.assert_allclose(server.infer(DIMENSIONAL, [_voice(1.0)]), before, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "bf16+matmul"])
def test_bf16_where_the_processor_has_it(tiny_emotion_model: Path, tmp_path: Path,
                                         precision: str) -> None:
    from analyzers.precision import native_bf16
    from bridge.offline.export import ExportError, export_model

    if not native_bf16():
        with pytest.raises(ExportError, match="bf16 is not native"):
            export_model(str(tiny_emotion_model), tmp_path, precision=precision)
        assert not any(tmp_path.iterdir())
        return
    exported = export_model(str(tiny_emotion_model), tmp_path, precision=precision)
    meta = json.loads((exported.path / "affect-bridge.json").read_text())
    assert meta["precision"] == precision and meta["check"]["difference"] <= 0.05


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("affect-bridge:")]
    assert len(lines) == 1 and lines[0].startswith("affect-bridge: error: "), stderr
    return lines[0]


def test_an_unknown_or_refused_checkpoint_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    missing = run_cli("export-model", str(tmp_path / "no-such-model"), "--format", "triton",
                      str(out))
    assert missing.returncode == 2
    assert "not in the local model cache" in _one_line_error(missing.stderr)
    refused = build_tiny_emotion_model(tmp_path / "labels", labels=("LABEL_0", "LABEL_1"))
    cli = run_cli("export-model", str(refused), "--format", "triton", str(out))
    assert cli.returncode == 2 and "refused" in _one_line_error(cli.stderr)
    assert not out.exists() or not any(out.iterdir())


def test_an_occupied_target_exits_2_and_is_left_as_it_was(tiny_emotion_model: Path,
                                                          tmp_path: Path) -> None:
    occupied = tmp_path / CATEGORICAL
    occupied.mkdir()
    (occupied / "config.pbtxt").write_text("mine\n")
    cli = run_cli("export-model", str(tiny_emotion_model), "--format", "triton", str(tmp_path))
    assert cli.returncode == 2 and "is not empty" in _one_line_error(cli.stderr)
    assert [p.name for p in tmp_path.iterdir()] == [CATEGORICAL]  # no staging left behind
    assert [p.name for p in occupied.iterdir()] == ["config.pbtxt"]
    assert (occupied / "config.pbtxt").read_text() == "mine\n"

    bad_name = run_cli("export-model", str(tiny_emotion_model), "--format", "triton",
                       str(tmp_path), "--name", "../elsewhere")
    assert bad_name.returncode == 2 and "model name" in _one_line_error(bad_name.stderr)
