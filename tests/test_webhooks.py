"""Webhooks: Standard Webhooks signatures, the durable outbox, retries, and isolation, against
real aiohttp receivers on loopback (no test asserts on time)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bridge import stats
from bridge.config import ConfigError, OutboxSettings, WebhookSettings
from bridge.delivery.outbox import OutboxRow
from bridge.delivery.prometheus import PrometheusSink
from bridge.delivery.webhook import WebhookSink, endpoint_label
from tests.conftest import ROOT
from tests.webhook_helpers import (
    SECRET_A,
    SECRET_B,
    Receiver,
    endpoint,
    joined,
    sample,
    spike,
)


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFFECT_BRIDGE_WEBHOOK_SECRET", f"{SECRET_A} {SECRET_B}")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


def make_sink(tmp_path: Path, *endpoints: dict[str, object], max_rows: int = 100_000,
              metrics: PrometheusSink | None = None) -> WebhookSink:
    """A sink whose statistics go to ``metrics``, when given."""
    return WebhookSink([WebhookSettings(**e) for e in endpoints],  # type: ignore[arg-type]
                       OutboxSettings(path=tmp_path / "outbox.sqlite3", max_rows=max_rows),
                       record=metrics.record if metrics is not None else stats.ignore)


async def test_signed_per_standard_webhooks_with_key_rotation(tmp_path: Path,
                                                              receiver: Receiver) -> None:
    sink = make_sink(tmp_path, endpoint(receiver.url))
    await sink.start()
    events = [joined(0), spike(1)]
    for e in events:
        await sink.emit(e)
    await receiver.wait_for(lambda r: len(r.delivered) == 2)
    await sink.aclose()
    for got, sent in zip(sorted(receiver.delivered, key=lambda r: r.id),
                         sorted(events, key=lambda e: e.id), strict=True):
        assert got.id == sent.id
        assert len(got.headers["webhook-signature"].split(" ")) == 2  # one per secret
        for secret in (SECRET_A, SECRET_B):  # either key verifies: rotation
            payload = Webhook(secret).verify(got.body, got.headers)
            assert payload["id"] == sent.id and payload["type"] == sent.type
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB").verify(got.body, got.headers)
        tampered = got.body.replace(b"Alice", b"Mallory")
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET_A).verify(tampered, got.headers)


async def test_receiver_down_then_up_gets_everything_repeats_share_the_id(tmp_path: Path,
                                                                          ) -> None:
    down = await Receiver().start()
    port = down.port
    await down.stop()  # nothing listens on the port now
    sink = make_sink(tmp_path, endpoint(f"http://127.0.0.1:{port}/hook"))
    await sink.start()
    events = [joined(i) for i in range(30)]
    for e in events:
        await sink.emit(e)
    await asyncio.sleep(1.0)  # a few failed rounds while it is down
    up = await Receiver(port=port, respond=lambda n: (500, {}) if n % 3 == 0 else (200, {}),
                        ).start()
    try:
        await up.wait_for(lambda r: r.delivered_ids() >= {e.id for e in events})
        await sink.aclose()
    finally:
        await up.stop()
    assert up.delivered_ids() == {e.id for e in events}
    by_id: dict[str, bytes] = {}
    for r in up.got:  # repeats only under the same webhook-id, with the same body
        assert by_id.setdefault(r.id, r.body) == r.body
    assert len(up.got) > len(events)  # the 500s were retried


async def test_429_retry_after_410_disables_and_replay(tmp_path: Path) -> None:
    answers = iter([(429, {"Retry-After": "1"}), (410, {})])
    receiver = await Receiver(respond=lambda n: next(answers, (200, {}))).start()
    sink = make_sink(tmp_path, endpoint(receiver.url, max_in_flight=1))
    await sink.start()
    try:
        first = joined(0)
        await sink.emit(first)
        await receiver.wait_for(lambda r: len(r.got) == 1)  # answered 429, Retry-After: 1
        await asyncio.sleep(0.1)
        row = _only_row(sink)
        assert row.last_error == "HTTP 429" and row.attempts == 1
        assert row.next_at - (row.created) >= 0.9  # Retry-After, not the 0.2 s schedule
        await receiver.wait_for(lambda r: len(r.got) == 2)  # then 410 Gone
        await asyncio.sleep(0.1)
        assert sink.endpoints[0].disabled
        failed = await sink.failed()
        assert [f["event_id"] for f in failed] == [first.id]
        assert "410" in failed[0]["last_error"]
        await sink.emit(joined(1))  # a disabled endpoint takes nothing new
        await asyncio.sleep(0.3)
        assert len(receiver.got) == 2 and (await sink.outbox.counts())["pending"] == 0
        assert await sink.replay(failed[0]["id"])  # re-enables the endpoint
        assert not await sink.replay(failed[0]["id"])  # no longer failed
        await receiver.wait_for(lambda r: first.id in r.delivered_ids())
        assert await sink.failed() == []
    finally:
        await sink.aclose()
        await receiver.stop()


def _only_row(sink: WebhookSink) -> OutboxRow:
    [row] = sink.outbox.db.execute("SELECT * FROM outbox").fetchall()
    return sink.outbox._row(row)


async def test_500s_until_the_schedule_runs_out_leave_a_failed_row(tmp_path: Path) -> None:
    receiver = await Receiver(respond=lambda n: (500, {})).start()
    metrics = PrometheusSink()
    sink = make_sink(tmp_path, endpoint(receiver.url, retry_schedule_s=[0.05, 0.05]),
                     metrics=metrics)
    await sink.start()
    try:
        event = spike(0)
        await sink.emit(event)
        await receiver.wait_for(lambda r: len(r.got) == 3)  # first try + 2 retries
        await asyncio.sleep(0.3)
        assert len(receiver.got) == 3 and receiver.delivered == []
        [failed] = await sink.failed()
        assert failed["event_id"] == event.id and failed["attempts"] == 3
        label = endpoint_label(sink.endpoints[0].cfg)
        value = metrics.registry.get_sample_value
        assert value("affect_webhook_deliveries_total", {"endpoint": label,
                                                         "outcome": "retry"}) == 2
        assert value("affect_webhook_deliveries_total", {"endpoint": label,
                                                         "outcome": "failed"}) == 1
        assert value("affect_webhook_outbox_pending") == 0
    finally:
        await sink.aclose()
        await receiver.stop()


async def test_a_slow_receiver_does_not_hold_back_a_fast_one(tmp_path: Path,
                                                             receiver: Receiver) -> None:
    slow = await Receiver(delay_s=2.0).start()
    sink = make_sink(tmp_path, endpoint(receiver.url, name="fast"),
                     endpoint(slow.url, name="slow", max_in_flight=2))
    await sink.start()
    try:
        events = [joined(i) for i in range(50)]
        for e in events:
            await sink.emit(e)
        await receiver.wait_for(lambda r: r.delivered_ids() == {e.id for e in events})
        assert len(slow.delivered) <= 2  # still on its first requests
    finally:
        await sink.aclose(flush_s=0.1)
        await slow.stop()


async def test_outbox_over_its_cap_drops_oldest_samples_never_spikes(tmp_path: Path) -> None:
    down = await Receiver().start()
    url = down.url
    await down.stop()
    metrics = PrometheusSink()
    sink = make_sink(tmp_path, endpoint(url, retry_schedule_s=[60.0]), max_rows=10,
                     metrics=metrics)
    await sink.start()
    samples = [sample(i) for i in range(20)]
    spikes = [spike(i) for i in range(12)]
    for e in samples:
        await sink.emit(e)
    for e in spikes:
        await sink.emit(e)
    await sink._queue.join()
    rows = sink.outbox.db.execute("SELECT event_id, type FROM outbox ORDER BY id").fetchall()
    await sink.aclose(flush_s=0.1)
    kept = {event_id for event_id, _ in rows}
    assert {e.id for e in spikes} <= kept  # spikes are never dropped, even over the cap
    assert not kept & {e.id for e in samples}  # every sample went, oldest first
    assert metrics.registry.get_sample_value("affect_dropped_total",
                                             {"stage": "webhook_outbox"}) == 20


async def test_killed_mid_delivery_delivers_what_was_pending_after_restart(tmp_path: Path,
                                                                           ) -> None:
    receiver = await Receiver(delay_s=0.3).start()
    outbox = tmp_path / "outbox.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    async def child(n: int) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.webhook_child", str(outbox), receiver.url, str(n),
            stdout=asyncio.subprocess.PIPE, env=env, cwd=ROOT)

    proc = await child(40)
    try:
        assert proc.stdout is not None
        ids = set(json.loads(await proc.stdout.readline()))
        assert len(ids) == 40
        await receiver.wait_for(lambda r: len(r.got) >= 3)
        proc.send_signal(signal.SIGKILL)  # mid-delivery: one request in flight
        await proc.wait()
        assert not receiver.delivered_ids() >= ids
        proc = await child(0)
        await receiver.wait_for(lambda r: r.delivered_ids() >= ids, limit_s=120)
        assert receiver.delivered_ids() == ids
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await receiver.stop()


def test_missing_or_malformed_secrets_are_config_errors(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AFFECT_BRIDGE_WEBHOOK_SECRET")
    with pytest.raises(ConfigError, match="no signing secret in environment variable"):
        make_sink(tmp_path, endpoint("http://127.0.0.1:9/hook"))
    monkeypatch.setenv("AFFECT_BRIDGE_WEBHOOK_SECRET", "whsec_!!notbase64!!")
    with pytest.raises(ConfigError, match="secret #1") as info:
        make_sink(tmp_path, endpoint("http://127.0.0.1:9/hook"))
    assert "notbase64" not in str(info.value)  # never echo a secret
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET_B + "\n")
    sink = make_sink(tmp_path, endpoint("http://127.0.0.1:9/hook", secret_file=str(secret_file)))
    assert len(sink.endpoints[0].secrets) == 1  # the file, not the (malformed) variable
    secret_file.write_text(f"{SECRET_A} {SECRET_B}\n")  # rotation: two on the first line
    sink = make_sink(tmp_path, endpoint("http://127.0.0.1:9/hook", secret_file=str(secret_file)))
    assert len(sink.endpoints[0].secrets) == 2
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="unreadable"):
        make_sink(tmp_path, endpoint("http://127.0.0.1:9/hook", secret_file=missing))
