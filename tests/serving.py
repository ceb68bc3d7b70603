"""A real MLServer for the tests: serving a model repository on 127.0.0.1, as a subprocess.

MLServer runs in an environment of its own, ``.venv-serving`` (it needs protobuf < 7, which the
project's does not have), made by ``.ci/setup`` from ``tests/serving-requirements.txt``. There is
no skipping: without it :meth:`ModelServer.start` fails and says how to make it.

    server = ModelServer(repository, tmp_path)   # nothing starts yet
    server.start()          # free ports on 127.0.0.1 (HTTP, gRPC, metrics), picked once
    server.url              # "http://127.0.0.1:PORT"
    server.infer("affect-emotion", rows)         # POST /v2/models/<name>/infer, JSON FP32
    server.kill()           # SIGKILL, its worker processes too: the server is down mid-call
    server.start()          # again, on the same ports: the server is back
    server.stop()           # SIGTERM, then SIGKILL after a grace period

It waits for ``/v2/health/ready`` and ``/v2/models/<name>/ready`` of every model in the
repository (each directory with a ``model-settings.json``). Its output goes to
``mlserver.log`` in the directory given (the test's tmp dir), appended across restarts; a start
that fails raises :class:`ServerFailed` with the log's last lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-serving"
MLSERVER = VENV / "bin" / "mlserver"
HOST = "127.0.0.1"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy

__all__ = ["MLSERVER", "ModelServer", "ServerFailed", "ServingUnavailable", "triton_config"]


class ServingUnavailable(RuntimeError):
    """``.venv-serving`` (MLServer's environment) is missing."""


class ServerFailed(RuntimeError):
    """MLServer exited, or was not ready in time; the message holds its log's last lines."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now (bound together, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                 for _ in range(count)]
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]


def _need_venv() -> None:
    if not MLSERVER.is_file():
        raise ServingUnavailable(f"{MLSERVER} is missing: run .ci/setup, which makes "
                                 ".venv-serving (MLServer's own environment, "
                                 "tests/serving-requirements.txt)")


def triton_config(path: Path) -> dict[str, Any]:
    """``config.pbtxt`` parsed as Triton's own ``ModelConfig`` message (tritonclient's copy of
    model_config.proto, in .venv-serving): a field or enum value Triton does not know fails
    here. Returned as a dict with the proto's field names (fields left at their default are
    absent)."""
    _need_venv()
    code = ("import json, sys\n"
            "from google.protobuf import json_format, text_format\n"
            "from tritonclient.grpc import model_config_pb2\n"
            "config = text_format.Parse(open(sys.argv[1]).read(), model_config_pb2.ModelConfig())\n"
            "print(json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)))\n")
    done = subprocess.run([str(VENV / "bin" / "python"), "-c", code, str(path)],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"{path} is not a valid Triton model configuration:\n"
                             f"{done.stderr.strip()}")
    return dict(json.loads(done.stdout))


class ModelServer:
    """MLServer serving ``repository``; see the module's doc."""

    def __init__(self, repository: Path, log_dir: Path, *, ready_timeout_s: float = 90.0,
                 parallel_workers: int = 1) -> None:
        self.repository = Path(repository)
        self.log_path = Path(log_dir) / "mlserver.log"
        self.ready_timeout_s = ready_timeout_s
        self.parallel_workers = parallel_workers
        self.startups: list[float] = []  # seconds from spawn to ready, per start (for reports)
        self._ports: list[int] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._ports is None:
            raise RuntimeError("the server was never started: no port yet")
        return self._ports[0]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def models(self) -> list[str]:
        """The names of the repository's models (from each ``model-settings.json``)."""
        return sorted(json.loads(p.read_text())["name"]
                      for p in self.repository.glob("*/model-settings.json"))

    def start(self) -> None:
        """Spawn MLServer (on the ports of the first start, if there was one) and wait until it
        and every model are ready."""
        _need_venv()
        if self.running:
            raise RuntimeError(f"MLServer is already running on {self.url}")
        if self._ports is None:
            self._ports = free_ports(3)
        http, grpc, metrics = self._ports
        work = self.log_path.parent / "mlserver-cwd"  # its .metrics and any .env: not the repo's
        work.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER")}
        env.update(MLSERVER_HOST=HOST, MLSERVER_HTTP_PORT=str(http),
                   MLSERVER_GRPC_PORT=str(grpc), MLSERVER_METRICS_PORT=str(metrics),
                   MLSERVER_METRICS_DIR=str(work / ".metrics"),
                   MLSERVER_PARALLEL_WORKERS=str(self.parallel_workers),
                   PYTHONDONTWRITEBYTECODE="1")
        with self.log_path.open("ab") as log:
            log.write(f"--- mlserver start {self.repository} on {HOST}:{http}\n".encode())
            log.flush()
            started = time.monotonic()
            self._proc = subprocess.Popen(
                [str(MLSERVER), "start", str(self.repository)], cwd=work, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)  # its own process group: kill() takes its workers too
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        self.startups.append(time.monotonic() - started)

    def _wait_ready(self) -> None:
        paths = ["/v2/health/ready", *(f"/v2/models/{m}/ready" for m in self.models())]
        deadline = time.monotonic() + self.ready_timeout_s
        while paths:
            proc = self._proc
            assert proc is not None
            if proc.poll() is not None:
                raise ServerFailed(f"MLServer exited with {proc.returncode} before it was "
                                   f"ready{self._log_tail()}")
            if self._status(paths[0]) == 200:
                paths.pop(0)
                continue
            if time.monotonic() > deadline:
                raise ServerFailed(f"MLServer was not ready at {paths[0]} within "
                                   f"{self.ready_timeout_s:.0f} s{self._log_tail()}")
            time.sleep(0.1)

    def _status(self, path: str) -> int:
        try:
            with _OPENER.open(self.url + path, timeout=2) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (OSError, ValueError):
            return 0

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"; {self.log_path} ends:\n" + "\n".join(text)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (MLServer stops its workers), SIGKILL to its group after ``timeout_s``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self._kill_group(proc)

    def kill(self) -> None:
        """SIGKILL to MLServer and its workers at once: the server is gone mid-whatever."""
        proc = self._proc
        if proc is not None:
            self._kill_group(proc)

    def _kill_group(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group it leads: its workers too
        proc.wait()
        self._proc = None

    def infer(self, model: str, rows: Sequence[Any] | np.ndarray, *, nested: bool = False,
              timeout_s: float = 30.0) -> np.ndarray:
        """POST ``rows`` (equal-length waveforms, FP32 ``[batch, samples]``; nested: one list per
        row, which also allows rows of different lengths) to the model; its ``scores``."""
        if nested:
            data: list[Any] = [np.asarray(r, np.float32).tolist() for r in rows]
            shape = [len(data), len(data[0])]
        else:
            array = np.asarray(rows, np.float32)
            data, shape = array.ravel().tolist(), list(array.shape)
        body = {"inputs": [{"name": "waveform", "shape": shape, "datatype": "FP32",
                            "data": data}]}
        reply = self.post(f"/v2/models/{model}/infer", body, timeout_s=timeout_s)
        (out,) = [o for o in reply["outputs"] if o["name"] == "scores"]
        return np.asarray(out["data"], np.float64).reshape(out["shape"])

    def post(self, path: str, body: dict[str, Any], *, timeout_s: float = 30.0) -> Any:
        """POST JSON to ``path``; the JSON answer. A non-2xx status raises
        :class:`urllib.error.HTTPError` (its ``read()`` holds MLServer's error)."""
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with _OPENER.open(request, timeout=timeout_s) as reply:
            return json.loads(reply.read())

    def __enter__(self) -> ModelServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
