"""Real browsers, with and without Opus DTX, publishing into a real Janus the bridge auto-joins:
does each speaker's timeline keep to wall time?

By hand (needs root, Debian ``janus``, ``chromium``, ``sox``)::

    .venv/bin/python tests/bench/bench_browser_dtx.py [--seconds 60]

Two headless Chromium instances run inside the test's network namespace (no default route,
``--host-resolver-rules="MAP * ~NOTFOUND"``), each publishing the same WAV as its microphone:
speech with 15 s silences. One offers ``usedtx=1`` (Janus echoes it, and libwebrtc then sends
~5 packets/s in silence instead of 50), the other does not. The bridge (this process) auto-joins
the room over the veth pair. Printed per speaker: frames received, silence inserted by the
media clock, the speaker's timeline minus wall time at the end, and the largest pause ratio
seen (the WAV's silences are 15 s long: windows reaching into them show pause ratios up to
~0.75).

Nothing here is timed as a test; nothing leaves the namespace or loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402

from bridge import events as ev  # noqa: E402
from bridge.config import load_settings  # noqa: E402
from bridge.control.app import MANAGER, build_app  # noqa: E402
from bridge.live.ice import restrict_host_addresses  # noqa: E402
from tests.janus_net import JanusNetns  # noqa: E402

ROOM = 1234

PAGE = """<!doctype html><meta charset="utf-8"><title>publisher</title><script>
const P = new URLSearchParams(location.search);
const J = P.get("janus"), ROOM = Number(P.get("room")), NAME = P.get("name");
const DTX = P.get("dtx") === "1";
const tx = () => Math.random().toString(36).slice(2);
async function post(url, body) {
  body.transaction = tx();
  const r = await fetch(url, {method: "POST", body: JSON.stringify(body)});
  return r.json();
}
async function next(sid, pred) {
  for (;;) {
    const evs = await (await fetch(`${J}/${sid}?maxev=5`)).json();
    for (const e of (Array.isArray(evs) ? evs : [evs])) if (pred(e)) return e;
  }
}
(async () => {
  const sid = (await post(J, {janus: "create"})).data.id;
  setInterval(() => post(`${J}/${sid}`, {janus: "keepalive"}), 20000);
  const hid = (await post(`${J}/${sid}`, {janus: "attach", plugin: "janus.plugin.videoroom"})).data.id;
  await post(`${J}/${sid}/${hid}`, {janus: "message", body: {request: "join", ptype: "publisher",
                                                              room: ROOM, display: NAME}});
  await next(sid, e => e.plugindata && e.plugindata.data.videoroom === "joined");
  const pc = new RTCPeerConnection({iceServers: []});
  const stream = await navigator.mediaDevices.getUserMedia({audio: true});
  stream.getTracks().forEach(t => pc.addTrack(t, stream));
  const offer = await pc.createOffer();
  if (DTX) offer.sdp = offer.sdp.replace(/(a=fmtp:111 [^\\r\\n]*)/, "$1;usedtx=1");
  await pc.setLocalDescription(offer);
  await new Promise(r => {
    if (pc.iceGatheringState === "complete") r();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && r();
  });
  await post(`${J}/${sid}/${hid}`, {janus: "message", body: {request: "publish"},
                                    jsep: {type: "offer", sdp: pc.localDescription.sdp}});
  const answer = await next(sid, e => e.jsep);
  console.log("answer has usedtx: " + /usedtx=1/.test(answer.jsep.sdp));
  await pc.setRemoteDescription(answer.jsep);
})().catch(e => console.log("publisher failed: " + e));
</script>"""


def make_wav(path: Path, seconds: float) -> None:
    """Speech (the committed fixture) with 15 s silences: 12 s talk, 15 s quiet, repeated."""
    src = ROOT / "tests" / "fixtures" / "audio" / "alice_calm.flac"
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(int(seconds // 27) + 1):
            talk = Path(tmp) / f"t{i}.wav"
            quiet = Path(tmp) / f"q{i}.wav"
            subprocess.run(["sox", str(src), "-r", "48000", "-c", "1", str(talk), "trim",
                            str(12 * i % 60), "12"], check=True)
            subprocess.run(["sox", "-n", "-r", "48000", "-c", "1", str(quiet), "trim", "0",
                            "15"], check=True)
            parts += [str(talk), str(quiet)]
        subprocess.run(["sox", *parts, str(path)], check=True)


def browser(net: JanusNetns, page: Path, wav: Path, name: str, dtx: bool,
            profile: Path) -> subprocess.Popen[bytes]:
    url = (f"file://{page}?janus=http://{net.janus_ip}:8088/janus&room={ROOM}&name={name}"
           f"&dtx={int(dtx)}")
    exe = shutil.which("chromium") or "chromium"
    return subprocess.Popen(
        ["ip", "netns", "exec", net.netns, exe, "--headless=new", "--no-sandbox",
         f"--user-data-dir={profile}", "--use-fake-ui-for-media-stream",
         "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
         f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {net.janus_ip}", "--disable-background-networking",
         "--no-first-run", "--enable-logging=stderr", "--v=0",
         # the page is a local file talking to Janus on a private address
         "--allow-file-access-from-files",
         "--disable-features=BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessChecks,"
         "LocalNetworkAccessChecks", "--disable-web-security", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


async def main(seconds: float) -> None:
    events: list[tuple[float, Any]] = []
    loop = asyncio.get_running_loop()

    async def emit(e: Any) -> None:
        events.append((loop.time(), e))

    with tempfile.TemporaryDirectory() as tmp, JanusNetns(Path(tmp), {ROOM: "browsers"}) as net:
        net.start()
        restrict_host_addresses([net.host_ip])
        wav = Path(tmp) / "speech_with_pauses.wav"
        make_wav(wav, seconds + 30)
        page = Path(tmp) / "publisher.html"
        page.write_text(PAGE)
        settings = load_settings(None, analyzers=["prosody"], janus=[
            {"url": net.url, "rooms": "*", "poll_s": 1.0, "leave_when_empty": 30.0}],
            live={"silence_timeout_s": 30.0})
        app = build_app(settings, token="bench", emit=emit)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        procs = [browser(net, page, wav, name, dtx, Path(tmp) / f"profile-{name}")
                 for name, dtx in (("with-dtx", True), ("no-dtx", False))]
        try:
            for _ in range(600):
                if len([e for _, e in events if e.type == "speaker.joined"]) >= 2:
                    break
                await asyncio.sleep(0.1)
            else:
                raise SystemExit("the browsers never showed up as speakers")
            await asyncio.sleep(seconds)
            manager = app[MANAGER]
            report = {}
            for call in manager.joined():
                for p in call.speakers.values():
                    now = loop.time() - call.started
                    samples = [e for _, e in events if isinstance(e, ev.AffectSample)
                               and e.speaker is not None and e.speaker.id == p.speaker.id]
                    clock = p.clock
                    report[p.speaker.display] = {
                        "frames": p.frames,
                        "timeline_minus_wall_s": round(clock.end_s - now, 3) if clock else None,
                        "silence_inserted_s": round(clock.gap_s, 1) if clock else None,
                        "samples": len(samples),
                        "max_pause_ratio": max((e.data.prosody.pause_ratio for e in samples),
                                               default=None),
                        "last_offset_s": samples[-1].data.offset_s if samples else None,
                        "wall_s": round(now, 1)}
            print(json.dumps(report, indent=2))
        finally:
            for proc in procs:
                os.killpg(proc.pid, 9)
                err = (proc.communicate()[1] or b"").decode(errors="replace")
                for line in err.splitlines():
                    if "usedtx" in line or "publisher failed" in line:
                        print(line.strip()[-160:])
            await runner.cleanup()
            restrict_host_addresses(None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    asyncio.run(main(parser.parse_args().seconds))
