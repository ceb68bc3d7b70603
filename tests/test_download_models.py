"""``affect-bridge download-models`` when the model hub cannot be reached, as a user runs it.

The hub is a refused port on 127.0.0.1 (HF_ENDPOINT): nothing leaves loopback, and a refused
connection fails at once, so the run lasts as long as huggingface_hub's own retry backoff (about
25 s), never as long as a download.
"""

from __future__ import annotations

import itertools
import logging
import re
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, run_cli

HUB_MODEL = "superb/wav2vec2-base-superb-er"
PREFIX = re.compile(r"^affect-bridge: (?:[A-Z]+: )?")


def hub_env(tmp_path: Path, endpoint: str, *, offline: bool) -> dict[str, str]:
    return {
        "HF_HUB_OFFLINE": "1" if offline else "0",  # run_cli sets "1" unless told otherwise
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(tmp_path / "hf"),  # an empty cache of the test's own
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "*", "no_proxy": "*",  # loopback stays loopback, whatever proxy is set
        "AFFECT_BRIDGE_ANALYZERS": '["prosody", "emotion"]',
        "AFFECT_BRIDGE_EMOTION__MODEL": HUB_MODEL,
    }


def stderr_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.strip()]


def assert_no_line_twice(lines: list[str]) -> None:
    """The same message twice, with or without this program's prefix, is a duplicate: the hub
    library's own handler printed each record bare, and the root handler again."""
    twice = [ln for ln, n in Counter(PREFIX.sub("", ln) for ln in lines).items() if n > 1]
    assert not twice, "\n".join(lines)


def cached_weights(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "hf").rglob("*") if p.suffix in (".safetensors", ".bin")]


@pytest.mark.slow
def test_unreachable_hub_says_so_once_and_what_to_do(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens: connections are refused
    proc = run_cli("download-models", env=hub_env(tmp_path, endpoint, offline=False),
                   timeout=300)

    assert proc.returncode == 1, proc.stderr  # EXIT_FAILED, as for any model not fetched
    assert "Traceback" not in proc.stderr
    assert "is in the local cache" not in proc.stdout
    lines = stderr_lines(proc)
    assert_no_line_twice(lines)
    last = lines[-1]
    assert last.startswith("affect-bridge: error: the model hub at " + endpoint), last
    assert "could not be reached" in last and HUB_MODEL in last
    for remedy in ("[emotion] model", "HF_HUB_OFFLINE=1", "HF_ENDPOINT"):
        assert remedy in last, (remedy, last)
    assert not any("error" in ln for ln in lines[:-1]), "\n".join(lines)
    assert not cached_weights(tmp_path)


@pytest.fixture
def silent_hub() -> Iterator[tuple[str, socket.socket]]:
    """A loopback port that accepts connections and never answers: it only counts visitors."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        yield f"http://127.0.0.1:{server.getsockname()[1]}", server


def test_offline_says_the_hub_was_not_asked(tmp_path: Path,
                                            silent_hub: tuple[str, socket.socket]) -> None:
    endpoint, server = silent_hub
    proc = run_cli("download-models", env=hub_env(tmp_path, endpoint, offline=True),
                   timeout=300)

    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = stderr_lines(proc)
    assert_no_line_twice(lines)
    last = lines[-1]
    assert last.startswith("affect-bridge: error: HF_HUB_OFFLINE is set"), last
    assert "not asked" in last and "not in the local cache" in last and HUB_MODEL in last
    for remedy in ("[emotion] model", "unset HF_HUB_OFFLINE", "HF_ENDPOINT"):
        assert remedy in last, (remedy, last)
    with pytest.raises(BlockingIOError):
        server.accept()  # nobody knocked
    assert not cached_weights(tmp_path)


def test_local_model_directory_needs_no_hub(tmp_path: Path, tiny_emotion_model: Path) -> None:
    env = {**hub_env(tmp_path, f"http://127.0.0.1:{free_port()}", offline=False),
           "AFFECT_BRIDGE_EMOTION__MODEL": str(tiny_emotion_model)}
    proc = run_cli("download-models", env=env, timeout=300)

    assert proc.returncode == 0, proc.stderr
    assert f"emotion model {tiny_emotion_model} is in the local cache" in proc.stdout
    assert "hub" not in proc.stderr


# What tells "the hub was not reached": exception types in the cause chain, never message text.

def chained(*excs: BaseException) -> BaseException:
    """``excs[0]`` raised from ``excs[1]`` raised from ... (as ``raise ... from exc`` leaves)."""
    for outer, inner in itertools.pairwise(excs):
        outer.__cause__ = inner
    return excs[0]


def test_a_connection_error_under_the_loader_error_is_the_hub_unreachable() -> None:
    from huggingface_hub.utils import LocalEntryNotFoundError

    from analyzers.loading import ModelUnavailable
    from bridge.offline.download import ConfiguredModel, hub_failure

    refused = ConnectionRefusedError(111, "Connection refused")
    exc = chained(ModelUnavailable("cannot load emotion model 'x': We couldn't connect"),
                  OSError("We couldn't connect"), LocalEntryNotFoundError("no local file"),
                  refused)
    found = hub_failure(exc)
    assert found is not None and not found.offline and found.cause is refused
    line = found.advice([ConfiguredModel("emotion model", "[emotion] model", "x"),
                         ConfiguredModel("speech recognition model", "[semantic] asr_model",
                                         "y")])
    assert "emotion model 'x' and speech recognition model 'y' were not downloaded" in line
    assert "[emotion] model and [semantic] asr_model" in line


def test_offline_mode_is_offline_and_other_errors_are_not_the_hub() -> None:
    import httpx2  # what huggingface_hub 2 answers with
    from huggingface_hub.utils import (
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    from analyzers.loading import ModelUnavailable
    from bridge.offline.download import hub_failure

    offline = hub_failure(chained(ModelUnavailable("x"), OfflineModeIsEnabled("offline")))
    assert offline is not None and offline.offline
    # Words are not types: a message that talks of connecting is not a connection error.
    assert hub_failure(ModelUnavailable("could not connect: Connection refused")) is None
    assert hub_failure(chained(ModelUnavailable("x"), OSError("Can't load feature extractor"))
                       ) is None
    request = httpx2.Request("HEAD", "http://127.0.0.1:1/x/resolve/main/config.json")
    missing = RepositoryNotFoundError("404", response=httpx2.Response(404, request=request))
    assert hub_failure(chained(ModelUnavailable("x"), missing)) is None  # reached: wrong id
    down = HfHubHTTPError("503", response=httpx2.Response(503, request=request))
    found = hub_failure(chained(ModelUnavailable("x"), down))
    assert found is not None and not found.offline


def test_a_network_line_already_shown_is_not_shown_again() -> None:
    from bridge.logsafe import ShownOnceFilter

    once = ShownOnceFilter()

    def record(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, None, None)

    thrown = "'[Errno 111] Connection refused' thrown while requesting HEAD http://127.0.0.1:1/"
    assert once.filter(record("huggingface_hub.utils._http", thrown))
    assert once.filter(record("huggingface_hub.utils._http", "Retrying in 1s [Retry 1/5]."))
    assert not once.filter(record("huggingface_hub.utils._http", thrown))
    assert once.filter(record("bridge.live.calls", "same words twice"))  # this project's: all shown
    assert once.filter(record("bridge.live.calls", "same words twice"))
