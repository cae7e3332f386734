"""An Optuna study of tracked training runs: `python -m study.sweep [overrides]`.

The driver checks everything it can before any store is touched (config, data files, search
space, sampler), creates or resumes the Optuna study and its MLflow parent run, starts the
worker processes (`study.worker`), shows progress, replaces workers that die, and at the end
writes the leaderboard, Optuna's plots and the winner's test-set evaluation.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import optuna
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from study.cli import report_input_errors, run_cli
from study.config import CONFIG_DIR, checked_config, checked_sweep_config
from study.data import load_dataset
from study.leaderboard import space_targets
from study.progress import StudyProgress, final_summary
from study.pruners import build_pruner
from study.results import evaluate_winner, leaderboard, log_plots
from study.samplers import build_sampler
from study.search_space import SearchSpace
from study.storage import (
    TrialCounts,
    count_trials,
    fail_orphaned_trials,
    failed_since,
    has_heartbeat,
    make_storage,
    max_failed_trials,
)
from study.tensorboard import write_hparams_config
from study.tracking import RunTracker, flatten, terminal_status, write_masked
from study.worker import WorkerSpec, sweep_composer

log = logging.getLogger(__name__)

PARENT_RUN_ATTR = "mlflow_parent_run_id"
PARENT_WAIT_SECONDS = 60.0
POLL_SECONDS = 1.0
MAX_RESTARTS_PER_WORKER = 3
SHUTDOWN_SECONDS = 60


def run_sweep(
    cfg: DictConfig,
    overrides: list[str] | None = None,
    config_dir: str | Path = CONFIG_DIR,
    config_name: str = "sweep",
) -> dict:
    """Run (or resume) the study `cfg` describes; returns its summary.

    `overrides` are the command-line overrides `cfg` was composed with: workers compose the
    same config from them, plus each trial's sampled values.
    """
    overrides = list(overrides or [])
    settings, base = checked_sweep_config(cfg), checked_config(cfg)
    load_dataset(base.data, base.trainer.seed)  # a missing or corrupt file fails here, not in trials
    compose_with = sweep_composer(str(config_dir), config_name, overrides)
    space = SearchSpace(settings.search_space)
    space.check_against(compose_with)
    build_sampler(settings.sampler, space)
    build_pruner(settings.pruner)

    # Inputs are good: from here on the stores are written.
    session_start = time.time()
    study_dir = Path(settings.study.output_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = make_storage(settings.study, base.mlflow.tracking_uri)
    study, created = create_or_load_study(settings, storage)
    parent = parent_run(study, created, storage, settings, base, cfg, study_dir)
    try:
        if created and settings.study.enqueue_defaults:
            study.enqueue_trial(space.base_values(base), user_attrs={"baseline": True}, skip_if_exists=True)
        if not has_heartbeat(storage):
            fail_orphaned_trials(study, base.mlflow.tracking_uri)
        deadline = session_start + settings.study.timeout if settings.study.timeout else None
        spec = WorkerSpec(
            str(config_dir),
            config_name,
            overrides,
            parent.run_id,
            session_start=session_start,
            deadline=deadline,
        )
        if count_trials(study).done < settings.study.n_trials:
            epochs = None if base.trainer.max_steps else base.trainer.epochs  # shown as epoch k/n
            WorkerPool(settings, spec, study_dir, storage, base.mlflow.tracking_uri, epochs).run(study)
        summary = finish(study, settings, parent, study_dir)
        check_complete(study, settings, session_start, deadline)
    except BaseException as error:
        parent.end(terminal_status(error), error)
        raise
    parent.end("FINISHED")
    return summary


class StudyIncompleteError(RuntimeError):
    """The workers stopped before study.n_trials trials were done."""


def check_complete(
    study: optuna.Study, settings: DictConfig, session_start: float, deadline: float | None
) -> None:
    counts = count_trials(study)
    if counts.done >= settings.study.n_trials or (deadline is not None and time.time() >= deadline):
        return
    failed = failed_since(study, session_start)
    reason = (
        f"{failed} trials failed (study.max_failed_trials)"
        if failed >= max_failed_trials(settings)
        else "the workers stopped (see logs/worker_N.log)"
    )
    raise StudyIncompleteError(
        f"study {settings.study.name}: {counts.done} of {settings.study.n_trials} trials done: {reason}; "
        f"{counts.running} still RUNNING. Run the command again to resume."
    )


def create_or_load_study(settings: DictConfig, storage) -> tuple[optuna.Study, bool]:
    """(study, True) for the one driver that created it; every other driver loads it."""
    try:
        study = optuna.create_study(
            study_name=settings.study.name, storage=storage, direction=settings.study.direction
        )
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=settings.study.name, storage=storage), False


def parent_run(
    study: optuna.Study,
    created: bool,
    storage,
    settings: DictConfig,
    base: DictConfig,
    cfg: DictConfig,
    study_dir: Path,
) -> RunTracker:
    """The study's MLflow parent run: made by the driver that created the study (the storage
    decides that atomically), found by every other driver and on every resume."""
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    deadline = time.time() + PARENT_WAIT_SECONDS
    # The creating driver sets the parent run before any trial exists; wait for it then.
    while run_id is None and not created and not study.get_trials() and time.time() < deadline:
        time.sleep(POLL_SECONDS)
        study = optuna.load_study(study_name=study.study_name, storage=storage)
        run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id:
        log.info("study %s: parent run %s", settings.study.name, run_id)
        return RunTracker.resume(base.mlflow, run_id)
    tracker = RunTracker.start(
        base.mlflow,
        run_name=settings.study.name,
        tags={**base.mlflow.tags, **parent_tags(settings.study.name), "optuna.study_name": study.study_name},
    )
    try:
        study.set_user_attr(PARENT_RUN_ATTR, tracker.run_id)
        study_settings = OmegaConf.to_container(settings)
        study_settings.pop("search_space")
        tracker.log_params(flatten(study_settings))
        tracker.log_artifact(
            write_masked(study_dir / "search_space.yaml", OmegaConf.to_yaml(settings.search_space))
        )
        resolved = OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True))
        tracker.log_artifact(write_masked(study_dir / "sweep_config.yaml", resolved))
    except BaseException as error:
        tracker.end(terminal_status(error), error)
        raise
    return tracker


def parent_tags(study_name: str) -> dict[str, str]:
    return {"study.name": study_name, "study.role": "parent"}


@dataclass
class Worker:
    index: int
    env: dict[str, str]
    cores: list[int]
    process: subprocess.Popen | None = None
    restarts: int = 0


class WorkerPool:
    """Worker processes sharing the study storage; a dead worker is replaced."""

    def __init__(
        self,
        settings: DictConfig,
        spec: WorkerSpec,
        study_dir: Path,
        storage,
        tracking_uri: str,
        epochs: int | None = None,
    ):
        self.settings = settings
        self.spec = spec
        self.storage = storage
        self.tracking_uri = tracking_uri
        self.study_dir = study_dir
        self.logs = study_dir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.workers = [
            Worker(index, env, cores) for index, (env, cores) in enumerate(worker_slots(settings.study))
        ]
        self.progress = StudyProgress.from_settings(settings, epochs, len(self.workers), self.logs)

    def run(self, study: optuna.Study) -> None:
        for worker in self.workers:
            self._start(worker)
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while any(w.process is not None for w in self.workers):
                time.sleep(POLL_SECONDS)
                trials = study.get_trials(deepcopy=False)  # one query a poll, for all below
                counts = count_trials(study, trials)
                self.progress.update(counts, trials)
                for worker in self.workers:
                    self._check(worker, counts, study)
        except KeyboardInterrupt:
            self._stop_all()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
            trials = study.get_trials(deepcopy=False)
            counts = count_trials(study, trials)
            self.progress.update(counts, trials, force=True)
            self.progress.close(counts, trials)

    def _start(self, worker: Worker) -> None:
        spec = WorkerSpec(**{**self.spec.__dict__, "worker_index": worker.index, "cores": worker.cores})
        spec_file = spec.write(self.logs / f"worker_{worker.index}.json")
        log_file = open(self.logs / f"worker_{worker.index}.log", "a")  # noqa: SIM115 - child owns it
        worker.process = subprocess.Popen(
            [sys.executable, "-m", "study.worker", str(spec_file)],
            env=worker.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=terminate_with_parent,
        )
        log_file.close()

    def _check(self, worker: Worker, counts: TrialCounts, study: optuna.Study) -> None:
        if worker.process is None or worker.process.poll() is None:
            return
        code, worker.process = worker.process.returncode, None
        if code == 0:
            return
        if not has_heartbeat(self.storage):  # nobody else will notice its trial is dead
            fail_orphaned_trials(study, self.tracking_uri)
        failed = failed_since(study, self.spec.session_start)
        finished = counts.done >= self.settings.study.n_trials or failed >= max_failed_trials(self.settings)
        if finished or worker.restarts >= MAX_RESTARTS_PER_WORKER:
            log.warning("worker %d exited with %d (log: %s)", worker.index, code, self._log(worker))
            return
        worker.restarts += 1
        log.warning(
            "worker %d exited with %d; starting a replacement (log: %s)",
            worker.index,
            code,
            self._log(worker),
        )
        self._start(worker)

    def _stop_all(self) -> None:
        """Ctrl-C: workers end their trials as failed and their runs as KILLED, then exit."""
        running = [w.process for w in self.workers if w.process is not None]
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.time() + SHUTDOWN_SECONDS
        for process in running:
            try:
                process.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                process.kill()

    def _log(self, worker: Worker) -> Path:
        return self.logs / f"worker_{worker.index}.log"


def terminate_with_parent() -> None:
    """In a new worker: get SIGTERM when the driver dies, even by SIGKILL (Linux), so no worker
    trains on as an orphan; it ends its trial and run cleanly instead."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def worker_slots(study_cfg: DictConfig) -> list[tuple[dict[str, str], list[int]]]:
    """(environment, CPU cores) for each worker.

    With study.gpus, there is one worker per slot (gpus x trials_per_gpu); each sees only its
    GPU and allocates memory as it needs it. Without, study.n_workers workers split the CPU
    cores between them instead of each starting a thread per core.
    """
    base_env = {**os.environ, "TF_FORCE_GPU_ALLOW_GROWTH": "true", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    if study_cfg.gpus:
        slots = [gpu for gpu in study_cfg.gpus for _ in range(study_cfg.trials_per_gpu)]
        if study_cfg.n_workers not in (1, len(slots)):
            log.warning(
                "study.n_workers=%d ignored: the %d GPU slots (gpus x trials_per_gpu) set the workers",
                study_cfg.n_workers,
                len(slots),
            )
        return [({**base_env, "CUDA_VISIBLE_DEVICES": str(gpu)}, []) for gpu in slots]
    cores = (
        sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else list(range(os.cpu_count() or 1))
    )
    workers = study_cfg.n_workers
    if workers == 1:
        return [(base_env, [])]  # one worker uses every core
    slots = []
    for index in range(workers):
        share = cores[index::workers] or [cores[index % len(cores)]]
        threads = str(len(share))
        xla_flags = f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={threads}"
        env = {
            **base_env,
            "TF_NUM_INTRAOP_THREADS": threads,
            "TF_NUM_INTEROP_THREADS": "1",
            "OMP_NUM_THREADS": threads,
            "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip(),  # JAX on CPU
        }
        slots.append((env, share))
    return slots


def finish(study: optuna.Study, settings: DictConfig, parent: RunTracker, study_dir: Path) -> dict:
    """Plots, the winner on the test set and in the Model Registry, the leaderboard, and a
    summary that says what won, by how much, and where to look further."""
    counts = count_trials(study)
    parent.log_metrics(
        {"trials_complete": counts.complete, "trials_pruned": counts.pruned, "trials_failed": counts.failed}
    )
    targets = space_targets(settings.search_space)
    plots = study_dir / "plots"
    plots.mkdir(exist_ok=True)
    print(f"writing Optuna's plots to {plots} ...", flush=True)
    log_plots(study, parent.client, parent.run_id, plots, targets)
    write_hparams_config(
        study_dir / "tensorboard",
        sorted({name for trial in study.trials for name in trial.params}),
        ["accuracy/validation", "loss/validation", "accuracy/train", "loss/train"],
    )
    table_file = study_dir / "leaderboard.csv"
    summary = {"study": settings.study.name, **counts.__dict__, "leaderboard": str(table_file)}
    if counts.complete:
        registered = settings.study.registered_model
        where = f" and registering it as MLflow model {registered}" if registered else ""
        print(
            f"evaluating the winner (trial {study.best_trial.number}) on the test set{where} ...", flush=True
        )
        summary.update(evaluate_winner(study, parent.client, parent.run_id, study_dir, registered))
    table = leaderboard(study, targets, summary.get("best_trial_test_accuracy"))
    table.to_csv(table_file, index=False)
    parent.log_artifact(table_file)
    width = shutil.get_terminal_size((200, 40)).columns  # wide tables wrap by columns, not mid-line
    with pd.option_context("display.width", width, "display.max_columns", 30):
        print(table.to_string(index=False, max_colwidth=48, na_rep=""))
    print(final_summary(study, settings, parent.client.tracking_uri, study_dir, summary, targets))
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="sweep")
@report_input_errors
def main(cfg: DictConfig) -> float | None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    hydra_cfg = HydraConfig.get()
    config_dir = next(
        (s.path for s in hydra_cfg.runtime.config_sources if s.provider == "main"), str(CONFIG_DIR)
    )
    # Workers compose the same config: the task overrides and every extra config folder
    # (hydra.searchpath, --config-dir), as one search path.
    extra = [
        f"{source.schema}://{source.path}"
        for source in hydra_cfg.runtime.config_sources
        if source.provider not in ("main", "hydra", "schema") and source.schema in ("file", "pkg")
    ]
    search_path = [f"hydra.searchpath=[{','.join(extra)}]"] if extra else []
    overrides = [*search_path, *hydra_cfg.overrides.task]
    try:
        summary = run_sweep(cfg, overrides, config_dir.removeprefix("file://"), hydra_cfg.job.config_name)
    except StudyIncompleteError as error:  # the parent run says FAILED; the user needs one line
        print(f"study.sweep: error: {error}", file=sys.stderr)
        sys.exit(1)
    return summary.get("best_val_accuracy")


if __name__ == "__main__":
    run_cli(main)
