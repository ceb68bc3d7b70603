"""The background job of a first start: measure the emotion model's precisions and prepare it.

With ``[emotion] prepare = "background"`` (the default) a process that meets a checkpoint new
to this machine runs at once in a provisional precision (:func:`analyzers.precision.provisional`)
and starts this job (:func:`start_job`): ``python -m analyzers.prepare_job``, at idle priority,
in a session of its own, the emotion configuration on its standard input. It loads the
checkpoint, measures the candidates where the decision is provisional, writes the decision and
the prepared model to the cache (:mod:`analyzers.prepared`), and exits; later starts load them.
It holds the preparation lock meanwhile, so one job runs per checkpoint; a second one exits at
once. Its log lines go to ``prepare.log`` in the cache directory. Killed halfway, it leaves the
provisional decision, and the next start begins it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

from analyzers.precision import cache_dir

__all__ = ["LOG_NAME", "main", "start_job"]

log = logging.getLogger(__name__)

LOG_NAME = "prepare.log"


def start_job(config: dict[str, Any]) -> bool:
    """Start the job for ``config`` (an ``[emotion]`` section as a dict); False (logged) when
    it cannot be started. It outlives the process that starts it (``analyze`` need not wait)."""
    try:
        directory = cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / LOG_NAME, "ab") as errors:
            proc = subprocess.Popen([sys.executable, "-m", "analyzers.prepare_job"],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=errors, start_new_session=True, close_fds=True)
        with contextlib.suppress(OSError):  # idle priority from the start (main() sets it too)
            os.setpriority(os.PRIO_PROCESS, proc.pid, 19)
        assert proc.stdin is not None
        with proc.stdin:
            proc.stdin.write(json.dumps(config).encode())
    except (OSError, TypeError, ValueError) as exc:
        log.info("the emotion model's background preparation did not start (%s); the next "
                 "start tries again", exc)
        return False
    # Reaped by a thread of this process while it lives; by init once it has exited.
    threading.Thread(target=proc.wait, name="emotion-prepare-job", daemon=True).start()
    return True


def main() -> int:
    with contextlib.suppress(OSError):  # idle priority: the bridge beside it comes first
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s affect-bridge prepare [%(process)d]: %(levelname)s: "
                               "%(message)s")
    started = time.process_time()
    from analyzers.emotion import EmotionConfig, EmotionModel

    try:
        options = json.loads(sys.stdin.read())
        options["prepare"] = "at_load"  # here: measure and prepare, now
        model = EmotionModel(EmotionConfig(**options))
        if not model.measure_and_prepare():
            log.info("another process is preparing this emotion model; nothing to do")
            return 0
    except Exception:
        log.exception("background preparation failed; the next start tries again")
        return 1
    log.info("emotion model %s: measured and prepared in the background, %.1f CPU-s",
             model.config.model, time.process_time() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
