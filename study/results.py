"""What a study leaves behind: the leaderboard, Optuna's plots, and the winner on the test set."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from mlflow import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState
from sklearn.metrics import ConfusionMatrixDisplay

from study.config import checked_config
from study.data import load_dataset
from study.scheduler import RUNG_ATTR, best_trial, rung_of
from study.storage import FAIL_REASON_ATTR, MLFLOW_RUN_ATTR, trial_score
from study.tracking import RunTracker

log = logging.getLogger(__name__)

STATE_ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2, TrialState.WAITING: 3}
PLOTS = {
    "optimization_history": optuna.visualization.matplotlib.plot_optimization_history,
    "param_importances": optuna.visualization.matplotlib.plot_param_importances,
    "parallel_coordinate": optuna.visualization.matplotlib.plot_parallel_coordinate,
    "intermediate_values": optuna.visualization.matplotlib.plot_intermediate_values,
}


def leaderboard(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, best first: params, validation accuracy, state, duration, run id."""
    rows = [_row(trial) for trial in study.get_trials(deepcopy=False)]
    columns = ["trial", "state", "val_accuracy", "epochs", "duration_s", "mlflow_run_id", "note"]
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=columns)
    params = sorted(c for c in table.columns if c.startswith("params."))
    # scheduler=asha: a trial per rung; the highest rung reached ranks first, then val_accuracy.
    rungs = ["rung"] if "rung" in table.columns and table["rung"].notna().any() else []
    table = table[columns + rungs + params]
    table["_order"] = table["state"].map(lambda s: STATE_ORDER.get(TrialState[s], 9))
    order = ["_order", *rungs, "val_accuracy", "trial"]
    table = table.sort_values(order, ascending=[True, *[False] * len(rungs), False, True])
    return table.drop(columns="_order").reset_index(drop=True)


def _row(trial: FrozenTrial) -> dict:
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    value = trial_score(trial)
    return {
        "trial": trial.number,
        "state": trial.state.name,
        "val_accuracy": value,
        "epochs": len(trial.intermediate_values),
        "duration_s": round(duration, 1) if duration is not None else None,
        "mlflow_run_id": trial.user_attrs.get(MLFLOW_RUN_ATTR, ""),
        "note": trial.user_attrs.get(FAIL_REASON_ATTR, ""),
        "rung": rung_of(trial) if RUNG_ATTR in trial.user_attrs else None,
        **{f"params.{name}": value for name, value in trial.params.items()},
    }


def log_plots(study: optuna.Study, client: MlflowClient, run_id: str, folder: Path) -> list[str]:
    """Optuna's standard plots as PNG files on the parent run; skips those the data can't make."""
    made = []
    for name, plot in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = plot(study)
        except Exception as error:  # too few complete trials, a single-valued parameter, ...
            log.info("plot %s skipped: %s", name, error)
            continue
        figure = np.ravel(axes)[0].figure
        figure.set_size_inches(10, 6)
        figure.tight_layout()
        figure.savefig(folder / f"{name}.png", dpi=100)
        client.log_artifact(run_id, str(folder / f"{name}.png"), "plots")
        plt.close(figure)
        made.append(name)
    return made


def evaluate_winner(study: optuna.Study, client: MlflowClient, parent_run_id: str, folder: Path) -> dict:
    """The best trial's best checkpoint, evaluated once on the test set; logged on the parent."""
    best = best_trial(study.get_trials(deepcopy=False))  # with asha: the best of the highest rung
    run_id = best.user_attrs[MLFLOW_RUN_ATTR]
    with tempfile.TemporaryDirectory(prefix="study-winner-") as scratch:
        config_file = client.download_artifacts(run_id, "config.yaml", scratch)
        checkpoint = client.download_artifacts(run_id, "checkpoints/best.keras", scratch)
        cfg = checked_config(OmegaConf.load(config_file))
        data = load_dataset(cfg.data, cfg.trainer.seed)
        model = keras.saving.load_model(checkpoint)
        test_loss, test_accuracy = model.evaluate(
            data.x_test, data.y_test, batch_size=cfg.trainer.eval_batch_size, verbose=0
        )
        logits = model.predict(data.x_test, batch_size=cfg.trainer.eval_batch_size, verbose=0)
    predictions = np.argmax(logits, axis=1)
    display = ConfusionMatrixDisplay.from_predictions(data.y_test, predictions, colorbar=False)
    display.ax_.set_title(f"trial {best.number} on the test set: accuracy {test_accuracy:.4f}")
    display.figure_.savefig(folder / "confusion_matrix.png", dpi=100)
    client.log_artifact(parent_run_id, str(folder / "confusion_matrix.png"))
    plt.close(display.figure_)
    summary = {
        "best_trial": best.number,
        "best_val_accuracy": best.value,
        "best_trial_test_loss": float(test_loss),
        "best_trial_test_accuracy": float(test_accuracy),
        "best_trial_run_id": run_id,
    }
    parent = RunTracker(client, parent_run_id)
    parent.log_metrics({key: value for key, value in summary.items() if key != "best_trial_run_id"})
    parent.set_tags({"best_trial_run_id": run_id})
    parent.flush()
    client.set_tag(run_id, "study.winner", "true")
    return summary
