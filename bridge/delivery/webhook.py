"""Signed, durable webhooks (Standard Webhooks v1) through a SQLite outbox.

``emit`` queues the event (bounded; when full, ``affect.sample`` events are dropped and counted,
other events wait for room) and returns once a writer task has committed it to the outbox
(events from every speaker are committed together in batches): the bus hands an event to the
console and other sinks only after that, so nothing is shown that a crash could still lose.
Analysis never waits on a receiver; only committed rows are delivered. Each endpoint has its own worker and
HTTP connection pool, so a slow or dead endpoint never holds back another.

Per request: ``webhook-id`` (the event id: the same on every retry), ``webhook-timestamp`` (the
attempt's time) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of id.timestamp.body>``, one
entry per configured secret, for rotation), signed with the ``standardwebhooks`` library.

Outcomes: 2xx delivered (row removed); 410 disables the endpoint (its row kept as failed; a
replay re-enables it); 429/503 retried after ``Retry-After`` when given; other errors and
timeouts retried on the schedule with +-10 % jitter; after the last retry the row stays as
failed (``GET /v1/webhooks/failed``, ``POST /v1/webhooks/failed/{id}/replay``).

Delivery is at least once. Order: rows are sent oldest first, but up to ``max_in_flight``
requests run at once per endpoint and retries go later, so receivers must not rely on arrival
order (order by the event's ``time`` or its ``id``, a ULID) and must de-duplicate on
``webhook-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import fnmatch
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from standardwebhooks.webhooks import Webhook

from bridge import events as ev
from bridge import stats
from bridge.config import ConfigError, OutboxSettings, WebhookSettings, read_secret
from bridge.delivery.outbox import Outbox, OutboxRow
from bridge.tasks import TaskSet

__all__ = ["WebhookSink", "load_secrets"]

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000
COMMIT_WAIT_S = 20.0  # at shutdown, the longest wait for queued events to be committed
WRITE_BATCH = 500
MAX_RETRY_AFTER_S = 3600.0


def load_secrets(cfg: WebhookSettings) -> list[Webhook]:
    """The endpoint's signing secrets (``whsec_<base64>``, space-separated for rotation) from
    the first line of its file, else its environment variable (:func:`bridge.config.read_secret`).
    Errors name where the secret was looked for, never its value, and the endpoint by its label
    (no query string or user info)."""
    endpoint = endpoint_label(cfg)
    where = (f"secret_file {str(cfg.secret_file)!r}" if cfg.secret_file is not None
             else f"environment variable {cfg.secret_env}")
    secrets = (read_secret(cfg.secret_env, cfg.secret_file, f"webhook {endpoint}") or "").split()
    if not secrets:
        raise ConfigError(f"webhook {endpoint}: no signing secret in {where}")
    out = []
    for n, secret in enumerate(secrets, 1):
        try:
            out.append(Webhook(secret))
        except Exception:
            raise ConfigError(f"webhook {endpoint}: secret #{n} in {where} is not whsec_<base64>"
                              ) from None
    return out


def endpoint_label(cfg: WebhookSettings) -> str:
    """The endpoint's name in metrics and listings: its ``name``, else scheme://host/path (no
    query string: it may hold a token)."""
    if cfg.name:
        return cfg.name
    u = urlsplit(cfg.url)
    return f"{u.scheme}://{u.netloc.rsplit('@', 1)[-1]}{u.path}"


@dataclass(frozen=True)
class _Reply:
    """What one request came to: its HTTP status (0: no answer), an error line for the outbox,
    the Retry-After it asked for (429/503), and its duration."""

    status: int
    error: str
    retry_after: float | None
    seconds: float


@dataclass
class _Endpoint:
    cfg: WebhookSettings
    label: str
    secrets: list[Webhook]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: set[int] = field(default_factory=set)
    disabled: bool = False

    def wants(self, event_type: str) -> bool:
        return any(fnmatch.fnmatchcase(event_type, p) for p in self.cfg.events)


class WebhookSink:
    """``record`` gets the sink's statistics (deliveries, the outbox's backlog, events dropped):
    the Prometheus sink's ``record`` in the service."""

    def __init__(self, endpoints: list[WebhookSettings], outbox: OutboxSettings, *,
                 record: stats.Record = stats.ignore) -> None:
        labels = [endpoint_label(cfg) for cfg in endpoints]
        if len(set(labels)) != len(labels):
            raise ConfigError("two webhooks share a name/URL; give them distinct names")
        self.endpoints = [_Endpoint(cfg, label, load_secrets(cfg))
                          for cfg, label in zip(endpoints, labels, strict=True)]
        self.outbox = Outbox(outbox.path, max_rows=outbox.max_rows)
        self._record = record
        self._queue: asyncio.Queue[tuple[ev.Event, asyncio.Future[None]]] = asyncio.Queue(
            maxsize=QUEUE_SIZE)
        self._tasks = TaskSet("webhooks")
        self._http: dict[str, aiohttp.ClientSession] = {}
        self._deliveries: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()  # set whenever the pending count changes
        self.started = False
        self.pending = 0

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.outbox.open()
        self.pending = (await self.outbox.counts())["pending"]
        self._gauge()
        for ep in self.endpoints:
            self._record(stats.WebhookEndpoint(ep.label))
            self._http[ep.label] = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=ep.cfg.timeout_s),
                connector=aiohttp.TCPConnector(limit=ep.cfg.max_in_flight))
            self._tasks.spawn(self._worker(ep), name=f"deliver:{ep.label}")
        self._tasks.spawn(self._writer(), name="writer")
        self.started = True
        if self.pending:
            log.info("webhook outbox %s: %d events pending from before", self.outbox.path,
                     self.pending)

    async def aclose(self, flush_s: float = 5.0) -> None:
        """Commit everything queued (nothing accepted is lost; ``emit`` returns only once its
        event is committed anyway), give pending deliveries up to ``flush_s``, then stop;
        undelivered rows stay in the outbox for the next start."""
        if not self.started:
            return
        try:
            async with asyncio.timeout(COMMIT_WAIT_S):
                await self._queue.join()
        except TimeoutError:
            log.error("webhook outbox %s: %d events still not committed after %.0f s at "
                      "shutdown", self.outbox.path, self._queue.qsize(), COMMIT_WAIT_S)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush_s):
                while self.pending > 0 and any(not ep.disabled for ep in self.endpoints):
                    self._changed.clear()
                    await self._changed.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                if self._deliveries:
                    await asyncio.wait(set(self._deliveries))
        await self._tasks.aclose()
        for http in self._http.values():
            await http.close()
        self._http.clear()
        await self.outbox.close()
        self.started = False

    # --- intake ----------------------------------------------------------------------------

    async def emit(self, event: ev.Event) -> None:
        """Returns once ``event`` is committed to the outbox (the bus gives it to the other
        sinks, the console among them, only then: what was shown is durable)."""
        if not any(ep.wants(event.type) and not ep.disabled for ep in self.endpoints):
            return
        if not self.started:
            log.error("webhook sink is not running: a %s event was not kept", event.type)
            return
        if self._queue.full() and event.type == "affect.sample":
            self._count_dropped(event.type)
            return
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((event, committed))
        await asyncio.shield(committed)

    async def _writer(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < WRITE_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            rows: list[tuple[str, str, str, bytes]] = []
            for event, _ in batch:
                body = event.model_dump_json().encode()
                rows.extend((ep.label, event.id, event.type, body) for ep in self.endpoints
                            if ep.wants(event.type) and not ep.disabled)
            try:
                dropped = await self.outbox.add(rows)
            except Exception:
                log.exception("webhook outbox %s: commit failed; %d events lost",
                              self.outbox.path, len(batch))
                dropped = {}
            else:
                self.pending += len(rows) - sum(dropped.values())
            finally:
                for _, committed in batch:
                    if not committed.done():
                        committed.set_result(None)
                    self._queue.task_done()
            for typ, n in dropped.items():
                self._count_dropped(typ, n)
            self._gauge()
            for ep in self.endpoints:
                ep.wake.set()

    # --- delivery --------------------------------------------------------------------------

    async def _worker(self, ep: _Endpoint) -> None:
        while True:
            ep.wake.clear()
            if ep.disabled:
                await ep.wake.wait()
                continue
            room = ep.cfg.max_in_flight - len(ep.in_flight)
            rows = await self.outbox.due(ep.label, room, ep.in_flight) if room > 0 else []
            for row in rows:
                ep.in_flight.add(row.id)
                task = self._tasks.spawn(self._deliver(ep, row), name=f"post:{ep.label}:{row.id}")
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)
            if rows:
                await asyncio.sleep(0)
                continue
            next_at = await self.outbox.next_due(ep.label)
            wait = None if next_at is None else max(0.0, next_at - time.time())
            if room <= 0 or (wait is not None and wait == 0.0):
                wait = 0.05  # every slot busy, or due rows all in flight: look again soon
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await ep.wake.wait()

    async def _deliver(self, ep: _Endpoint, row: OutboxRow) -> None:
        try:
            await self._attempt(ep, row)
        except Exception:
            log.exception("webhook %s: delivering event %s failed unexpectedly", ep.label,
                          row.event_id)
        finally:
            ep.in_flight.discard(row.id)
            ep.wake.set()

    async def _attempt(self, ep: _Endpoint, row: OutboxRow) -> None:
        reply = await self._post(ep, row)
        outcome = await self._settle(ep, row, reply)
        self._record(stats.WebhookDelivery(ep.label, outcome, reply.seconds))
        self._gauge()

    async def _post(self, ep: _Endpoint, row: OutboxRow) -> _Reply:
        """One signed request of ``row`` to ``ep``."""
        body = row.body.decode()
        now = datetime.now(UTC)
        signature = " ".join(secret.sign(row.event_id, now, body) for secret in ep.secrets)
        headers = {"Content-Type": "application/json", "webhook-id": row.event_id,
                   "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": signature}
        started = time.perf_counter()
        retry_after: float | None = None
        try:
            async with self._http[ep.label].post(ep.cfg.url, data=row.body,
                                                 headers=headers) as resp:
                status = resp.status
                if status in (429, 503):
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                await resp.read()
            error = f"HTTP {status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, error = 0, f"{type(exc).__name__}: {exc}".strip(": ")
        return _Reply(status, error, retry_after, time.perf_counter() - started)

    async def _settle(self, ep: _Endpoint, row: OutboxRow, reply: _Reply) -> str:
        """Update the outbox after an attempt; returns its outcome (delivered, disabled, failed,
        retry)."""
        attempts = row.attempts + 1
        if 200 <= reply.status < 300:
            await self.outbox.delete(row.id)
            self.pending -= 1
            return "delivered"
        if reply.status == 410:
            ep.disabled = True
            log.warning("webhook %s answered 410 Gone: endpoint disabled (replay a failed "
                        "event to enable it again)", ep.label)
            await self.outbox.fail(row.id, attempts, "HTTP 410: endpoint disabled")
            self.pending -= 1
            return "disabled"
        if attempts > len(ep.cfg.retry_schedule_s):
            await self.outbox.fail(row.id, attempts, reply.error)
            log.warning("webhook %s: event %s failed after %d attempts (%s)", ep.label,
                        row.event_id, attempts, reply.error)
            self.pending -= 1
            return "failed"
        delay = ep.cfg.retry_schedule_s[attempts - 1] * random.uniform(0.9, 1.1)
        if reply.retry_after is not None:
            delay = reply.retry_after
        await self.outbox.reschedule(row.id, attempts, time.time() + delay, reply.error)
        return "retry"

    # --- failed rows -----------------------------------------------------------------------

    async def failed(self) -> list[dict[str, Any]]:
        return [{"id": r.id, "endpoint": r.endpoint, "event_id": r.event_id, "type": r.type,
                 "attempts": r.attempts, "last_error": r.last_error,
                 "created": datetime.fromtimestamp(r.created, UTC).isoformat()}
                for r in await self.outbox.failed()]

    async def replay(self, row_id: int) -> bool:
        row = await self.outbox.replay(row_id)
        if row is None:
            return False
        self.pending += 1
        self._gauge()
        for ep in self.endpoints:
            if ep.label == row.endpoint:
                ep.disabled = False
                ep.wake.set()
        return True

    # --- statistics ------------------------------------------------------------------------

    def _count_dropped(self, event_type: str, n: int = 1) -> None:
        log.debug("webhook outbox full: dropped %d %s", n, event_type)
        self._record(stats.Dropped("webhook_outbox", n))

    def _gauge(self) -> None:
        self._changed.set()
        self._record(stats.OutboxPending(max(0, self.pending)))


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), capped at an hour."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
