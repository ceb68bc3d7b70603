"""Per-speaker analysis, shared by ``analyze`` (file readers) and the live bridge (each
:class:`~bridge.live.speaker.LiveSpeaker` feeds one).

``AnalysisEngine`` owns what all speakers share (loaded analyzer plugins, the emotion model and
its inference scheduler). ``SpeakerAnalysis`` owns one speaker's state: windowing + VAD, a bounded
queue of windows, one worker task running the analyzers, and the stress engine; it turns results
into events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, cast

from analyzers.loading import ModelUnavailable, RemoteUnavailable
from analyzers.plugins import Analyzer, load_analyzers
from analyzers.stress import StressEngine, stress_features
from analyzers.types import (
    AudioChunk,
    EmotionScores,
    ProsodyFeatures,
    QuietWindow,
    SemanticResult,
    SpeechWindow,
    StressSpike,
)
from analyzers.vad import SileroBatch, SileroModel, SileroVoiceActivityDetector
from analyzers.windowing import SpeechWindower
from bridge import events as ev
from bridge import stats
from bridge.config import Settings

__all__ = ["AnalysisEngine", "Emit", "SpeakerAnalysis"]

log = logging.getLogger(__name__)

Emit = Callable[[Any], Awaitable[None]]


class AnalysisEngine:
    """Loads the configured analyzers once; every speaker of every call shares them.

    ``record`` receives the statistics of every speaker's analysis and of the shared models
    (:mod:`bridge.stats`; the metrics sink, or a worker's channel to its supervisor)."""

    def __init__(self, settings: Settings, registry: dict[str, type] | None = None, *,
                 record: stats.Record = stats.ignore) -> None:
        self.settings = settings
        self._registry = registry
        self.record = record
        self.analyzers: list[Analyzer] = []
        self.degraded: dict[str, str] = {}
        self._down: set[str] = set()  # loaded, but their (remote) model does not answer now
        self.vad_model: SileroModel | None = None  # the silero VAD every speaker shares
        self.vad_batch: SileroBatch | None = None  # its thread, batching across speakers
        self.started = False
        self._service_ready = False

    async def start(self, *, warm_up: bool = False) -> None:
        """Build and load the analyzers (blocking loads run in an executor). ``warm_up`` (live
        service): analyzers with a ``warm_up()`` run it too, so a call's first windows do not
        pay for lazy imports and JIT compilation.

        Raises :class:`~analyzers.plugins.PluginError` for an unknown or broken plugin (a
        configuration error). A model that cannot be loaded only degrades that analyzer.
        """
        record = self.record

        def on_batch(analyzer: str, size: int, seconds: float) -> None:
            record(stats.InferenceBatch(analyzer, size, seconds))

        built = [self._backend(a) for a in load_analyzers(
            self.settings.analyzers, self.settings.analyzer_options(), self._registry,
            on_batch=on_batch)]
        loop = asyncio.get_running_loop()
        if self.settings.vad.engine == "silero" and self.vad_model is None:
            # The VAD is no optional analyzer: a model that cannot be loaded stops the start.
            self.vad_model = await loop.run_in_executor(None, SileroModel.load)
        if self.vad_model is not None and self.vad_batch is None:
            self.vad_batch = SileroBatch(self.vad_model, observer=on_batch)
        for analyzer in built:
            try:
                await loop.run_in_executor(None, analyzer.load)
                check = getattr(analyzer, "check", None)
                if callable(check):  # a remote model: is the server there, is it the model?
                    await check()
            except RemoteUnavailable as exc:  # the server may come up later: keep trying
                self.mark_down(analyzer.name, str(exc))
                log.warning("analyzer %s: %s; its estimates start when the server answers",
                            analyzer.name, exc)
            except ModelUnavailable as exc:
                self.degraded[analyzer.name] = str(exc)
                log.warning("analyzer %s unavailable, continuing without it: %s",
                            analyzer.name, exc)
                aclose = getattr(analyzer, "aclose", None)
                if callable(aclose):  # a remote client that opened a session to check
                    await aclose()
                continue
            self.analyzers.append(analyzer)
            warm = getattr(analyzer, "warm_up", None)
            if warm_up and callable(warm):
                try:
                    await loop.run_in_executor(None, warm)
                except Exception:  # a warm-up is an optimisation: never fatal
                    log.exception("analyzer %s: warm-up failed", analyzer.name)
        self.started = True

    async def service_ready(self) -> None:
        """The live service is ready (with worker processes: every worker is, or is gone):
        analyzers with an ``after_ready()`` run it now (the emotion model measures its batch
        size and starts its background preparation where it has not yet). Left until here so
        that it does not slow another worker's start. Once; a failure is logged, never
        fatal."""
        if self._service_ready:
            return
        self._service_ready = True
        loop = asyncio.get_running_loop()
        for analyzer in self.analyzers:
            after = getattr(analyzer, "after_ready", None)
            if callable(after):
                try:
                    await loop.run_in_executor(None, after)
                except Exception:  # an optimisation: never fatal
                    log.exception("analyzer %s: after_ready failed", analyzer.name)

    def _backend(self, analyzer: Analyzer) -> Analyzer:
        """The emotion analyzer on an inference server when ``[emotion] backend = "remote"``."""
        emotion = self.settings.emotion
        if analyzer.name != "emotion" or emotion.backend != "remote":
            return analyzer
        from bridge.pipeline.remote import RemoteEmotionAnalyzer  # the HTTP client: only here

        return cast(Analyzer, RemoteEmotionAnalyzer(
            emotion, max_response_bytes=self.settings.outbound.max_response_bytes,
            record=self.record))

    def mark_down(self, name: str, reason: str) -> bool:
        """A loaded analyzer's model stopped answering (a remote server): degraded until
        :meth:`mark_up`. True when it was up until now (the caller tells the world once)."""
        was_up = name not in self._down
        self._down.add(name)
        self.degraded[name] = reason
        if was_up:
            self.record(stats.AnalyzerState(name, reason))
        return was_up

    def mark_up(self, name: str) -> bool:
        """The analyzer's model answers again. True when it was down."""
        if name not in self._down:
            return False
        self._down.discard(name)
        self.degraded.pop(name, None)
        self.record(stats.AnalyzerState(name))
        log.info("analyzer %s answers again; its estimates resume", name)
        return True

    def degraded_events(self, call: ev.CallInfo | None = None) -> list[ev.AnalyzerDegraded]:
        return [
            ev.AnalyzerDegraded(call=call, data=ev.AnalyzerDegradedData(analyzer=name,
                                                                         reason=reason))
            for name, reason in self.degraded.items()
        ]

    def has(self, name: str) -> bool:
        """Whether analyzer ``name`` is loaded (configured and not degraded)."""
        return any(a.name == name for a in self.analyzers)

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        for analyzer in self.analyzers:
            await loop.run_in_executor(None, analyzer.close)
            aclose = getattr(analyzer, "aclose", None)
            if callable(aclose):
                await aclose()
        self.analyzers = []
        if self.vad_batch is not None:
            await loop.run_in_executor(None, self.vad_batch.close)
            self.vad_batch = None
        self.started = False


class SpeakerAnalysis:
    """One speaker: ``feed`` chunks from the first frame, ``finish`` when the speaker is gone.

    Windows wait in a bounded queue (``queue_size``). ``offline`` (files) waits for room, so
    nothing is lost; live (``offline=False``) drops the oldest waiting window and counts it in
    ``dropped``, so a slow analyzer never stalls the track being drained.
    """

    def __init__(
        self,
        engine: AnalysisEngine,
        call: ev.CallInfo,
        speaker: ev.SpeakerInfo,
        emit: Emit,
        *,
        offline: bool,
        queue_size: int = 4,
    ) -> None:
        s = engine.settings
        self.engine = engine
        self.call = call
        self.speaker = speaker
        self._emit = emit
        self.offline = offline
        self.windower = SpeechWindower(s.windowing, s.vad, silero=engine.vad_model)
        self.stress = StressEngine(s.stress)
        # Each window waits with the loop time it was cut at (pipeline latency).
        self._queue: asyncio.Queue[tuple[SpeechWindow | QuietWindow, float] | None] = asyncio.Queue(
            maxsize=queue_size)
        self._worker: asyncio.Task[None] | None = None
        self._last_emotion: EmotionScores | None = None
        self._last_semantic: SemanticResult | None = None
        self._failures: dict[str, int] = {}
        self._unscored_logged = False
        self.dropped = 0
        self.latest_index: float | None = None

    async def start(self, offset_s: float = 0.0) -> None:
        self._worker = asyncio.create_task(self._run(), name=f"speaker:{self.speaker.id}")
        await self._emit(ev.SpeakerJoined(call=self.call, speaker=self.speaker,
                                          data=ev.SpeakerJoinedData(offset_s=offset_s)))

    async def feed(self, chunk: AudioChunk) -> None:
        whole = self.windower.take(chunk)
        if not len(whole):
            return
        vad = self.windower.vad
        if self.engine.vad_batch is not None and isinstance(vad, SileroVoiceActivityDetector):
            # Silero's forward passes run on the VAD thread, batched with other speakers'.
            decisions = await vad.process_batched(whole, self.engine.vad_batch)
        else:
            decisions = vad.process(whole)  # webrtcvad: microseconds, on the loop
        for window in self.windower.advance(whole, decisions):
            await self._enqueue(window)

    async def feed_silence(self, n_samples: int) -> None:
        """A gap in the media (DTX, loss, a sender that stopped) as ``n_samples`` of silence
        (its VAD frames, at most a window's worth, run inline: gaps are rare)."""
        for window in _merge_quiet(self.windower.push_silence(n_samples)):
            await self._enqueue(window)

    async def finish(self, reason: str, at_s: float | None = None) -> None:
        """Analyse what is left (offline) or drop it (live), close an open spike, emit
        ``speaker.left`` (at ``at_s`` in call time when given and later than the audio's end).
        Safe to call once; the worker task is awaited before returning."""
        if self.offline:
            for window in self.windower.flush():
                await self._enqueue(window)
            await self._queue.put(None)
            if self._worker is not None:
                await self._worker
        elif self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._worker = None
        end = self.windower.now_s
        spike = self.stress.close(end, "stream ended")
        if spike is not None:
            await self._emit(self._spike_event(spike))
        await self._emit(ev.speaker_left(
            self.call, self.speaker, offset_s=end if at_s is None else max(at_s, end),
            reason=reason, speech_s=self.windower.speech_s, spikes=self.stress.spikes))

    async def _enqueue(self, window: SpeechWindow | QuietWindow) -> None:
        item = (window, asyncio.get_running_loop().time())
        if self.offline:
            await self._queue.put(item)
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            self.engine.record(stats.Dropped("window_queue"))
        self._queue.put_nowait(item)

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            window, cut_at = item
            try:
                if isinstance(window, QuietWindow):
                    for spike in self.stress.quiet(window.end_s, window.first_end_s):
                        await self._emit(self._spike_event(spike))
                    continue
                await self._analyze(window)
                self.engine.record(stats.WindowLatency(asyncio.get_running_loop().time() - cut_at))
            except asyncio.CancelledError:
                raise
            except Exception:
                # One bad window must not end this speaker, let alone others.
                log.exception("speaker %s: analysis of window at %.1f s failed",
                              self.speaker.id, window.end_s)

    async def _analyze(self, window: SpeechWindow) -> None:
        prosody, emotion, semantic, extra = await self._run_analyzers(window)
        if prosody is not None and prosody.unvoiced is not None:
            await self._unscored(window, prosody.unvoiced)
            return
        # Between speech chunks the latest estimates stand.
        if emotion is None and self.engine.has("emotion"):
            emotion = self._last_emotion
        self._last_emotion = emotion
        fresh_semantic = semantic
        if semantic is None and self.engine.has("semantic"):
            semantic = self._last_semantic
        self._last_semantic = semantic
        if semantic is not None:
            extra["semantic"] = _semantic_data(semantic, fresh=fresh_semantic is not None)

        features = stress_features(prosody, emotion, semantic,
                                   self.stress.config.dimensional_emotion)
        estimate = self.stress.update(features,
                                      window.new_voiced_s, window.end_s)
        self.latest_index = estimate.index
        await self._emit(ev.AffectSample(
            call=self.call, speaker=self.speaker,
            data=ev.AffectSampleData(
                offset_s=round(window.end_s, 3),
                window_start_s=round(window.start_s, 3),
                window_end_s=round(window.end_s, 3),
                voiced_s=round(window.voiced_s, 3),
                emotion=({k: round(v, 4) for k, v in emotion.probabilities.items()}
                         if emotion and emotion.probabilities else None),
                arousal=round(emotion.arousal, 4) if emotion else None,
                valence=round(emotion.valence, 4) if emotion else None,
                dominance=(round(emotion.dominance, 4) if emotion and emotion.dominance is not None
                           else None),
                affect_source=emotion.source if emotion else None,
                prosody=_prosody_data(prosody, window),
                stress=ev.StressData(index=round(estimate.index, 4),
                                     score=round(estimate.score, 4),
                                     components=estimate.components,
                                     calibrating=estimate.calibrating),
                extra=extra,
            ),
        ))
        for spike in estimate.spikes:
            await self._emit(self._spike_event(spike))

    async def _run_analyzers(self, window: SpeechWindow) -> tuple[
            ProsodyFeatures | None, EmotionScores | None, SemanticResult | None, dict[str, Any]]:
        """Every analyzer on ``window`` at once: prosody, emotion and semantic results, and the
        plugins' own (``extra``, by analyzer name). A failing analyzer is noted and left out."""
        prosody: ProsodyFeatures | None = None
        emotion: EmotionScores | None = None
        semantic: SemanticResult | None = None
        extra: dict[str, Any] = {}
        results = await asyncio.gather(
            *(a.analyze(window, wait=self.offline) for a in self.engine.analyzers),
            return_exceptions=True,
        )
        for analyzer, result in zip(self.engine.analyzers, results, strict=True):
            if isinstance(result, RemoteUnavailable):
                await self._model_down(analyzer.name, str(result), window.end_s)
            elif isinstance(result, BaseException):
                self._note_failure(analyzer.name, result)
            elif isinstance(result, ProsodyFeatures):
                prosody = result
            elif isinstance(result, EmotionScores):
                emotion = result
                self.engine.mark_up(analyzer.name)
            elif isinstance(result, SemanticResult):
                semantic = result
            elif result is not None:
                is_instance = dataclasses.is_dataclass(result) and not isinstance(result, type)
                extra[analyzer.name] = dataclasses.asdict(cast(Any, result)) if is_instance else result
        return prosody, emotion, semantic, extra

    async def _unscored(self, window: SpeechWindow, why: str) -> None:
        """No voice in what the VAD passed (steady noise): no sample, no stress verdict; for
        the detector, time passes without speech."""
        self.engine.record(stats.WindowUnscored("unvoiced"))
        if not self._unscored_logged:  # one line per speaker, not one per window
            self._unscored_logged = True
            log.info("speaker %s: window at %.1f s not scored: %s (noise, not a voice; "
                     "counted in affect_windows_unscored_total)", self.speaker.id, window.end_s,
                     why)
        for spike in self.stress.quiet(window.end_s):
            await self._emit(self._spike_event(spike))

    def _spike_event(self, spike: StressSpike) -> ev.SpikeStarted | ev.SpikeEnded:
        started = ev.SpikeStartedData(
            offset_s=round(spike.at_s, 3), started_s=round(spike.started_s, 3),
            index=round(spike.index, 4), peak=round(spike.peak, 4),
            components=list(spike.main_components),
        )
        if spike.ended:
            return ev.spike_ended(self.call, self.speaker, started, offset_s=spike.at_s,
                                  duration_s=spike.duration_s, reason=spike.reason)
        return ev.SpikeStarted(call=self.call, speaker=self.speaker, data=started)

    async def _model_down(self, name: str, reason: str, at_s: float) -> None:
        """A remote model did not answer: this window goes without its estimate (the last one
        is not carried on), and the first failure after success says so (``analyzer.degraded``,
        once per process and outage)."""
        if name == "emotion":
            self._last_emotion = None
        if self.engine.mark_down(name, reason):
            log.warning("analyzer %s: %s", name, reason)
            await self._emit(ev.AnalyzerDegraded(call=self.call, data=ev.AnalyzerDegradedData(
                offset_s=round(at_s, 3), analyzer=name, reason=reason)))

    def _note_failure(self, name: str, exc: BaseException) -> None:
        count = self._failures.get(name, 0) + 1
        self._failures[name] = count
        if count == 1:  # one line per analyzer and speaker, not one per window
            log.error("speaker %s: analyzer %s failed: %s", self.speaker.id, name, exc)


def _merge_quiet(windows: list[SpeechWindow | QuietWindow]) -> list[SpeechWindow | QuietWindow]:
    """Consecutive quiet windows as one run: a long gap must not push speech windows out of the
    bounded queue."""
    out: list[SpeechWindow | QuietWindow] = []
    for w in windows:
        last = out[-1] if out else None
        if isinstance(w, QuietWindow) and isinstance(last, QuietWindow):
            out[-1] = QuietWindow(w.end_s, last.since_s)
        else:
            out.append(w)
    return out


def _semantic_data(s: SemanticResult, *, fresh: bool) -> dict[str, Any]:
    """Sentiment for every window; the transcript (when allowed at all) only with the window
    whose speech it is, never repeated."""
    data: dict[str, Any] = {"sentiment": {"score": round(s.sentiment_score, 4),
                                          "label": s.sentiment_label}}
    if fresh and s.transcript is not None:
        data["transcript"] = s.transcript
    return data


def _prosody_data(p: ProsodyFeatures | None, window: SpeechWindow) -> ev.ProsodyData:
    def num(x: float, nd: int) -> float | None:
        return round(x, nd) if math.isfinite(x) else None

    if p is None:
        pause = 1.0 - window.voiced_s / max(window.end_s - window.start_s, 1e-9)
        return ev.ProsodyData(f0_hz=None, f0_range_st=None, jitter=None, shimmer=None,
                              hnr_db=None, energy_db=None, speech_rate=None,
                              pause_ratio=round(pause, 4))
    return ev.ProsodyData(
        f0_hz=num(p.f0_hz, 2), f0_range_st=num(p.f0_range_st, 3), jitter=num(p.jitter, 5),
        shimmer=num(p.shimmer, 5), hnr_db=num(p.hnr_db, 2), energy_db=num(p.energy_db, 2),
        speech_rate=num(p.speech_rate, 3), pause_ratio=round(p.pause_ratio, 4),
    )
