"""A first start with a checkpoint new to the machine does not wait for the precision measurement
or the preparation (``[emotion] prepare = "background"``, the default): it runs in the variant the
processor's kind favours once that agrees with fp32, and a job of its own (a real process, at idle
priority) measures and prepares; later starts load what it wrote. Killed, the job is started
again; one runs per checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from analyzers.emotion import EmotionConfig, EmotionModel
from analyzers.precision import DecisionCache, candidates, likely_fastest
from analyzers.prepare_job import LOG_NAME
from analyzers.prepared import PrepareLock, save_prepared, unpreparable
from tests.conftest import ROOT, emotion_tv, harmonic, load_in_two_processes

DONE = "measured and prepared in the background"


def _jobs(cache_dir: Path) -> list[psutil.Process]:
    """The background jobs running for ``cache_dir`` (this test's), whoever started them."""
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if ("analyzers.prepare_job" in (proc.info["cmdline"] or [])
                    and proc.status() != psutil.STATUS_ZOMBIE
                    and proc.environ().get("AFFECT_BRIDGE_CACHE_DIR") == str(cache_dir)):
                out.append(proc)
        except psutil.Error:
            pass
    return out


def _wait_for_jobs(cache_dir: Path, done: int = 1, timeout: float = 600.0) -> str:
    """Until ``done`` jobs have logged their end and none runs; the log. (A job runs at the
    lowest priority: on a loaded machine it may take a while.)"""
    deadline = time.monotonic() + timeout
    log = ""
    while time.monotonic() < deadline:
        log = _log(cache_dir)
        assert "background preparation failed" not in log, log
        if log.count(DONE) >= done and not _jobs(cache_dir):
            return log
        time.sleep(0.2)
    pytest.fail(f"no end of the background job after {timeout} s: {log}")


def _load(path: Path, **kw: Any) -> EmotionModel:
    model = EmotionModel(EmotionConfig(model=str(path), device="cpu", **kw))
    model.load()
    return model


def test_a_first_start_runs_provisionally_and_a_background_job_measures_and_prepares(
        tiny_emotion_model: Path, cache_dir: Path, probes: list[int]) -> None:
    expected = likely_fastest(candidates())
    assert expected != "fp32", "this processor offers nothing but fp32: nothing to measure"
    reference = _load(tiny_emotion_model, precision="fp32", prepare="at_load")
    first = _load(tiny_emotion_model)
    assert probes == [] and first.decision is not None
    assert first.decision.provisional and first.precision == expected
    assert first.decision.agreement[expected] <= first.config.tolerance
    assert first.info is not None  # from the checkpoint, not prepared
    cache = DecisionCache(cache_dir / "precision.json")
    key = first._key()
    assert key is not None
    entry = cache.get(key)
    assert entry is not None and entry.provisional  # later starts know it is not measured
    # The job is a process of its own, at idle priority.
    jobs = _jobs(cache_dir)
    assert len(jobs) == 1 and jobs[0].nice() == 19
    assert (cache_dir / "models" / f"{key[:40]}.lock").read_text() == "background"
    # Its results agree with fp32 meanwhile.
    for wave in (harmonic(150, 2.0, seed=1), harmonic(240, 3.1, seed=2)):
        assert emotion_tv(first.predict([wave])[0], reference.predict([wave])[0]) < 0.05

    _wait_for_jobs(cache_dir, done=1)
    cache.refresh()
    measured = cache.get(key)
    assert measured is not None and not measured.provisional
    assert {"fp32", measured.precision} <= set(measured.rates)
    assert list((cache_dir / "models").glob(f"{key[:40]}-{measured.precision}.pt"))

    later = _load(tiny_emotion_model)  # prepared, measured: nothing more to do
    assert later.info is None and later.decision == measured
    assert later.precision == measured.precision
    assert probes == [] and _jobs(cache_dir) == []


def test_a_killed_job_is_started_again_by_the_next_start(
        tiny_emotion_model: Path, cache_dir: Path, probes: list[int]) -> None:
    first = _load(tiny_emotion_model)
    assert first.decision is not None and first.decision.provisional
    [job] = _jobs(cache_dir)
    job.send_signal(signal.SIGKILL)
    job.wait(30)
    assert not list((cache_dir / "models").glob("*.pt"))
    again = _load(tiny_emotion_model)  # still provisional: runs so, and starts the job again
    assert again.decision is not None and again.decision.provisional
    assert again.precision == first.precision and len(_jobs(cache_dir)) == 1
    _wait_for_jobs(cache_dir, done=1)
    last = _load(tiny_emotion_model)
    assert last.info is None and last.decision is not None
    assert not last.decision.provisional and probes == []


def test_a_provisional_precision_that_disagrees_is_measured_before_the_first_inference(
        tiny_emotion_model: Path, cache_dir: Path, probes: list[int]) -> None:
    model = _load(tiny_emotion_model, tolerance=1e-9)  # nothing but fp32 agrees so closely
    assert probes == [1]
    assert model.decision is not None and not model.decision.provisional
    assert model.precision == "fp32"
    import torch

    assert {p.dtype for p in model._model.parameters()} == {torch.float32}
    # Measured here; the job only prepares.
    log = _wait_for_jobs(cache_dir, done=1)
    assert "measured in" not in log
    assert _load(tiny_emotion_model, tolerance=1e-9).info is None


def test_one_job_per_checkpoint_a_second_exits_at_once(
        tiny_emotion_model: Path, cache_dir: Path) -> None:
    probe = EmotionModel(EmotionConfig(model=str(tiny_emotion_model), device="cpu"))
    key = probe._key()
    assert key is not None
    lock = PrepareLock.acquire(key)
    assert lock is not None
    try:
        config = json.dumps({"model": str(tiny_emotion_model), "device": "cpu"})
        done = subprocess.run([sys.executable, "-m", "analyzers.prepare_job"], input=config,
                              capture_output=True, text=True, cwd=ROOT, timeout=300,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    finally:
        lock.release()
    assert done.returncode == 0, done.stderr
    assert "another process is preparing" in done.stderr
    assert not (cache_dir / "precision.json").exists()
    assert not list((cache_dir / "models").glob("*.pt"))


def test_a_bad_job_configuration_fails_with_a_log_line_and_changes_nothing(
        cache_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "analyzers.prepare_job"],
                          input='{"model": "x", "precision": "fp8"}', capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 1
    assert "background preparation failed" in done.stderr and "fp8" in done.stderr
    assert not cache_dir.exists() or not any(cache_dir.rglob("*.json"))


def test_processes_started_together_load_at_once_and_one_job_prepares(
        tiny_emotion_model: Path, cache_dir: Path) -> None:
    """`run --workers 2` on a fresh machine: neither process waits; one job measures and
    prepares, and a third start loads what it wrote."""
    logs = load_in_two_processes(tiny_emotion_model, cache_dir)
    for log in logs:
        assert "provisional" in log and "measured in" not in log, log
    log = _wait_for_jobs(cache_dir)
    assert log.count(DONE) == 1, log
    assert len(list((cache_dir / "models").glob("*.pt"))) == 1
    assert _load(tiny_emotion_model).info is None


def test_a_model_that_does_not_trace_is_not_prepared_again_until_one_does(
        tiny_emotion_model: Path, cache_dir: Path) -> None:
    import torch

    class Untraceable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            if torch.jit.is_tracing():  # as a model whose Python control flow cannot be traced
                raise RuntimeError("does not trace")
            return {"logits": x * self.w}

    probe = EmotionModel(EmotionConfig(model=str(tiny_emotion_model), device="cpu"))
    key = probe._key()
    assert key is not None
    wave = harmonic(180, 1.0)
    assert save_prepared(Untraceable(), key, "fp32", ["a"], True, wave) is None
    assert unpreparable(key, "fp32")
    model = _load(tiny_emotion_model, precision="fp32")  # from the checkpoint; no job
    assert model.info is not None and _jobs(cache_dir) == []
    assert save_prepared(model._model, key, "fp32", list(model._labels), True, wave) is not None
    assert not unpreparable(key, "fp32")


def test_analyze_starts_the_job_once_the_file_is_done_and_the_next_run_loads_its_work(
        tiny_emotion_model: Path, cache_dir: Path, tmp_path: Path) -> None:
    from tests.conftest import CALM, run_cli

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[emotion]\nmodel = "{tiny_emotion_model}"\ndevice = "cpu"\n')
    env = {"AFFECT_BRIDGE_CACHE_DIR": str(cache_dir)}
    first = run_cli("--debug", "analyze", str(CALM), "--config", str(cfg), env=env)
    assert first.returncode == 0, first.stderr
    assert "provisional" in first.stderr and "from the checkpoint" in first.stderr
    assert "in the background (lowest priority" in first.stderr
    assert json.loads(first.stdout.splitlines()[-1])  # the analysis itself is whole
    _wait_for_jobs(cache_dir)
    later = run_cli("--debug", "analyze", str(CALM), "--config", str(cfg), env=env)
    assert later.returncode == 0, later.stderr
    assert "(prepared," in later.stderr and "in the background" not in later.stderr
    assert later.stdout == first.stdout or _close_events(first.stdout, later.stdout)


def _close_events(a: str, b: str) -> bool:
    """The same windows; emotion within the provisional precision's tolerance of the measured
    one (they may differ: the measurement may choose another variant)."""
    ea = [json.loads(line) for line in a.splitlines() if line.strip()]
    eb = [json.loads(line) for line in b.splitlines() if line.strip()]
    assert [e["type"] for e in ea] == [e["type"] for e in eb]
    for x, y in zip(ea, eb, strict=True):
        emo_x = (x.get("data") or {}).get("emotion")
        emo_y = (y.get("data") or {}).get("emotion")
        if emo_x is not None:
            assert emo_y is not None
            assert 0.5 * sum(abs(emo_x[k] - emo_y[k]) for k in emo_x) < 0.05
    return True


def test_the_analyzer_starts_the_job_only_once_its_work_is_done(
        tiny_emotion_model: Path, cache_dir: Path) -> None:
    """analyze: not at load, not while chunks are analysed: at close."""
    from analyzers.emotion import EmotionAnalyzer

    analyzer = EmotionAnalyzer(EmotionConfig(model=str(tiny_emotion_model), device="cpu"))
    analyzer.load()
    try:
        assert analyzer.scheduler is not None
        waves = [harmonic(150 + 30 * i, 4.0, seed=i) for i in range(3)]
        results = [f.result(60) for f in [analyzer.scheduler.submit(w) for w in waves]]
        assert analyzer.model.decision is not None and analyzer.model.decision.provisional
        assert len(results) == 3 and _jobs(cache_dir) == []
    finally:
        analyzer.close()
    assert len(_jobs(cache_dir)) == 1 or DONE in _log(cache_dir)
    _wait_for_jobs(cache_dir)


def test_the_live_service_starts_the_job_after_its_batch_measurement(
        tiny_emotion_model: Path, cache_dir: Path) -> None:
    from analyzers.emotion import EmotionAnalyzer

    analyzer = EmotionAnalyzer(EmotionConfig(model=str(tiny_emotion_model), device="cpu"))
    analyzer.load()
    try:
        assert _jobs(cache_dir) == []  # not at load: the service is not ready yet
        analyzer.after_ready()  # ready: the batch size first, on the inference thread, then the job
        deadline = time.monotonic() + 120
        while not _jobs(cache_dir) and DONE not in _log(cache_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not analyzer.model.batch_unknown
        _wait_for_jobs(cache_dir, done=1)
    finally:
        analyzer.close()
    assert _jobs(cache_dir) == []  # close starts none again
    assert _load(tiny_emotion_model).info is None


def _log(cache_dir: Path) -> str:
    path = cache_dir / LOG_NAME
    return path.read_text(errors="replace") if path.exists() else ""


def test_a_job_that_never_finishes_is_not_started_forever(
        tiny_emotion_model: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from analyzers.prepare_job import MAX_ATTEMPTS
    from analyzers.prepared import count_job_attempt, job_attempts

    caplog.set_level(logging.INFO)
    probe = EmotionModel(EmotionConfig(model=str(tiny_emotion_model), device="cpu"))
    key = probe._key()
    assert key is not None
    for _ in range(MAX_ATTEMPTS):  # as if that many jobs had been killed before their end
        count_job_attempt(key)
    model = _load(tiny_emotion_model)
    assert model.decision is not None and model.decision.provisional  # still runs
    assert _jobs(cache_dir) == []
    assert any("never finished" in r.getMessage() and 'prepare = "at_load"' in r.getMessage()
               for r in caplog.records)
    # A start measuring at load settles it; the count goes with a finished job.
    (cache_dir / "models" / f"{key[:40]}.attempts").unlink()
    _load(tiny_emotion_model)
    assert job_attempts(key) == 1
    _wait_for_jobs(cache_dir)
    assert job_attempts(key) == 0


def test_a_process_measuring_at_load_does_not_wait_behind_a_background_job(
        tiny_emotion_model: Path, cache_dir: Path, probes: list[int],
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO)
    probe = EmotionModel(EmotionConfig(model=str(tiny_emotion_model), device="cpu"))
    key = probe._key()
    assert key is not None
    job = PrepareLock.acquire(key, wait=False, holder="background")
    assert job is not None
    try:
        assert PrepareLock.acquire(key, wait=False) is None  # held
        model = _load(tiny_emotion_model, prepare="at_load")  # would wait 600 s before
        assert probes == [1] and not model.decision.provisional  # type: ignore[union-attr]
        assert any("a background job is preparing" in r.getMessage() for r in caplog.records)
    finally:
        job.release()


def test_the_cache_keeps_what_other_processes_wrote_and_a_measurement_over_a_guess(
        tmp_path: Path) -> None:
    from analyzers.precision import BatchChoice, Decision

    path = tmp_path / "precision.json"
    worker, job = DecisionCache(path), DecisionCache(path)
    worker.put("k", Decision("bf16", agreement={"bf16": 0.001}, provisional=True))
    job.refresh()
    job.put("k", Decision("int8", {"fp32": 5.0, "int8": 9.0}))  # measured
    # The worker, still holding its first reading, writes its batch size and (late) its guess.
    worker.put_batch("b", BatchChoice(2, {1: 10.0, 2: 12.0}))
    worker.put("k", Decision("bf16", agreement={"bf16": 0.001}, provisional=True))
    fresh = DecisionCache(path)
    measured = fresh.get("k")
    assert measured is not None and measured.precision == "int8" and not measured.provisional
    assert fresh.get_batch("b") == BatchChoice(2, {1: 10.0, 2: 12.0})
    assert worker.get("k") == measured  # the worker sees it too
    job.put_batch("c", BatchChoice(1, {1: 10.0}))  # and the job keeps the worker's entry
    assert DecisionCache(path).get_batch("b") is not None


def test_the_analyzer_settles_a_new_checkpoint_on_its_inference_thread(
        tiny_emotion_model: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file never hashed here: the load only reads it in fp32 (a first `run` with two
    workers was ready later when each hashed, converted and checked it beside the other's
    load); hashing, the provisional variant and its check come before the first inference, on
    the inference thread. A second start finds the hash and loads at once."""
    import threading

    from analyzers.emotion import EmotionAnalyzer

    assert likely_fastest(candidates()) != "fp32", "nothing but fp32 here: nothing to check"
    where: list[str] = []
    settle = EmotionModel.settle

    def spy(self: EmotionModel) -> None:
        if self.deferred:
            where.append(threading.current_thread().name)
        settle(self)

    monkeypatch.setattr(EmotionModel, "settle", spy)
    analyzer = EmotionAnalyzer(EmotionConfig(model=str(tiny_emotion_model), device="cpu"))
    analyzer.load()
    try:
        model = analyzer.model
        assert model.deferred and model.precision == "fp32" and model.decision is None
        assert not (cache_dir / "precision.json").exists()  # nothing hashed, nothing decided
        assert analyzer.scheduler is not None
        first = analyzer.scheduler.submit(harmonic(160, 4.0)).result(60)
        assert where == ["emotion-inference"]
        assert not model.deferred and model.decision is not None and model.decision.provisional
        assert model.precision == likely_fastest(candidates())
        reference = _load(tiny_emotion_model, precision="fp32", prepare="at_load")
        assert emotion_tv(first, reference.predict([harmonic(160, 4.0)])[0]) < 0.05
    finally:
        analyzer.close()
    _wait_for_jobs(cache_dir)
    again = EmotionAnalyzer(EmotionConfig(model=str(tiny_emotion_model), device="cpu"))
    again.load()
    try:
        assert not again.model.deferred and again.model.info is None  # prepared by the job
    finally:
        again.close()


def test_a_file_without_speech_still_settles_at_close(tiny_emotion_model: Path,
                                                      cache_dir: Path) -> None:
    """analyze of a file the model never saw a chunk of: the key, the decision and the job
    all the same."""
    from analyzers.emotion import EmotionAnalyzer

    analyzer = EmotionAnalyzer(EmotionConfig(model=str(tiny_emotion_model), device="cpu"))
    analyzer.load()
    assert analyzer.model.deferred
    analyzer.close()
    assert not analyzer.model.deferred and analyzer.model.decision is not None
    assert len(_jobs(cache_dir)) == 1 or DONE in _log(cache_dir)
    _wait_for_jobs(cache_dir)


def test_a_deferred_variant_that_disagrees_is_measured_before_the_first_inference(
        tiny_emotion_model: Path, cache_dir: Path, probes: list[int]) -> None:
    from analyzers.emotion import EmotionAnalyzer

    assert likely_fastest(candidates()) != "fp32", "nothing but fp32 here: nothing to check"
    analyzer = EmotionAnalyzer(EmotionConfig(model=str(tiny_emotion_model), device="cpu",
                                             tolerance=1e-9))
    analyzer.load()
    try:
        assert analyzer.model.deferred and probes == []
        assert analyzer.scheduler is not None
        analyzer.scheduler.submit(harmonic(160, 4.0)).result(60)
        decision = analyzer.model.decision
        assert decision is not None and not decision.provisional and probes == [1]  # measured
        assert analyzer.model.precision == decision.precision
    finally:
        analyzer.close()
    _wait_for_jobs(cache_dir)
