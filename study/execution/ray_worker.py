"""One Ray actor of a study (`launcher=ray`): a named actor in the study's namespace that runs
the joined workers (`joined.join_study`) in a thread of its own.

Its constructor returns at once: the driver may leave while it works, and when its node is lost
Ray starts it again elsewhere (`launcher.max_restarts`), where it joins the study anew (the lost
trial is failed and retried by the heartbeat rule). When the study is done it ends itself, for
good, so that its CPUs and GPUs go back to the cluster.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import ray

from study.execution.joined import join_study, visible_gpu_indices, with_study_keys
from study.execution.spec import WorkerSpec

WORKERS_PER_ACTOR = 16  # worker indices (sampler seeds, log files) of actor k start at 16 k


class StudyActor:
    def __init__(self, spec: dict[str, Any], index: int, gpu_share: float, working_dir: str):
        self.driver = None  # the running Driver, set by join_study
        os.chdir(working_dir)  # the driver's folder: the config's relative paths mean the same
        thread = threading.Thread(target=self._run, args=(WorkerSpec(**spec), index, gpu_share), daemon=True)
        thread.start()

    def _run(self, spec: WorkerSpec, index: int, gpu_share: float) -> None:
        from study.core.errors import ConfigError, short_error
        from study.core.masking import mask_console, private_files
        from study.core.retry import StoreUnreachableError

        mask_console()
        private_files()
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        try:
            join_study(spec, f"ray-{index}", WORKERS_PER_ACTOR * index, self, one_worker, gpu_share or None)
        except (ConfigError, StoreUnreachableError) as error:  # one line in the actor's log
            print(f"study.worker: error: {error}", file=sys.stderr, flush=True)
        except Exception as error:  # anything else: one line too, the details in the log
            logging.getLogger("study.worker").debug("actor %d failed", index, exc_info=True)
            print(f"study.worker: error: {short_error(error)}", file=sys.stderr, flush=True)
        finally:
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    def ready(self) -> bool:
        return True


def one_worker(settings):
    """The study settings for one worker on what Ray gave this actor: its GPU (a share of it,
    when num_gpus < 1), or CPUs."""
    return with_study_keys(settings, gpus=visible_gpu_indices()[:1], trials_per_gpu=1, n_workers=1)
