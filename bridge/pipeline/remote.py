"""Emotion inference on a serving engine: ``[emotion] backend = "remote"``.

Each speaker's voiced chunks (the same chunks the local model hears, ``emotion_chunk_s`` of
speech each) go to an Open Inference Protocol (KServe v2) endpoint: Triton, KServe, MLServer or
any server that speaks it, serving a model exported by ``affect-bridge export-model`` (input
``waveform``: FP32 [1, samples] of 16 kHz audio; output ``scores``: FP32 [1, len(labels)],
probabilities or the dimensional values). The server batches the chunks of every bridge process
(its dynamic batching); the bridge keeps no model, no torch.

Requests go through the bridge's one outbound client (:mod:`bridge.outbound`): only to the
configured URL's origin, no redirects, a time limit each, a size limit on answers, a bearer token
from the environment or a file (never logged). Bodies are JSON (the protocol's mandatory
encoding, which every server accepts), written by orjson: about 2 ms for a 4 s chunk where the
standard library took 50.

What a user sees:

* the same events and metrics as with a local model: ``affect_inference_seconds{analyzer=
  "emotion"}`` is the round trip (network, queueing and inference on the server);
* at most ``max_in_flight`` requests per process wait on the server; a chunk beyond that is
  dropped and counted (``affect_dropped_total{stage="inference_emotion"}``), as a full local
  queue drops, so a slow server never stalls a call (offline ``analyze`` waits instead);
* a failed request is counted (``affect_remote_inference_failures_total{reason}``) and the
  window goes out without emotion; the first failure after success emits ``analyzer.degraded``
  for emotion and ``/readyz`` says so; prosody and stress go on; the first success after that
  logs the recovery, ``/readyz`` is ready again and the emotion estimates resume.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import ssl
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from analyzers.emotion import EmotionConfig
from analyzers.heads import Head
from analyzers.loading import ModelUnavailable, RemoteUnavailable
from analyzers.types import SAMPLE_RATE, EmotionScores, SpeechWindow
from bridge import stats
from bridge.allowlist import AllowList
from bridge.errors import ConnectorError
from bridge.outbound import MediaServerClient, OutboundLimits

__all__ = ["INPUT", "OUTPUT", "RemoteEmotionAnalyzer", "RemoteUnavailable"]

log = logging.getLogger(__name__)

INPUT = "waveform"  # the exported model's input: FP32 [batch, samples], 16 kHz mono
OUTPUT = "scores"  # its output: FP32 [batch, len(labels)]

_REASONS = {"unreachable": "unreachable", "upstream_error": "http_error"}


class RemoteEmotionAnalyzer:
    """The ``emotion`` analyzer when its model runs on an inference server."""

    name = "emotion"

    def __init__(self, config: EmotionConfig, *,
                 max_response_bytes: int | None = None,
                 record: stats.Record = stats.ignore) -> None:
        self.config = config
        self.remote = config.remote
        self.min_audio_s = config.min_audio_s
        self.scheduler = None  # no local model, no inference thread
        self._record = record
        # The request time limit is [emotion.remote]'s; the answer size limit [outbound]'s.
        self._limits = OutboundLimits(timeout_s=self.remote.timeout_s)
        if max_response_bytes is not None:
            self._limits = OutboundLimits(self.remote.timeout_s, max_response_bytes)
        self._slots = asyncio.Semaphore(self.remote.max_in_flight)
        self._headers: dict[str, str] = {"Content-Type": "application/json"}
        self._client: MediaServerClient | None = None
        base = self.remote.url.rstrip("/")
        path = f"{base}/v2/models/{self.remote.model}"
        if self.remote.version:
            path += f"/versions/{self.remote.version}"
        self._metadata_url, self._infer_url = path, f"{path}/infer"
        self.head = self._head()

    def _head(self) -> Head:
        labels = list(self.remote.labels)
        dimensional = self.remote.kind == "dimensional"
        if dimensional and not {"arousal", "valence"} <= {x.strip().lower() for x in labels}:
            raise ValueError("a dimensional remote model needs the labels arousal and valence")
        return Head.from_labels(labels, dimensional=dimensional,
                                value_range=self.remote.value_range)

    def describe(self) -> str:
        return (f"{self.remote.model} on {self._client.shown if self._client else '?'} "
                f"({self.head.describe()})")

    def load(self) -> None:
        """Blocking: read the token and the CA bundle; no request yet. Raises
        :class:`ModelUnavailable` for what no retry can fix."""
        token = self._token()
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        context: ssl.SSLContext | None = None
        if self.remote.ca_file:
            try:
                context = ssl.create_default_context(cafile=self.remote.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ModelUnavailable(f"emotion server CA file {self.remote.ca_file!r} cannot "
                                       f"be read ({type(exc).__name__})") from None
        self._client = MediaServerClient(self.remote.url, what="inference server",
                                         allow=AllowList.origins([self.remote.url]),
                                         limits=self._limits, ssl=context,
                                         connections=max(16, self.remote.max_in_flight))

    def _token(self) -> str | None:
        token = self._read_token()
        if token is not None and not (token.isascii() and token.isprintable() and
                                      " " not in token):
            where = self.remote.token_env or self.remote.token_file
            raise ModelUnavailable(f"emotion server token from {where!r} holds spaces or "
                                   "control characters (one line of visible ASCII expected)")
        return token

    def _read_token(self) -> str | None:
        if self.remote.token_env:
            token = os.environ.get(self.remote.token_env, "").strip()
            if not token:
                raise ModelUnavailable(f"emotion server token: environment variable "
                                       f"{self.remote.token_env} is not set")
            return token
        if self.remote.token_file:
            try:
                token = Path(self.remote.token_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ModelUnavailable(f"emotion server token file {self.remote.token_file!r} "
                                       f"cannot be read ({type(exc).__name__})") from None
            if not token:
                raise ModelUnavailable(f"emotion server token file {self.remote.token_file!r} "
                                       "is empty")
            return token
        return None

    async def check(self) -> None:
        """The model's metadata: it must take ``waveform`` and give ``scores`` with one value
        per label. A wrong model raises :class:`ModelUnavailable` (configuration); a server
        that does not answer, :class:`RemoteUnavailable` (it may come up later)."""
        client = self._need_client()
        try:
            reply = await client.request("GET", self._metadata_url, headers=self._headers,
                                         ok={200})
            meta = client.json_object(reply)
        except ConnectorError as exc:
            raise RemoteUnavailable(str(exc)) from None
        inputs, outputs = _tensors(meta.get("inputs")), _tensors(meta.get("outputs"))
        if INPUT not in inputs or OUTPUT not in outputs:
            raise ModelUnavailable(
                f"model {self.remote.model!r} on {client.shown} has inputs "
                f"{sorted(map(str, inputs))} and outputs {sorted(map(str, outputs))}, not "
                f"{INPUT!r} and {OUTPUT!r}: export it with affect-bridge export-model")
        shape = outputs[OUTPUT].get("shape")
        width = shape[-1] if isinstance(shape, list) and shape and isinstance(shape[-1], int) \
            and not isinstance(shape[-1], bool) else -1
        if width not in (-1, len(self.head.labels)):
            raise ModelUnavailable(
                f"model {self.remote.model!r} gives {width} scores, the configured labels are "
                f"{len(self.head.labels)} ([emotion.remote] labels)")

    def _need_client(self) -> MediaServerClient:
        if self._client is None:
            raise ModelUnavailable("emotion remote backend is not loaded")
        return self._client

    async def analyze(self, window: SpeechWindow, *, wait: bool = False) -> EmotionScores | None:
        """The estimate for the speech handed over with this window; None when there is too
        little of it or (live) when ``max_in_flight`` requests already wait. Raises
        :class:`RemoteUnavailable` when the request fails."""
        speech = window.new_speech
        if self._client is None or len(speech) < self.min_audio_s * SAMPLE_RATE:
            return None
        if self._slots.locked() and not wait:
            self._record(stats.InferenceBatch(self.name, 0, 0.0))  # turned away, counted
            return None
        async with self._slots:
            started = time.perf_counter()
            row = await self._infer(speech)
            self._record(stats.InferenceBatch(self.name, 1, time.perf_counter() - started))
        return self.head.scores(row, len(speech) / SAMPLE_RATE)

    async def _infer(self, speech: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        client = self._need_client()
        body = orjson.dumps(
            {"inputs": [{"name": INPUT, "shape": [1, len(speech)], "datatype": "FP32",
                         "data": np.ascontiguousarray(speech, dtype=np.float32)}],
             "outputs": [{"name": OUTPUT}]},
            option=orjson.OPT_SERIALIZE_NUMPY)
        try:
            reply = await client.request("POST", self._infer_url, data=body,
                                         headers=self._headers, ok={200})
        except ConnectorError as exc:
            self._record(stats.RemoteFailure(self.name, _REASONS.get(exc.error, "bad_response")))
            raise RemoteUnavailable(str(exc)) from None
        try:
            return self._row(reply.body)
        except ValueError as exc:
            self._record(stats.RemoteFailure(self.name, "bad_response"))
            raise RemoteUnavailable(f"{client.what} {client.shown} {exc}") from None

    def _row(self, body: bytes) -> npt.NDArray[np.float64]:
        """The one row of ``scores`` in an inference response; ValueError says what is wrong."""
        try:
            value: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ValueError("sent an answer that is not JSON") from None
        tensor = _tensors(value.get("outputs") if isinstance(value, dict) else None).get(OUTPUT)
        if tensor is None:
            raise ValueError(f"sent no {OUTPUT!r} output")
        data = tensor.get("data")
        if isinstance(data, list) and data and all(isinstance(row, list) for row in data):
            data = [x for row in data for x in row]  # nested instead of flat: both are allowed
        n = len(self.head.labels)
        if not isinstance(data, list) or len(data) != n or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                for x in data):
            raise ValueError(f"sent {OUTPUT!r} that is not {n} finite numbers")
        return np.asarray(data, dtype=np.float64)

    def close(self) -> None:
        """Nothing blocking to release (the HTTP session closes in :meth:`aclose`)."""

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _tensors(value: Any) -> dict[str, dict[str, Any]]:
    """A metadata or response tensor list by name; whatever is not a list of objects: none."""
    if not isinstance(value, list):
        return {}
    return {t["name"]: t for t in value if isinstance(t, dict) and isinstance(t.get("name"), str)}
