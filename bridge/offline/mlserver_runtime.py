"""MLServer runtime for an emotion model exported by ``affect-bridge export-model``.

``affect-bridge export-model`` copies this file into the model's directory as
``affect_bridge_runtime.py``; ``model-settings.json`` names it (``affect_bridge_runtime.
EmotionRuntime``). It runs in MLServer's own environment, which has only mlserver and torch: it
imports nothing from affect-bridge (affect-bridge itself never imports it).

Open Inference Protocol contract: input ``waveform``, FP32, shape ``[batch, samples]`` of raw
16 kHz mono audio (``data`` flat in row-major order, or nested by row); output ``scores``, FP32
``[batch, K]``: what ``1/model.pt`` (TorchScript) gives, the model's own normalisation included.

Batching happens here, not in MLServer's adaptive batching: MLServer merges the requests of one
adaptive batch by concatenating their ``data``, and flat rows of different lengths (a 4 s chunk
from one speaker, a 2.3 s remainder from another) can then no longer be told apart. So each
request reaches :meth:`EmotionRuntime.predict` on its own; its rows wait at most
``max_batch_time`` seconds for others, and rows of equal length from every waiting request share
one forward pass (at most ``max_batch_size`` rows); rows of other lengths run in passes of
their own, never padded (padding would change a row's scores). Answers keep each request's row
order. One inference thread runs the model, with ``threads`` torch threads (default 1).

Settings (``model-settings.json``, ``parameters.extra``): ``threads`` (torch threads, default
1), ``max_batch_size`` (rows per forward pass, default 16), ``max_batch_time`` (seconds a row
waits for others, default 0.02; 0: no waiting), ``max_queue`` (rows waiting at most, default
256: a request that would go past it is answered 503 at once, so an overloaded server says so
instead of letting every later request time out).
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from mlserver import MLModel
from mlserver.errors import InferenceError, MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput
from mlserver.utils import get_model_uri

__all__ = ["INPUT", "OUTPUT", "EmotionRuntime"]

INPUT, OUTPUT = "waveform", "scores"
_Pending = tuple[np.ndarray, "asyncio.Future[np.ndarray]"]


class EmotionRuntime(MLModel):
    """The exported TorchScript model behind MLServer: ``waveform`` in, ``scores`` out."""

    async def load(self) -> bool:
        extra = dict(getattr(self.settings.parameters, "extra", None) or {})
        threads = int(extra.get("threads", 1))
        self._max_batch = max(1, int(extra.get("max_batch_size", 16)))
        self._max_wait = max(0.0, float(extra.get("max_batch_time", 0.02)))
        self._max_queue = max(1, int(extra.get("max_queue", 256)))
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="emotion-inference",
                                            initializer=torch.set_num_threads,
                                            initargs=(max(1, threads),))
        uri = await get_model_uri(self.settings)
        loop = asyncio.get_running_loop()
        self._module = await loop.run_in_executor(self._executor, _load, uri)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(self._max_queue)
        self._batcher: asyncio.Task[None] | None = None  # started by the first request
        return True

    async def unload(self) -> bool:
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
            self._batcher = None
        self._executor.shutdown(wait=True)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = _rows(payload)
        if self._queue.qsize() + len(rows) > self._max_queue:
            raise MLServerError(f"{self._queue.qsize()} rows are waiting; {len(rows)} more would "
                                f"pass max_queue {self._max_queue}: try again later", 503)
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._batch_forever(), name="emotion-batcher")
        loop = asyncio.get_running_loop()
        futures = []
        for row in rows:
            future: asyncio.Future[np.ndarray] = loop.create_future()
            self._queue.put_nowait((row, future))
            futures.append(future)
        scores = np.stack(await asyncio.gather(*futures)).astype(np.float32)
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id,
            outputs=[ResponseOutput(name=OUTPUT, shape=list(scores.shape), datatype="FP32",
                                    data=scores.ravel().tolist())])

    async def _batch_forever(self) -> None:
        """Collect waiting rows for at most ``max_batch_time`` (or until ``max_batch_size``
        are waiting), run them by length, hand each its scores; again."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self._max_wait
            while len(batch) < self._max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:  # noqa: UP041 - not the builtin before Python 3.11
                    break
            by_length: dict[int, list[_Pending]] = {}
            for item in batch:
                if item[1].done():  # its request is gone (the client hung up): no work
                    continue
                by_length.setdefault(len(item[0]), []).append(item)
            for length, group in by_length.items():
                try:
                    waves = np.stack([row for row, _ in group])
                    out = await loop.run_in_executor(self._executor, self._forward, waves)
                except Exception as exc:  # this group's requests fail, the others go on
                    error = InferenceError(f"the model failed on {length} samples: "
                                           f"{type(exc).__name__}: {_first_line(exc)}")
                    for _, future in group:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), scores in zip(group, out, strict=True):
                    if not future.done():  # the request may be gone (client hung up)
                        future.set_result(scores)

    def _forward(self, waves: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            return self._module(torch.from_numpy(waves)).float().numpy()


def _load(uri: str) -> Any:
    return torch.jit.load(uri, map_location="cpu").eval()


def _rows(payload: InferenceRequest) -> list[np.ndarray]:
    """The waveforms of a request: input ``waveform``, FP32 ``[batch, samples]``."""
    found = [i for i in payload.inputs if i.name == INPUT]
    if len(found) != 1:
        raise InferenceError(f"expected one input named {INPUT!r}, got "
                             f"{[i.name for i in payload.inputs]}")
    tensor = found[0]
    if tensor.datatype != "FP32":
        raise InferenceError(f"input {INPUT!r} must be FP32, got {tensor.datatype}")
    shape = list(tensor.shape)
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise InferenceError(f"input {INPUT!r} must have shape [batch, samples], got {shape}")
    data = getattr(tensor.data, "root", tensor.data)
    if isinstance(data, (bytes, bytearray)):
        flat = np.frombuffer(data, dtype="<f4")
    elif isinstance(data, list) and data and isinstance(data[0], list):  # nested by row
        rows = [np.asarray(row, dtype=np.float32).ravel() for row in data]
        if len(rows) != shape[0] or any(len(row) == 0 for row in rows):
            raise InferenceError(f"input {INPUT!r}: {len(rows)} nested rows for shape {shape}")
        return rows
    else:
        flat = np.asarray(data, dtype=np.float32).ravel()
    if flat.size != shape[0] * shape[1]:
        raise InferenceError(f"input {INPUT!r}: {flat.size} values do not fill shape {shape} "
                             "(with MLServer's adaptive batching on, requests of different "
                             "lengths cannot be merged: leave it off, this runtime batches)")
    return list(flat.reshape(shape[0], shape[1]))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]
