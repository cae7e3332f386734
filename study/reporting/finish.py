"""What a study leaves behind when its trials are done: Optuna's plots, the winner on the test
set and in the Model Registry, the leaderboard, and a summary of what won and where to look."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Sequence
from pathlib import Path

import optuna
import pandas as pd
from omegaconf import DictConfig

from study.core.files import publish
from study.core.names import BEST_TEST_METRIC
from study.reporting.leaderboard import space_targets, trials_table
from study.reporting.summary import final_summary
from study.search.budget import count_trials
from study.search.confirmation import ConfirmedStudy
from study.search.ranking import best_trial
from study.tracking.runs import RunTracker


def finish(
    study: optuna.Study,
    settings: DictConfig,
    parent: RunTracker,
    study_dir: Path,
    command: Sequence[str] = (),
) -> dict:
    """Plots, the winner on the test set and in the Model Registry, the leaderboard, and a
    summary that says what won, by how much, and where to look further (`command`: the study's
    own, which the summary may print again with more keys)."""
    # Here, not at the top: the driver starts the backend only to evaluate the winner.
    from study.reporting.plots import log_plots
    from study.reporting.winner import evaluate_winner
    from study.tracking.tensorboard import write_hparams_config

    study = ConfirmedStudy(study)  # a confirmation's results on its trials: one winner for all below
    counts = count_trials(study.get_trials(deepcopy=False))
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
            f"evaluating the winner (trial {best_trial(study.trials).number}) on the test set{where} ...",
            flush=True,
        )
        summary.update(evaluate_winner(study, parent.client, parent.run_id, study_dir, registered))
    table = trials_table(study.get_trials(deepcopy=False), targets, summary.get(BEST_TEST_METRIC))
    parent.log_artifact(publish(table_file, functools.partial(table.to_csv, index=False)))
    width = shutil.get_terminal_size((200, 40)).columns  # wide tables wrap by columns, not mid-line
    with pd.option_context("display.width", width, "display.max_columns", 30):
        print(table.to_string(index=False, max_colwidth=48, na_rep=""))
    print(final_summary(study, settings, parent.client.tracking_uri, study_dir, summary, targets, command))
    return summary
