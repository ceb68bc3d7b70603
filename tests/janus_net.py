"""A real Janus 1.1.2 (Debian ``janus``) in a network namespace a test creates and removes.

Janus gathers no loopback ICE candidates, so it runs in its own namespace joined to the host by
a veth pair with private addresses; the bridge and the test publishers bind to the host end.
While the namespace exists, and until everything is removed, an ``unreachable`` route (metric
4242) for its subnet keeps any retrying client's packets from following the default route off
the machine once the veth pair is gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["JanusNetns", "JanusProxy", "janus_available"]

ADMIN_SECRET = "test-admin-secret"

JANUS_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")

JANUS_JCFG = """\
general: {{
    configs_folder = "{cfg}"
    plugins_folder = "{cfg}/plugins"
    transports_folder = "{cfg}/transports"
    events_folder = "{cfg}/none"
    loggers_folder = "{cfg}/none"
    debug_level = 4
    server_name = "affect-bridge-test"
    session_timeout = {session_timeout}
    admin_secret = "{admin_secret}"
{api_secret}
}}
certificates: {{}}
media: {{
    rtp_port_range = "20000-20999"
}}
nat: {{
    nice_debug = false
    ice_enforce_list = "{iface}"
}}
plugins: {{}}
transports: {{}}
events: {{}}
loggers: {{}}
"""

HTTP_JCFG = """\
general: {{
    json = "compact"
    base_path = "/janus"
    http = true
    port = 8088
    ip = "{ip}"
    https = false
}}
admin: {{
    admin_base_path = "/admin"
    admin_http = true
    admin_port = 7088
    admin_ip = "{ip}"
    admin_https = false
}}
cors: {{}}
certificates: {{}}
"""

VIDEOROOM_JCFG = """\
general: {{}}
{rooms}
"""

ROOM = """\
room-{room}: {{
    description = "{description}"
    publishers = 16
    audiocodec = "opus"
    videocodec = "vp8"
    notify_joining = true
{pin}
}}
"""


def janus_available() -> str | None:
    """Why the real-Janus tests cannot run here, or None when they can."""
    if shutil.which("janus") is None:
        return "janus is not installed (.ci/setup installs the Debian package)"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class JanusNetns:
    """``with JanusNetns(tmp_path, rooms) as net: net.start(); ...``: namespace, veth pair,
    route guard and a Janus process, all removed on exit."""

    def __init__(self, workdir: Path, rooms: dict[int, str], *, session_timeout: int = 60,
                 api_secret: str | None = None, pins: dict[int, str] | None = None) -> None:
        self.api_secret = api_secret
        self.pins = pins or {}
        tag = f"{os.getpid() % 10000:04d}"
        self.netns = f"abj{tag}"
        self.host_if = f"abh{tag}"
        self.ns_if = f"abn{tag}"
        octet = 16 + os.getpid() % 200
        self.subnet = f"10.231.{octet}.0/24"
        self.host_ip = f"10.231.{octet}.1"
        self.janus_ip = f"10.231.{octet}.2"
        self.url = f"http://{self.janus_ip}:8088/janus"
        self.workdir = workdir
        self.rooms = rooms
        self.session_timeout = session_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "janus.log"
        self._log: object | None = None

    # --- network -------------------------------------------------------------------------

    def __enter__(self) -> JanusNetns:
        self._cleanup_network()  # a crashed earlier run with the same pid
        _ip("route", "add", "unreachable", self.subnet, "metric", "4242")
        try:
            _ip("netns", "add", self.netns)
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.netns)
            _ip("addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("-n", self.netns, "addr", "add", f"{self.janus_ip}/24", "dev", self.ns_if)
            _ip("-n", self.netns, "link", "set", self.ns_if, "up")
            _ip("-n", self.netns, "link", "set", "lo", "up")
            self._write_config()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self._cleanup_network()

    def _cleanup_network(self) -> None:
        _ip("link", "del", self.host_if, check=False)
        _ip("netns", "del", self.netns, check=False)
        _ip("route", "del", "unreachable", self.subnet, "metric", "4242", check=False)

    # --- janus ---------------------------------------------------------------------------

    @property
    def cfg(self) -> Path:
        return self.workdir / "janus-cfg"

    def _write_config(self) -> None:
        cfg = self.cfg
        for sub, lib in (("plugins", "plugins/libjanus_videoroom.so"),
                         ("transports", "transports/libjanus_http.so")):
            (cfg / sub).mkdir(parents=True, exist_ok=True)
            link = cfg / sub / Path(lib).name
            if not link.exists():
                link.symlink_to(JANUS_LIB / lib)
        (cfg / "none").mkdir(exist_ok=True)
        (cfg / "janus.jcfg").write_text(JANUS_JCFG.format(
            cfg=cfg, iface=self.ns_if, session_timeout=self.session_timeout,
            admin_secret=ADMIN_SECRET,
            api_secret=f'    api_secret = "{self.api_secret}"' if self.api_secret else ""))
        (cfg / "janus.transport.http.jcfg").write_text(HTTP_JCFG.format(ip=self.janus_ip))
        rooms = "".join(ROOM.format(room=r, description=d, pin=f'    pin = "{self.pins[r]}"'
                                    if r in self.pins else "") for r, d in self.rooms.items())
        (cfg / "janus.plugin.videoroom.jcfg").write_text(VIDEOROOM_JCFG.format(rooms=rooms))

    def start(self, timeout_s: float = 20.0) -> None:
        """Start Janus in the namespace and wait until its HTTP API answers."""
        assert self.proc is None, "janus already running"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "janus", "-F", str(self.cfg),
             "-C", str(self.cfg / "janus.jcfg"), "-i", self.janus_ip, "-o"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"janus exited with {self.proc.returncode}; "
                                   f"see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/info", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise RuntimeError(f"janus did not answer in {timeout_s} s; see {self.log_path}")

    def sessions(self) -> list[int]:
        """The sessions Janus holds now (its admin API, on the namespace address only)."""
        body = json.dumps({"janus": "list_sessions", "transaction": "t",
                           "admin_secret": ADMIN_SECRET}).encode()
        req = urllib.request.Request(f"http://{self.janus_ip}:7088/admin", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            reply = json.loads(resp.read())
        assert reply.get("janus") == "success", reply
        return [int(x) for x in reply.get("sessions", [])]

    def kill(self) -> None:
        """SIGKILL Janus (the restart test); no-op when it is not running."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


class JanusProxy:
    """An HTTP proxy on 127.0.0.1 in front of Janus's API that can hold requests back
    (``delay(msg) -> seconds``) or replace replies (``rewrite(msg, reply) -> reply``): a slow
    or misbehaving Janus, with the real one behind it. ``held`` counts requests being delayed
    now, ``rewritten`` the replies replaced."""

    def __init__(self, upstream: str, *, delay: Callable[[dict[str, Any]], float] | None = None,
                 rewrite: Callable[[dict[str, Any], Any], Any] | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self._delay = delay
        self._rewrite = rewrite
        self.held = 0
        self.rewritten = 0
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> str:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90))
        app = web.Application()
        app.router.add_route("*", "/janus{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/janus"
        return self.url

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._http is not None
        raw = await request.read()
        msg = json.loads(raw) if raw else {}
        wait = self._delay(msg) if self._delay is not None and isinstance(msg, dict) else 0.0
        if wait:
            self.held += 1
            try:
                await asyncio.sleep(wait)
            finally:
                self.held -= 1
        target = self.upstream + request.match_info["tail"]
        async with self._http.request(request.method, target, params=request.query,
                                      data=raw or None) as resp:
            body = await resp.read()
            status = resp.status
        if self._rewrite is not None and status == 200 and isinstance(msg, dict):
            reply = json.loads(body)
            new = self._rewrite(msg, reply)
            if new is not reply:
                self.rewritten += 1
                body = json.dumps(new).encode()
        return web.Response(status=status, body=body, content_type="application/json")

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()  # ends the long polls still held upstream
        if self._runner is not None:
            await self._runner.cleanup()
