"""``affect-bridge run`` as a subprocess for tests: its stdout (JSON lines) collected as it
comes, calls joined over the control API, its outbox and memory readable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import ROOT, free_port
from tests.webhook_helpers import SECRET_A

__all__ = ["Bridge"]

TOKEN = "subprocess-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Bridge:
    """``affect-bridge run`` in a subprocess, its stdout (JSON lines) collected as it comes."""

    def __init__(self, tmp: Path, *, webhook: bool = False, live: str = "",
                 extra: str = "", workers: int = 1, args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.args = args  # more command-line options for `run`
        self.outbox = tmp / "outbox.sqlite3"
        self.config = tmp / "run.toml"
        text = (f'analyzers = ["prosody"]\nworkers = {workers}\n'
                f'[live]\nice_host_addresses = ["127.0.0.1"]\n{live}\n'
                f'[outbound]\nallow = ["127.0.0.1"]\n'
                f'[outbox]\npath = "{self.outbox}"\n{extra}\n')
        if webhook:  # to a receiver that refuses every delivery: nothing listens there
            text += f'[[webhooks]]\nurl = "http://127.0.0.1:{free_port()}/hook"\nevents = ["*"]\n'
        self.config.write_text(text)
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.base = f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        env = {**os.environ, "AFFECT_BRIDGE_API_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1",
               "AFFECT_BRIDGE_WEBHOOK_SECRET": SECRET_A}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.cli", "run", "--config", str(self.config),
            "--listen", f"127.0.0.1:{self.port}", *self.args, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=None if os.environ.get("AFFECT_BRIDGE_TEST_STDERR") else asyncio.subprocess.DEVNULL)
        self._reader = asyncio.create_task(self._read())
        async with aiohttp.ClientSession() as http:
            for _ in range(300):  # start-up
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.base + "/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError("the bridge never became ready")

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode())

    def events(self) -> list[dict[str, Any]]:
        """Every complete line printed (a SIGKILL may cut the last one)."""
        out = []
        for line in self.lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events() if e["type"] == kind)

    async def join(self, urls: list[str]) -> None:
        async with aiohttp.ClientSession() as http:
            async def one(url: str) -> None:
                async with http.post(self.base + "/v1/calls", headers=AUTH,
                                     json={"connector": "whep", "url": url}) as resp:
                    assert resp.status == 201, await resp.text()
            for start in range(0, len(urls), 10):  # ten joins at a time
                await asyncio.gather(*(one(u) for u in urls[start:start + 10]))

    async def wait(self) -> int:
        assert self.proc is not None and self._reader is not None
        code = await self.proc.wait()
        await self._reader
        return code

    def outbox_ids(self) -> set[str]:
        with contextlib.closing(sqlite3.connect(self.outbox)) as db:
            return {row[0] for row in db.execute("SELECT event_id FROM outbox")}

    def rss_mb(self) -> float:
        assert self.proc is not None
        pages = int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
