"""The driver's side of a study on a cluster (`launcher=slurm` or `launcher=ray`): start the
workers that are missing, show the study's progress from the stores, replace workers that
ended before the study did, and detach on Ctrl-C (the workers go on; the same command
re-attaches). What differs between Slurm and Ray is an `Engine`: which workers live, how
more are started, how they are cancelled."""

from __future__ import annotations

import itertools
import logging
import shlex
import signal
import time
from pathlib import Path
from typing import Protocol

import optuna
from omegaconf import DictConfig

from study.core.errors import ConfigError
from study.core.masking import mask_secrets
from study.execution.recovery import fail_ownerless_trials
from study.execution.spec import WorkerSpec
from study.reporting.live import StudyProgress
from study.reporting.noise import study_command
from study.search.budget import Budget

log = logging.getLogger("study.sweep")

POLL_SECONDS = 2.0  # the stores, for the live display
CLUSTER_POLLS_EVERY = 5  # the cluster (squeue, Ray's GCS) every 10 s: schedulers ask for restraint
REPLACEMENTS_PER_WORKER = 3  # workers that ended (node lost, cancelled) replaced while attached


class Engine(Protocol):
    """Where the workers run: Slurm array tasks (`slurm.SlurmEngine`), Ray actors (`ray_cluster`)."""

    noun: str  # what a worker is there: "task", "actor"
    detaches: bool  # False when the cluster itself ends with this session (Ray started for it)
    logs_hint: str  # where else a worker's start-up errors go

    def live(self) -> list[str]: ...

    def start(self, count: int, spec: WorkerSpec, study_dir: Path) -> list[str]: ...

    def cancel(self) -> list[str]: ...


class ClusterWatch:
    def __init__(
        self,
        engine: Engine,
        study: optuna.Study,
        settings: DictConfig,
        tracking_uri: str,
        spec: WorkerSpec,
        budget: Budget,
        epochs: int | None,
        study_dir: Path,
    ):
        self.engine = engine
        self.study = study
        self.settings = settings
        self.tracking_uri = tracking_uri
        self.spec = spec
        self.budget = budget
        self.study_dir = study_dir
        self.workers = settings.launcher.workers
        self.replacements_left = REPLACEMENTS_PER_WORKER * self.workers
        self.progress = StudyProgress.from_settings(
            settings, epochs, self.workers, None, budget.ladder, deadline=budget.deadline
        )

    def run(self) -> bool:
        """Watch until the study's search has ended and its last trials with it (True), or until
        Ctrl-C detaches (False)."""
        name, noun = self.settings.study.name, self.engine.noun
        try:
            live = self.engine.live()
            if live:
                print(f"study {name}: attached to its running {noun}s {', '.join(live)}", flush=True)
            self._start_missing(live, first=True)
            for poll in itertools.count(1):
                time.sleep(POLL_SECONDS)
                trials = self.study.get_trials(deepcopy=False)
                verdict = self.budget.judge(trials)
                self.progress.update(verdict.counts, trials, done=verdict.done)
                if verdict.stop is not None and (verdict.counts.running == 0 or not live):
                    return True
                fail_ownerless_trials(self.study, self.settings.study, self.tracking_uri, trials)
                if poll % CLUSTER_POLLS_EVERY:
                    continue
                live = self._live(live)
                if verdict.stop is None and not self._start_missing(live):
                    print(f"study {name}: every {noun} ended; none replaced", flush=True)
                    return True
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
            if not self.engine.detaches:
                self.engine.cancel()
                print(f"\nstudy {name}: stopped (the cluster was started for this session)", flush=True)
                raise
            self._print_detached()
            return False
        finally:
            trials = self.study.get_trials(deepcopy=False)
            verdict = self.budget.judge(trials)
            self.progress.update(verdict.counts, trials, force=True, done=verdict.done)
            self.progress.close(verdict.counts, trials)

    def _live(self, last: list[str]) -> list[str]:
        """The live workers; the last answer while the cluster does not answer (a busy
        slurmctld): its workers go on without this watch."""
        try:
            return self.engine.live()
        except ConfigError as error:
            log.warning("%s; asking again in %.0f s", error, POLL_SECONDS * CLUSTER_POLLS_EVERY)
            return last

    def _start_missing(self, live: list[str], first: bool = False) -> bool:
        """Start the workers that are missing; False when none is left to run the study."""
        missing = self.workers - len(live)
        if missing <= 0:
            return True
        if not first:
            if self.replacements_left < missing:
                return bool(live)
            self.replacements_left -= missing
        started = self.engine.start(missing, self.spec, self.study_dir)
        what = "started" if first else f"replacing ended {self.engine.noun}s:"
        more_logs = self.engine.logs_hint.format(study_dir=self.study_dir)
        print(
            f"study {self.settings.study.name}: {what} {', '.join(started)} "
            f"(worker logs: {self.study_dir / 'logs'}{more_logs})",
            flush=True,
        )
        return True

    def _print_detached(self) -> None:
        words = study_command(self.spec.config_dir, self.spec.config_name, self.spec.overrides)
        command = " ".join(shlex.quote(mask_secrets(word)) for word in words)
        live = self.engine.live()
        print(
            f"\ndetached: the {self.engine.noun}s of study {self.settings.study.name} keep running "
            f"({', '.join(live) or 'none'})\n"
            f"  re-attach: {command}\n"
            f"  cancel:    {command} launcher.cancel=true",
            flush=True,
        )


def open_engine(settings: DictConfig, base: DictConfig) -> Engine | None:
    """The cluster `launcher` names, checked (it can run the workers, they reach the stores);
    None for launcher=local."""
    if settings.launcher.name == "slurm":
        from study.execution.slurm import SlurmEngine

        return SlurmEngine.open(settings, base)
    if settings.launcher.name == "ray":
        from study.execution.ray_cluster import RayEngine

        return RayEngine.open(settings, base)
    return None


def cancel_workers(engine: Engine, settings: DictConfig) -> dict:
    cancelled = engine.cancel()
    name, noun = settings.study.name, engine.noun
    if cancelled:
        print(
            f"study {name}: cancelled {len(cancelled)} {noun}(s) ({', '.join(cancelled)}); the trials they "
            "ran are retried when the study resumes (the same command without launcher.cancel=true)",
            flush=True,
        )
    else:
        print(f"study {name}: none of its {noun}s is running", flush=True)
    return {"study": name, "cancelled": cancelled}
