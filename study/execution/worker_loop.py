"""A study worker process: `python -m study.worker SPEC.json`, started by `study.sweep`.

It composes the sweep config from the same overrides as the driver, loads the Optuna study and
runs trials one after another until the study has study.n_trials complete or pruned trials,
the deadline passes, or too many trials failed. Its environment (GPU, CPU threads) is set by
the driver before the interpreter starts, so the backend starts with it.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from pathlib import Path

import optuna

from study.config.checks import checked_config, checked_sweep_config
from study.config.compose import sweep_composer
from study.execution.fencing import TrialLost
from study.execution.objective import Interrupted, TrialObjective
from study.execution.recovery import (
    fail_interrupted_trial,
    fail_ownerless_trials,
)
from study.execution.signals import WorkerSignals
from study.execution.spec import WorkerSpec
from study.execution.storage import make_storage
from study.search.asha import ladder_for
from study.search.budget import TOO_MANY_FAILURES, Budget
from study.search.pruners import build_pruner
from study.search.samplers import build_sampler, for_scheduler
from study.search.space import SearchSpace
from study.training.data import load_dataset

log = logging.getLogger("study.worker")

POLL_SECONDS = 2.0


def run_worker(spec: WorkerSpec, signals: WorkerSignals) -> int:
    if spec.cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, spec.cores)
    compose_with = sweep_composer(spec.config_dir, spec.config_name, spec.overrides)
    cfg = compose_with([])
    settings, base = checked_sweep_config(cfg), checked_config(cfg)
    space = SearchSpace(settings.search_space)
    storage = make_storage(settings.study, base.mlflow.tracking_uri)
    study = optuna.load_study(
        study_name=settings.study.name, storage=storage, pruner=build_pruner(settings.pruner)
    )
    # A seed per worker and per session: a restarted worker, a resumed study or a worker on
    # another machine must not replay the random stream of an earlier one.
    seed_offset = spec.worker_index + 1000 * len(study.get_trials(deepcopy=False))
    study.sampler = for_scheduler(build_sampler(settings.sampler, space, seed_offset), settings)
    budget = Budget.of(settings, spec.session_start, spec.deadline, ladder_for(settings, base))
    objective = TrialObjective(
        base,
        settings,
        compose_with,
        space,
        spec.parent_run_id,
        Path(settings.study.output_dir),
        budget,
        signals,
    )
    load_dataset(base.data, base.trainer.seed)  # into the per-process cache, before the freeze
    import keras  # noqa: F401 (the backend's million objects, frozen with the rest below)

    # What exists now (interpreter, backend, data, study) lives as long as the worker: the
    # collection of each trial's keras.backend.clear_session then skips it (0.19 s a trial when
    # the backend was first imported by the first trial, after the freeze).
    gc.freeze()
    parent_pid = os.getppid()
    try:
        while not signals.stopping and os.getppid() == parent_pid:
            trials = study.get_trials(deepcopy=False)
            verdict = budget.judge(trials)
            if verdict.stop is not None:
                log.info(
                    "stopping: %s", verdict.stop if verdict.stop != TOO_MANY_FAILURES else verdict.reason()
                )
                return 0
            if fail_ownerless_trials(study, settings.study, base.mlflow.tracking_uri, trials):
                continue  # their retries are waiting: count again
            if not verdict.may_start_trial:
                # The remaining trials run elsewhere; wait in case one fails or its worker dies.
                time.sleep(POLL_SECONDS)
                continue
            signals.hold()  # released by the objective once the new trial records its owner
            try:
                if verdict.promotion is not None:  # asha: optimize takes the waiting trial first
                    study.enqueue_trial(verdict.promotion.params, user_attrs=verdict.promotion.user_attrs)
                study.optimize(objective, n_trials=1, catch=(Exception,))
            except TrialLost as lost:
                log.warning("%s; this worker goes on to the next trial", lost)
            except ValueError:  # "Cannot tell a FAIL trial": failed by another process just now
                if objective.lost() is None:
                    raise
                log.warning("%s; this worker goes on to the next trial", objective.lost())
            finally:
                signals.release()  # the objective's hold from training's end to the tell
            objective.current = None  # told: nothing of this worker's is left to clean up
    except (Interrupted, KeyboardInterrupt):
        fail_interrupted_trial(study, objective.current, settings, base)
        raise KeyboardInterrupt from None
    return 0
