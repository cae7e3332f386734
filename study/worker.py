"""A study worker process: `python -m study.worker SPEC.json`, started by `study.sweep`.

It composes the sweep config from the same overrides as the driver, loads the Optuna study and
runs trials one after another until the study has study.n_trials complete or pruned trials,
the deadline passes, or too many trials failed. Its environment (GPU, CPU threads) is set by
the driver before the interpreter starts, so the backend starts with it.
"""

from __future__ import annotations

import copy
import functools
import gc
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from optuna.trial import TrialState

from study.budget import TOO_MANY_FAILURES, judge
from study.cli import quiet_library_loggers
from study.config import checked_config, checked_sweep_config
from study.data import load_dataset
from study.masking import mask_console
from study.names import FAIL_REASON_ATTR
from study.objective import Interrupted, TrialObjective
from study.pruners import build_pruner
from study.samplers import build_sampler, for_scheduler
from study.scheduler import ladder_for
from study.search_space import Composer, SearchSpace
from study.signals import EXIT_CODE, WorkerSignals
from study.storage import RetryWithSameParams, fail_and_retry, fail_ownerless_trials, make_storage

log = logging.getLogger("study.worker")

POLL_SECONDS = 2.0


@dataclass
class WorkerSpec:
    config_dir: str
    config_name: str
    overrides: list[str]
    parent_run_id: str
    worker_index: int = 0
    session_start: float = 0.0  # time.time() when the driver started: failures count from it
    deadline: float | None = None  # time.time() after which no new trial starts
    cores: list[int] = field(default_factory=list)

    def write(self, path: Path) -> Path:
        # Overrides may hold storage or tracking credentials: readable by the owner only.
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def read(cls, path: Path) -> WorkerSpec:
        return cls(**json.loads(path.read_text()))


def sweep_composer(config_dir: str, config_name: str, overrides: list[str]) -> Composer:
    """compose(extra) -> the sweep config with the user's overrides, then `extra` (sampled).

    Hydra composes once per set of config group choices (a few hundred ms); the sampled
    values (`optimizer.learning_rate=0.01`) are then set on a copy, with Hydra's override
    parser and `OmegaConf.update`, as Hydra itself applies value overrides after composing.
    """

    @functools.lru_cache(maxsize=16)
    def compose_groups(merged: tuple[str, ...]) -> DictConfig:
        if GlobalHydra.instance().is_initialized():  # inside @hydra.main: its search path
            return compose(config_name, overrides=list(merged))
        with initialize_config_dir(config_dir, version_base="1.3"):
            return compose(config_name, overrides=list(merged))

    def compose_with(extra: list[str]) -> DictConfig:
        values = [override for override in extra if is_value_override(override)]
        kept = merge_overrides(overrides, extra)  # a sampled key beats a command-line one
        cfg = copy.deepcopy(compose_groups(tuple(o for o in kept if o not in values)))
        for override in OverridesParser.create().parse_overrides(values):
            try:
                OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
            except OmegaConfBaseException as error:  # the exception Hydra's compose raises
                raise ConfigCompositionException(f"Error merging override {override.input_line}") from error
        return cfg

    return compose_with


def is_value_override(override: str) -> bool:
    """`a.b=value`: sets a config value (a dotted key never names a config group)."""
    key = override.split("=", 1)[0]
    return "." in key and not key.startswith(("+", "~")) and not any(c in key for c in "@/")


def merge_overrides(base: list[str], extra: list[str]) -> list[str]:
    """`extra` wins over `base` for the same key (a sampled value over a command-line one)."""
    extra_keys = {override.split("=", 1)[0].lstrip("+~") for override in extra}
    return [o for o in base if o.split("=", 1)[0].lstrip("+~") not in extra_keys] + extra


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
    ladder = ladder_for(settings, base)  # scheduler=asha: the rungs
    objective = TrialObjective(
        base,
        settings,
        compose_with,
        space,
        spec.parent_run_id,
        Path(settings.study.output_dir),
        signals,
        ladder=ladder,
    )
    load_dataset(base.data, base.trainer.seed)  # into the per-process cache, before the freeze
    # What exists now (interpreter, backend, data, study) lives as long as the worker: the
    # collection after each trial (keras.backend.clear_session) then skips its million objects.
    gc.freeze()
    parent_pid = os.getppid()
    try:
        while not signals.stopping and os.getppid() == parent_pid:
            trials = study.get_trials(deepcopy=False)
            verdict = judge(trials, settings, spec.session_start, spec.deadline, ladder=ladder)
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
            finally:
                signals.release()
            objective.current = None  # told: nothing of this worker's is left to clean up
    except (Interrupted, KeyboardInterrupt):
        fail_interrupted_trial(study, objective, settings, base)
        raise KeyboardInterrupt from None
    return 0


def fail_interrupted_trial(study: optuna.Study, objective: TrialObjective, settings, base) -> None:
    """The trial this worker was running when told to stop: failed and retried at once (its
    run already ended KILLED), so the next session runs it again."""
    trial = objective.current
    if trial is None:
        return
    frozen = study._storage.get_trial(trial._trial_id)
    tracking_uri = base.mlflow.tracking_uri
    if frozen.state == TrialState.RUNNING:
        fail_and_retry(study, frozen, "interrupted (Ctrl-C or SIGTERM)", settings.study, tracking_uri)
    elif frozen.state == TrialState.FAIL and FAIL_REASON_ATTR not in frozen.user_attrs:
        # Optuna failed it when the interrupt came between its own lines: retry it all the same.
        RetryWithSameParams(tracking_uri, settings.study.max_retry)(study, frozen)


def main() -> None:
    mask_console()  # its log file shows no password, also in MLflow's or SQLAlchemy's errors
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    # Optuna would log every failed trial with a traceback, expected ones ("not needed",
    # interrupted) too; the objective logs one line per outcome itself.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    quiet_library_loggers()
    signals = WorkerSignals()
    signals.install()
    spec_file = Path(sys.argv[1])
    spec = WorkerSpec.read(spec_file)
    spec_file.unlink(missing_ok=True)  # it may hold credentials: read once, then gone
    try:
        sys.exit(run_worker(spec, signals))
    except KeyboardInterrupt:
        # Interrupts reach SQLAlchemy's pool while connections are returned; not errors.
        logging.getLogger("sqlalchemy").setLevel(logging.CRITICAL)
        log.info("interrupted: exiting")
        sys.exit(EXIT_CODE)


if __name__ == "__main__":
    main()
