"""A bridge-side webhook sink in its own process, for the SIGKILL test.

    python -m tests.webhook_child OUTBOX URL N

Emits N events (N may be 0), prints their ids as one JSON line once they are committed to the
outbox, then keeps delivering until killed. The secret comes from AFFECT_BRIDGE_WEBHOOK_SECRET.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from bridge.config import OutboxSettings, WebhookSettings
from bridge.delivery.webhook import WebhookSink
from tests.webhook_helpers import endpoint, joined


async def main(outbox: str, url: str, n: int) -> None:
    sink = WebhookSink([WebhookSettings(**endpoint(url, max_in_flight=1))],
                       OutboxSettings(path=Path(outbox)))
    await sink.start()
    events = [joined(i) for i in range(n)]
    for event in events:
        await sink.emit(event)
    await sink._queue.join()  # committed
    print(json.dumps([e.id for e in events]), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
