"""`affect-bridge demo` on a terminal (a pty): what model loading logs stands above the live
table, never across it."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, build_tiny_emotion_model, free_port
from tests.test_console import screen

pytestmark = pytest.mark.slow

HEADER = "speaker          stress"
WIDTH = 100


def run_demo_on_a_pty(env: dict[str, str]) -> str:
    """Run the demo with stdout and stderr on one pty until every speaker has joined, then
    Ctrl-C it; what the terminal received."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, WIDTH, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "demo", "--listen", f"127.0.0.1:{free_port()}"],
        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": str(WIDTH), "LINES": "40", **env})
    os.close(slave)
    got = b""
    interrupted = False
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 120)
            if not ready:  # a guard against a hung demo, not a timing
                raise AssertionError(f"the demo went silent: {got.decode(errors='replace')}")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the demo has exited and closed the terminal
                break
            if not chunk:
                break
            got += chunk
            if not interrupted and b"Carol joined" in got:
                proc.send_signal(signal.SIGINT)
                interrupted = True
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    return got.decode(errors="replace").replace("\r\n", "\n")


def test_an_unavailable_emotion_model_is_reported_above_the_table(tmp_path: Path) -> None:
    """No emotion weights here: the warning comes before the table's first frame, and the
    analyzer.degraded event is one of the table's event lines."""
    raw = run_demo_on_a_pty({"AFFECT_BRIDGE_EMOTION__MODEL": str(tmp_path / "no-such-model"),
                             "AFFECT_BRIDGE_CACHE_DIR": str(tmp_path / "cache"),
                             "XDG_STATE_HOME": str(tmp_path / "state")})
    assert HEADER in raw, raw
    assert raw.count("continuing without it") == 1, raw
    assert raw.index("continuing without it") < raw.index(HEADER)  # printed before the table
    shown = screen(raw, WIDTH)
    header = next(i for i, row in enumerate(shown) if row.startswith(HEADER))
    warned = next(i for i, row in enumerate(shown) if "continuing without it" in row)
    assert warned < header
    assert shown[header + 1].startswith(("Alice ", "Bob ", "Carol "))
    assert any(row.lstrip().startswith("0.0s  analyzer emotion unavailable:")
               for row in shown[header:])


def test_a_loaded_emotion_model_is_named_above_the_table(tmp_path: Path) -> None:
    """A model that loads: its line (device and precision) stands above the table."""
    model = build_tiny_emotion_model(tmp_path / "model")
    raw = run_demo_on_a_pty({"AFFECT_BRIDGE_EMOTION__MODEL": str(model),
                             "AFFECT_BRIDGE_EMOTION__PRECISION": "fp32",
                             "AFFECT_BRIDGE_CACHE_DIR": str(tmp_path / "cache"),
                             "XDG_STATE_HOME": str(tmp_path / "state")})
    assert HEADER in raw, raw
    assert "unavailable" not in raw
    before = raw[:raw.index(HEADER)].splitlines()
    line = next(line for line in before if "emotion model" in line and " loaded" in line)
    assert "INFO" in line and "fp32" in line and "cpu" in line  # which precision, on what
