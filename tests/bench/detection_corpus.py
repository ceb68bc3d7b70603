"""The detection benchmark's corpus: synthetic speakers (espeak-ng + sox), calm and shifted.

Every recording is made here, in memory, from a seed, and never written anywhere but a temporary
folder sox needs for its effects (removed at once). Per voice:

* one calm base: sentences of our own (``SENTENCES``) in a seeded order, each spoken with its own
  small random pitch (espeak ``-p`` 42 +- 5) and speed (``-s`` 150 +- 12 wpm) so a speaker's calm
  windows vary as a person's do, with 0.4-1.4 s pauses between them;
* ``calm``: the first ``CALM_S`` seconds of it;
* shifted cases: the first ``SHIFTED_S`` seconds, with everything after the first pause past
  ``SHIFT_AT_S`` changed by sox (``pitch``, ``tempo -s``, ``gain``), or re-spoken in the strong
  style (espeak pitch +36, speed +65 wpm, amplitude 180, as the committed fixtures' stressed
  part);
* nuisance cases with no stress put in: noise bursts, a level step half-way, steady pink noise at
  a given SNR (over calm and over the subtle shift), an Opus round trip at 24 kb/s with 5 % of
  20 ms frames lost (lost frames are silence, as a time-correct receiver hears them), a second
  voice leaking in 15 dB down, and steady noise that starts half-way;
* room noise with nobody speaking (``noise-only``, 240 s) and calm speech followed by 150 s of
  room noise 10 dB under it (``then-noise``): white, pink, brown or a fan-like hum with hiss
  (``tests/noise.py``), one kind per voice in turn, at -26 dBFS alone.

Every case also has the faint noise floor the fixtures have (a real microphone's pause is not
digital silence). Speech is set to an active level of -28 dBFS before any case's changes.
"""

from __future__ import annotations

import random
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

SR = 16000
CALM_S = 300.0
SHIFTED_S = 240.0
SHIFT_AT_S = 120.0
LEVEL_DBFS = -28.0
ROOM_NOISES = ("pink", "brown", "fan", "white")
NOISE_ONLY_S = 240.0
THEN_NOISE_S = 150.0

# Twelve voices: espeak-ng's English accents with its male (m) and female (f) variants.
VOICES = [
    "en-us+m3", "en-us+f2", "en-gb+m1", "en-gb+f4", "en-gb-scotland+m5", "en-gb-x-rp+f1",
    "en-gb-x-gbclan+m2", "en-gb-x-gbcwmd+f5", "en-029+m4", "en-us-nyc+f3", "en-gb-x-rp+m7",
    "en-029+f2",
]

# Our own calm, everyday sentences (not the fixtures' texts).
SENTENCES = [
    "I had a look at the numbers this morning and they seem fine to me.",
    "The delivery came a little early, so the boxes are in the hallway.",
    "We could take the train instead, it is only a short walk from the station.",
    "My sister is visiting next weekend, so I will be a bit busy then.",
    "The garden needs some work after all that rain last month.",
    "I think the second option is cheaper, but the first one is simpler.",
    "Could you send me the address again, I seem to have lost it.",
    "The meeting went well, and everyone agreed on the main points.",
    "I usually go for a walk after lunch when the weather is nice.",
    "There is a new bakery on the corner that opens at seven.",
    "We finished the first draft and sent it to the printer yesterday.",
    "The library has extended its opening hours for the summer.",
    "I am happy to help with the move if you need another pair of hands.",
    "The children were quite tired after the school trip to the museum.",
    "Let us keep the same plan and look at it again in a week.",
    "I read an interesting article about old maps on the way home.",
    "The new chairs are comfortable, although they took a while to arrive.",
    "We should probably book the tickets before the prices go up.",
    "It was a quiet evening, so I cooked soup and read for a while.",
    "The bus was a few minutes late, but I still made it in time.",
    "I have put the spare keys in the drawer next to the door.",
    "Her presentation was clear and the questions afterwards were good.",
    "The report is mostly done, I only need to check the last table.",
    "We might repaint the kitchen in a lighter colour this spring.",
    "The cat sleeps on the windowsill for most of the afternoon.",
    "I will call the dentist tomorrow and move the appointment.",
    "The river path is lovely at this time of year.",
    "Thank you for the notes, they made the next steps much easier.",
    "Our neighbours lent us their ladder to fix the gutter.",
    "I am going to try a new recipe with lentils and spinach tonight.",
    "The office will be closed on Monday for the public holiday.",
    "He said the repairs should be finished by the end of the week.",
    "We talked about the budget and decided to keep things as they are.",
    "The film was longer than I expected, but I enjoyed it.",
    "I found an old photo album while I was clearing out the attic.",
    "The market has fresh strawberries again, they are very sweet.",
    "Please take your time, there is no deadline for this one.",
    "I moved my desk closer to the window, and the light is much better.",
    "The train timetable changes next month, so check before you travel.",
    "We planted tomatoes along the fence, and they are growing well.",
]


@dataclass(frozen=True)
class Case:
    """One recording: its samples and where stress was put in (None: nowhere)."""

    voice: str
    name: str  # "calm", "pitch+2", "noise20-subtle", ...
    group: str  # "calm" | "shift" | "nuisance" | "nuisance-shift"
    samples: npt.NDArray[np.float32]
    shift_s: float | None

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SR


# name -> sox effects for the shifted part (None: the strong style, re-spoken)
SHIFTS: dict[str, list[str] | None] = {
    "pitch+1": ["pitch", "100"],
    "pitch+2": ["pitch", "200"],
    "pitch+3": ["pitch", "300"],
    "pitch+4": ["pitch", "400"],
    "tempo+6%": ["tempo", "-s", "1.06"],
    "tempo+12%": ["tempo", "-s", "1.12"],
    "subtle": ["pitch", "300", "tempo", "-s", "1.12", "gain", "3"],
    "strong": None,
}
SUBTLE = SHIFTS["subtle"]


def _espeak(voice: str, text: str, pitch: int, speed: int, amplitude: int,
            tmp: Path) -> npt.NDArray[np.float32]:
    raw = tmp / "s.wav"
    subprocess.run(["espeak-ng", "-z", "-v", voice, "-p", str(pitch), "-s", str(speed),
                    "-a", str(amplitude), "-w", str(raw), text], check=True)
    return _sox(raw, tmp, [])


def _sox(src: Path | npt.NDArray[np.float32], tmp: Path, effects: list[str]
         ) -> npt.NDArray[np.float32]:
    """Run sox effects (repeatable mode) and return 16 kHz mono float32."""
    raw = ["-t", "raw", "-e", "floating-point", "-b", "32", "-r", str(SR), "-c", "1"]
    out = tmp / "out.f32"
    if isinstance(src, Path):
        args = ["sox", "-R", str(src), *raw, str(out)]
    else:
        inp = tmp / "in.f32"
        src.astype(np.float32).tofile(inp)
        args = ["sox", "-R", *raw, str(inp), *raw, str(out)]
    subprocess.run([*args, *effects], check=True, capture_output=True)
    return np.fromfile(out, dtype=np.float32)


def _pause(rng: random.Random) -> npt.NDArray[np.float32]:
    return np.zeros(round(rng.uniform(0.4, 1.4) * SR), np.float32)


@dataclass
class _Base:
    speech: npt.NDArray[np.float32]  # calm, active level LEVEL_DBFS, no noise
    cut: int  # sample where the shifted part starts (a sentence start)
    strong_tail: npt.NDArray[np.float32]  # the part after ``cut`` re-spoken in the strong style
    gain: float


def _base(voice_index: int, tmp: Path) -> _Base:
    voice = VOICES[voice_index]
    rng = random.Random(1000 + voice_index)
    order = list(SENTENCES)
    rng.shuffle(order)
    pieces: list[npt.NDArray[np.float32]] = []
    strong: list[npt.NDArray[np.float32]] = []
    total = 0
    cut = None
    i = 0
    while total < CALM_S * SR:
        text = order[i % len(order)]
        pitch = 42 + rng.randint(-5, 5)
        speed = 150 + rng.randint(-12, 12)
        gap = _pause(rng)
        s = _espeak(voice, text, pitch, speed, 100, tmp)
        if cut is None and total >= SHIFT_AT_S * SR:
            cut = total
        if cut is not None and total < SHIFTED_S * SR + 30 * SR:
            strong += [_espeak(voice, text, pitch + 36, speed + 65, 180, tmp), gap]
        pieces += [s, gap]
        total += len(s) + len(gap)
        i += 1
    speech = np.concatenate(pieces)
    active = np.abs(speech) > 1e-4
    rms = float(np.sqrt(np.mean(speech[active] ** 2)))
    gain = 10 ** (LEVEL_DBFS / 20) / rms
    assert cut is not None
    return _Base(speech * gain, cut, np.concatenate(strong) * gain, gain)


def _pink(n: int, seed: int) -> npt.NDArray[np.float32]:
    """Unit-RMS pink (1/f) noise."""
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return (x / np.sqrt(np.mean(x**2))).astype(np.float32)


def room_noise(kind: str, seconds: float, dbfs: float, seed: int) -> npt.NDArray[np.float32]:
    """Room noise of ``kind`` at ``dbfs`` (RMS), with the faint floor every case has."""
    from tests.noise import noise

    return _floor(noise(kind, seconds, dbfs, seed), seed)


def _active_rms(x: npt.NDArray[np.float32]) -> float:
    return float(np.sqrt(np.mean(x[np.abs(x) > 1e-4] ** 2)))


def _floor(x: npt.NDArray[np.float32], seed: int) -> npt.NDArray[np.float32]:
    return (x + 0.0012 * _pink(len(x), seed)).astype(np.float32)


def _noise(x: npt.NDArray[np.float32], snr_db: float, seed: int, start: int = 0
           ) -> npt.NDArray[np.float32]:
    noise = _pink(len(x), seed) * _active_rms(x) / 10 ** (snr_db / 20)
    noise[:start] = 0
    return (x + noise).astype(np.float32)


def _bursts(x: npt.NDArray[np.float32], seed: int) -> npt.NDArray[np.float32]:
    """Loud broadband bursts (a door, a cough into the microphone, a dropped object): 0.2-0.8 s,
    6 dB above the speech, every 10-25 s."""
    rng = np.random.default_rng(seed)
    y = x.copy()
    level = _active_rms(x) * 10 ** (6 / 20)
    t = int(rng.uniform(5, 15) * SR)
    while t < len(y):
        n = int(rng.uniform(0.2, 0.8) * SR)
        burst = rng.standard_normal(n).astype(np.float32) * level
        ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.01 * SR))
        end = min(len(y), t + n)
        y[t:end] += (burst * ramp)[: end - t]
        t += int(rng.uniform(10, 25) * SR)
    return np.clip(y, -1, 1)


def _opus(x: npt.NDArray[np.float32], seed: int, bitrate: int = 24000, loss: float = 0.05
          ) -> npt.NDArray[np.float32]:
    """Opus encode (libopus via PyAV, 20 ms frames) and decode, losing ``loss`` of the frames
    (silence in their place)."""
    rng = np.random.default_rng(seed)
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate = 48000
    enc.layout = "mono"
    enc.format = "s16"
    enc.bit_rate = bitrate
    up = av.AudioResampler(format="s16", layout="mono", rate=48000)
    down = av.AudioResampler(format="flt", layout="mono", rate=SR)
    dec = av.CodecContext.create("opus", "r")
    frame = av.AudioFrame.from_ndarray(
        (np.clip(x, -1, 1) * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = SR
    packets = []
    for f in [*up.resample(frame), *up.resample(None)]:
        packets += enc.encode(f)
    packets += enc.encode(None)
    out: list[npt.NDArray[np.float32]] = []
    for p in packets:
        if rng.random() < loss:
            out.append(np.zeros(SR // 50, np.float32))
            continue
        for d in dec.decode(p):
            for r in down.resample(d):
                out.append(r.to_ndarray().reshape(-1).astype(np.float32))
    y = np.concatenate(out)
    return y[: len(x)] if len(y) >= len(x) else np.pad(y, (0, len(x) - len(y)))


def cases(voice_index: int) -> list[Case]:
    """Every recording of one voice (about 21 cases, 90 minutes of audio)."""
    voice = VOICES[voice_index]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base = _base(voice_index, tmp)
        other = _base((voice_index + 5) % len(VOICES), tmp).speech
        x = base.speech
        n_shifted = int(SHIFTED_S * SR)
        head = x[: base.cut]
        tail = x[base.cut:n_shifted]
        shift_s = base.cut / SR

        def shifted(effects: list[str] | None) -> npt.NDArray[np.float32]:
            if effects is None:
                new = base.strong_tail[: len(tail)]
            else:
                new = _sox(tail, tmp, effects)
            return np.concatenate([head, new]).astype(np.float32)

        seed = 10_000 * (voice_index + 1)
        out = [Case(voice, "calm", "calm", _floor(x[: int(CALM_S * SR)], seed), None)]
        for name, effects in SHIFTS.items():
            out.append(Case(voice, name, "shift", _floor(shifted(effects), seed + 1), shift_s))
        calm = x[:n_shifted]
        subtle = shifted(SUBTLE)
        floored = _floor(calm, seed + 2)
        for db in (3, 6):
            step = np.concatenate([head, tail * 10 ** (db / 20)]).astype(np.float32)
            out.append(Case(voice, f"level+{db}dB", "nuisance", _floor(step, seed + 3), None))
        out.append(Case(voice, "bursts", "nuisance", _bursts(floored, seed + 4), None))
        for snr in (20, 10):
            out.append(Case(voice, f"noise{snr}-calm", "nuisance",
                            _noise(floored, snr, seed + 5), None))
            out.append(Case(voice, f"noise{snr}-subtle", "nuisance-shift",
                            _noise(_floor(subtle, seed + 2), snr, seed + 5), shift_s))
        out.append(Case(voice, "noise20-onset", "nuisance",
                        _noise(floored, 20, seed + 6, start=base.cut), None))
        out.append(Case(voice, "opus24k-loss5%", "nuisance", _opus(floored, seed + 7), None))
        kind = ROOM_NOISES[voice_index % len(ROOM_NOISES)]
        out.append(Case(voice, f"noise-only-{kind}", "nuisance",
                        room_noise(kind, NOISE_ONLY_S, -26.0, seed + 8), None))
        tail_noise = room_noise(kind, THEN_NOISE_S, LEVEL_DBFS - 10, seed + 9)
        out.append(Case(voice, f"then-noise-{kind}", "nuisance",
                        np.concatenate([floored[: int(150 * SR)], tail_noise]), None))
        leak = other[:n_shifted] * 10 ** (-15 / 20)
        leak = np.pad(leak, (0, max(0, n_shifted - len(leak))))
        out.append(Case(voice, "leak-15dB", "nuisance",
                        (floored + leak).astype(np.float32), None))
    return out
