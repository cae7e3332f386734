"""A study's outputs (confirmations, plots, the winner, the leaderboard), written once.

With local workers the driver writes them. On a cluster (`launcher=slurm`) the driver may have
detached or died, so whoever sees the study done first writes them: the attached driver or
one of the worker tasks. Which one is decided by the study storage itself: creating an Optuna
study is atomic, so each contender tries to create the claim study `<study.name>:outputs`, and
only the one that made it writes. A contender that failed part way gives its claim back; the
same command run again on a done study takes it over (its writer is gone).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import optuna
from omegaconf import DictConfig

from study.execution.confirmation import confirm_best
from study.execution.recovery import end_orphaned_runs
from study.reporting.finish import finish
from study.search.ranking import best_trial
from study.tracking.runs import RunTracker

log = logging.getLogger(__name__)

CLAIM_SUFFIX = ":outputs"  # ':' is in no study name (study.name's check): no study is taken for it
WRITER_WAIT_SECONDS = 900.0  # the claim's holder evaluates the winner and writes the plots
POLL_SECONDS = 2.0


def claim_name(settings: DictConfig) -> str:
    return f"{settings.study.name}{CLAIM_SUFFIX}"


def claim_outputs(
    storage: optuna.storages.BaseStorage, settings: DictConfig, take_over: bool = False
) -> bool:
    """True for the one process that is to write the outputs; `take_over` first removes a
    claim left by a writer that is gone."""
    if take_over:
        release_claim(storage, settings)
    try:
        storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], claim_name(settings))
    except optuna.exceptions.DuplicatedStudyError:
        return False
    return True


def release_claim(storage: optuna.storages.BaseStorage, settings: DictConfig) -> None:
    """Give the claim back: the outputs failed, or the study goes on (more trials asked for)."""
    with contextlib.suppress(KeyError):
        storage.delete_study(storage.get_study_id_from_name(claim_name(settings)))


def write_outputs(
    study: optuna.Study,
    settings: DictConfig,
    base: DictConfig,
    parent: RunTracker,
    study_dir: Path,
    command: Sequence[str],
    search_done: bool,
    claimed: bool = False,
) -> dict:
    """Confirmations (study.confirm_top), then plots, the winner and the leaderboard. With
    `claimed`, a failure (or an interrupt) gives the claim back for the next contender."""
    try:
        # Before the winner is chosen: with study.confirm_top, it is chosen on a mean over seeds.
        confirm_best(study, settings, base, parent, search_done=search_done)
        return finish(study, settings, parent, study_dir, command)
    except BaseException:
        if claimed:
            release_claim(study._storage, settings)
        raise
    finally:
        end_orphaned_runs(study, parent)


def outputs_written_elsewhere(
    study: optuna.Study, settings: DictConfig, parent: RunTracker, study_dir: Path
) -> dict:
    """Another process holds the claim: wait until it ended the parent run, then point at what
    it wrote."""
    deadline = time.time() + WRITER_WAIT_SECONDS
    print(f"study {settings.study.name}: done; a worker task writes its outputs ...", flush=True)
    while time.time() < deadline and parent.client.get_run(parent.run_id).info.status == "RUNNING":
        time.sleep(POLL_SECONDS)
    if parent.client.get_run(parent.run_id).info.status == "RUNNING":
        raise TimeoutError(
            f"the process writing the outputs did not end the parent run in {WRITER_WAIT_SECONDS:.0f} s"
        )
    table = study_dir / "leaderboard.csv"
    if table.exists():
        print(table.read_text(), end="")
    best = best_trial(study.get_trials(deepcopy=False))
    where = f"best trial {best.number}, " if best is not None else ""
    print(f"study {settings.study.name}: {where}leaderboard {table}", flush=True)
    return {
        "study": settings.study.name,
        "leaderboard": str(table),
        "best_val_accuracy": best.value if best is not None else None,
    }
