"""The background job of a first start: measure the emotion model's precisions and prepare it.

With ``[emotion] prepare = "background"`` (the default) a process that meets a checkpoint new
to this machine runs at once in a provisional precision (:func:`analyzers.precision.provisional`)
and, once its own work lets it, starts this job (:func:`start_job`): ``python -P -m
analyzers.prepare_job`` in a session of its own, at the lowest CPU priority (``SCHED_IDLE``
where Linux allows it, else nice 19) and first in line for the out-of-memory killer, the
emotion configuration on its standard input. It loads the checkpoint, measures the candidates
where the decision is provisional, writes the decision and the prepared model to the cache
(:mod:`analyzers.prepared`), and exits; later starts load them. The starting process takes the
preparation lock and hands it to the job with its file descriptor, so one job runs per
checkpoint. Its log lines go to ``prepare.log`` in the cache directory. A job that does not
finish (killed, failed) leaves the provisional decision: the next start begins it again, up to
:data:`MAX_ATTEMPTS` times, then the decision stays provisional (a log line says so).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from analyzers.precision import cache_dir

if TYPE_CHECKING:
    from analyzers.prepared import PrepareLock

__all__ = ["LOG_NAME", "MAX_ATTEMPTS", "main", "start_job"]

log = logging.getLogger(__name__)

LOG_NAME = "prepare.log"
LOG_MAX_BYTES = 1 << 20  # past this the log starts again (a job writes a few lines)
MAX_ATTEMPTS = 3  # jobs started for one checkpoint that never finished: no more after these


def start_job(config: dict[str, Any], lock: PrepareLock) -> bool:
    """Start the job for ``config`` (an ``[emotion]`` section as a dict), handing it ``lock``
    (taken by the caller); False (logged; the lock released) when it cannot be started. It
    outlives the process that starts it (``analyze`` need not wait)."""
    proc = None
    try:
        errors = _open_log()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "analyzers.prepare_job",
                 "--lock-fd", str(lock.fileno())],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors,
                start_new_session=True, pass_fds=(lock.fileno(),))
        finally:
            os.close(errors)
        with contextlib.suppress(OSError):  # the lowest priority from the start (main() too)
            os.setpriority(os.PRIO_PROCESS, proc.pid, 19)
        assert proc.stdin is not None
        with proc.stdin:
            proc.stdin.write(json.dumps(config).encode())
    except (OSError, TypeError, ValueError) as exc:
        if proc is not None:
            proc.kill()
            proc.wait()
        lock.release()
        log.info("the emotion model's background preparation did not start (%s); the next "
                 "start tries again", exc)
        return False
    lock.hand_over()  # the job holds it now
    # Reaped by a thread of this process while it lives; by init once it has exited.
    threading.Thread(target=proc.wait, name="emotion-prepare-job", daemon=True).start()
    return True


def _open_log() -> int:
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOG_NAME
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_MAX_BYTES:
            flags |= os.O_TRUNC
    return os.open(path, flags, 0o600)


def _lowest_priority() -> None:
    """Run only when the processors are otherwise idle; be the one the OOM killer takes."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")


def main(argv: list[str] | None = None) -> int:
    _lowest_priority()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s affect-bridge prepare [%(process)d]: %(levelname)s: "
                               "%(message)s")
    parser = argparse.ArgumentParser(prog="python -m analyzers.prepare_job")
    parser.add_argument("--lock-fd", type=int, help="the preparation lock, handed over")
    args = parser.parse_args(argv)
    started = time.process_time()
    from analyzers.emotion import EmotionConfig, EmotionModel
    from analyzers.prepared import PrepareLock

    lock = PrepareLock.inherited(args.lock_fd) if args.lock_fd is not None else None
    try:
        model = EmotionModel(EmotionConfig(**json.loads(sys.stdin.read())))
        outcome = model.measure_and_prepare(lock)
    except Exception:
        log.exception("background preparation failed; the next start tries again")
        return 1
    finally:
        if lock is not None:
            lock.release()
    if outcome == "busy":
        log.info("another process is preparing this emotion model; nothing to do")
    elif outcome == "done already":
        log.info("emotion model %s: already measured and prepared; nothing to do",
                 model.config.model)
    else:
        log.info("emotion model %s: measured and prepared in the background, %.1f CPU-s",
                 model.config.model, time.process_time() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
