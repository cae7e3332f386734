"""What a study leaves behind: the leaderboard, Optuna's plots, and the winner on the test set."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optuna
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf
from optuna.trial import TrialState

from study.config import checked_config
from study.data import load_dataset
from study.leaderboard import METRIC, trials_table
from study.lineage import log_keras_model
from study.names import BEST_MODEL_TAG, BEST_RUN_TAG, CHECKPOINT_TAG, MODEL_URI_TAG, WINNER_TAG
from study.scheduler import best_trial
from study.storage import MLFLOW_RUN_ATTR, trial_score
from study.tracking import RunTracker

if TYPE_CHECKING:  # Keras is imported where a model is evaluated: config errors must not wait for it
    import keras

log = logging.getLogger(__name__)

PLOTS = {
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "parallel_coordinate": "plot_parallel_coordinate",
    "intermediate_values": "plot_intermediate_values",
}
# With fewer complete trials, parameter importances say more about chance than about the space.
MIN_TRIALS_FOR_IMPORTANCES = 10
PRUNED_LABEL = "pruned (best epoch)"
INTERACTIVE = "interactive.html"  # every plot, zoomable, in one page


def leaderboard(study: optuna.Study, targets: Mapping[str, str], test_accuracy: float | None = None):
    """The study's trials as study.report shows them too (study/leaderboard.py)."""
    return trials_table(study.get_trials(deepcopy=False), targets, test_accuracy)


def config_view(study: optuna.Study, targets: Mapping[str, str]) -> optuna.Study:
    """The study with each trial's params named by the config key they set, in memory:
    `optimizer.learning_rate` once, not `sgd_learning_rate` and `adaptive_learning_rate`."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory"
    try:
        view = optuna.create_study(direction=study.direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
    distributions: dict[str, optuna.distributions.BaseDistribution] = {}
    for trial in study.get_trials(deepcopy=False):
        for name, distribution in trial.distributions.items():
            key = targets.get(name, name)
            distributions[key] = _union(distributions.get(key), distribution)
            # An enqueued value may lie outside its entry's range (a baseline, a test).
            distributions[key] = _union(distributions[key], _point(distribution, trial.params[name]))
    for trial in study.get_trials(deepcopy=False):
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        params = {targets.get(name, name): value for name, value in trial.params.items()}
        view.add_trial(
            optuna.trial.create_trial(
                state=trial.state,
                value=trial.value,
                params=params,
                distributions={key: distributions[key] for key in params},
                intermediate_values=dict(trial.intermediate_values),
                user_attrs=dict(trial.user_attrs),
            )
        )
    return view


def _point(distribution, value):
    """The smallest distribution of `distribution`'s kind that holds `value`."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return optuna.distributions.CategoricalDistribution([value])
    log = distribution.log and value > 0
    return type(distribution)(value, value, log=log)


def _union(first, second):
    """One distribution covering two entries' ranges for the same config key."""
    if first is None or type(first) is not type(second):
        return second
    if isinstance(second, optuna.distributions.CategoricalDistribution):
        return optuna.distributions.CategoricalDistribution(
            list(dict.fromkeys([*first.choices, *second.choices]))
        )
    low, high = min(first.low, second.low), max(first.high, second.high)
    if isinstance(second, optuna.distributions.IntDistribution):
        return optuna.distributions.IntDistribution(low, high, log=first.log and second.log)
    return optuna.distributions.FloatDistribution(low, high, log=first.log and second.log)


def log_plots(
    study: optuna.Study, client: MlflowClient, run_id: str, folder: Path, targets: Mapping[str, str]
) -> list[str]:
    """Optuna's plots as PNG and interactive HTML on the parent run, axes named after the
    metric and params after the config keys they set; skips those the trials can't make."""
    view = config_view(study, targets)
    complete = view.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    # Keys every complete trial has: a key that applies to some trials only (dropout for an
    # MLP, not for softmax) would get a "None" tick for the rest.
    common = sorted(set.intersection(*(set(t.params) for t in complete))) if complete else []
    options = {
        "optimization_history": {"target_name": METRIC},
        "param_importances": {"target_name": METRIC},
        "parallel_coordinate": {"target_name": METRIC, "params": common},
        "intermediate_values": {},
    }
    made, figures = [], []
    for name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = getattr(optuna.visualization.matplotlib, function)(view, **options[name])
                figure = getattr(optuna.visualization, function)(view, **options[name])
        except Exception as error:  # too few complete trials, a single-valued parameter, ...
            log.info("plot %s skipped: %s", name, error)
            continue
        axes = np.ravel(axes)[0]
        finish_plot(name, view, axes, figure, len(complete))
        axes.figure.set_size_inches(10, 6)
        axes.figure.tight_layout()
        axes.figure.savefig(folder / f"{name}.png", dpi=100)
        plt.close(axes.figure)
        client.log_artifact(run_id, str(folder / f"{name}.png"), "plots")
        made.append(name)
        figures.append(figure)
    if figures:
        client.log_artifact(run_id, str(write_interactive(figures, folder / INTERACTIVE)), "plots")
    return made


def write_interactive(figures: list, path: Path) -> Path:
    """Optuna's interactive (plotly) figures on one page that carries plotly.js once (4.6 MB):
    the MLflow UI and a machine without internet show it as it is."""
    parts = [figure.to_html(full_html=False, include_plotlyjs=i == 0) for i, figure in enumerate(figures)]
    path.write_text(
        f'<html><head><meta charset="utf-8"><title>{METRIC}: Optuna plots</title></head>'
        f"<body>{''.join(parts)}</body></html>"
    )
    return path


def finish_plot(name: str, study: optuna.Study, axes, figure, complete: int) -> None:
    """What Optuna's defaults leave out: pruned trials in the history, a worst trial that shows
    in the parallel coordinates, a caveat on importances from few trials, the metric's name."""
    if name == "optimization_history":
        pruned = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.PRUNED]
        scored = [(t.number, trial_score(t)) for t in pruned if trial_score(t) is not None]
        if scored:
            numbers, scores = zip(*scored, strict=True)
            axes.scatter(numbers, scores, marker="x", color="tab:orange", label=PRUNED_LABEL, zorder=3)
            axes.legend()
            figure.add_scatter(
                x=numbers, y=scores, mode="markers", name=PRUNED_LABEL, marker={"symbol": "x", "size": 9}
            )
    elif name == "parallel_coordinate":
        darker = matplotlib.colors.LinearSegmentedColormap.from_list(
            "Blues_visible", plt.get_cmap("Blues")(np.linspace(0.45, 1.0, 256))
        )
        for collection in axes.collections:
            if collection.get_array() is not None:
                collection.set_cmap(darker)  # the worst trial mid-blue, not white on white
                if collection.colorbar is not None:
                    collection.colorbar.update_normal(collection)
        # The worst and best trials run along the frame's edges: a margin shows them. Every
        # axis (the metric's and each param's twin) gets the same share, so lines stay aligned.
        colorbars = {c.colorbar.ax for c in axes.collections if c.colorbar is not None}
        for each in axes.figure.axes:
            if each not in colorbars:
                pad_y(each, 0.04)
    elif name == "param_importances" and complete < MIN_TRIALS_FOR_IMPORTANCES:
        caveat = (
            f"Only {complete} complete trials: importances are not meaningful "
            f"below {MIN_TRIALS_FOR_IMPORTANCES}."
        )
        axes.text(
            0.98, 0.04, caveat, transform=axes.transAxes, ha="right", color="tab:red",
            bbox={"facecolor": "white", "edgecolor": "tab:red"},
        )  # fmt: skip
        figure.update_layout(title={"text": f"Hyperparameter Importances<br><sup>{caveat}</sup>"})
    elif name == "intermediate_values":
        axes.set_ylabel(f"{METRIC} after each epoch")
        axes.set_xlabel("epoch")
        figure.update_layout(yaxis_title=f"{METRIC} after each epoch", xaxis_title="epoch")


def pad_y(axes, share: float) -> None:
    low, high = axes.get_ylim()
    if axes.get_yscale() == "log":
        low, high = np.log10(low), np.log10(high)
        span = high - low
        axes.set_ylim(10 ** (low - share * span), 10 ** (high + share * span))
    else:
        span = high - low
        axes.set_ylim(low - share * span, high + share * span)


def evaluate_winner(
    study: optuna.Study,
    client: MlflowClient,
    parent_run_id: str,
    folder: Path,
    registered_model: str | None = None,
) -> dict:
    """The best trial's best checkpoint, evaluated once on the test set and logged on the
    parent; the model logged as an MLflow model on the winner's run and registered under
    `registered_model` (when not null)."""
    import keras
    from sklearn.metrics import ConfusionMatrixDisplay

    best = best_trial(study.get_trials(deepcopy=False))  # with scheduler=asha: the best of the highest rung
    run_id = best.user_attrs[MLFLOW_RUN_ATTR]
    with tempfile.TemporaryDirectory(prefix="study-winner-") as scratch:
        config_file = client.download_artifacts(run_id, "config.yaml", scratch)
        checkpoint = client.download_artifacts(run_id, "checkpoints/best.keras", scratch)
        cfg = checked_config(OmegaConf.load(config_file))
        data = load_dataset(cfg.data, cfg.trainer.seed)
        model = keras.saving.load_model(checkpoint)
        checkpoint_sha256 = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
        test_loss, test_accuracy = model.evaluate(
            data.x_test, data.y_test, batch_size=cfg.trainer.eval_batch_size, verbose=0
        )
        logits = model.predict(data.x_test, batch_size=cfg.trainer.eval_batch_size, verbose=0)
        model_uri, registered_here = log_winner_model(
            client, run_id, model, checkpoint_sha256, data.x_test, registered_model
        )
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
        BEST_RUN_TAG: run_id,
        BEST_MODEL_TAG: model_uri,
    }
    if registered_here:
        describe_version(client, model_uri, best, float(test_accuracy), study.study_name)
    crown(client, parent_run_id, run_id)
    parent = RunTracker(client, parent_run_id)
    parent.log_metrics({key: value for key, value in summary.items() if not key.endswith(("_id", "_uri"))})
    parent.set_tags({BEST_RUN_TAG: run_id, BEST_MODEL_TAG: model_uri})
    parent.flush()
    return summary


def crown(client: MlflowClient, parent_run_id: str, run_id: str) -> None:
    """Tag the winner's run, and untag the run that an earlier session of the study crowned:
    a search for `tags.study.winner = 'true'` finds one run per study."""
    earlier = client.get_run(parent_run_id).data.tags.get(BEST_RUN_TAG)
    if earlier and earlier != run_id:
        with contextlib.suppress(MlflowException):  # another driver of the study untagged it
            client.delete_tag(earlier, WINNER_TAG)
    # Through log_batch, like every tag here: MLflow retries its write when two drivers that
    # finish one study together tag the same run (its single-tag write fails the second one).
    RunTracker(client, run_id).set_tags({WINNER_TAG: "true"})


def log_winner_model(
    client: MlflowClient,
    run_id: str,
    model: keras.Model,
    checkpoint_sha256: str,
    images: np.ndarray,
    registered_model: str | None,
) -> tuple[str, bool]:
    """The winner as an MLflow model on its own run: its URI (models:/NAME/VERSION when
    registered), and whether this call made the registered version. A resumed study whose
    winner and its checkpoint did not change logs nothing new."""
    tags = client.get_run(run_id).data.tags
    logged = tags.get(MODEL_URI_TAG)
    if (
        logged
        and tags.get(CHECKPOINT_TAG) == checkpoint_sha256
        and (registered_model is None or logged.startswith(f"models:/{registered_model}/"))
    ):
        return logged, False
    info = log_keras_model(
        client.tracking_uri, run_id, model, images, registered_model, {CHECKPOINT_TAG: checkpoint_sha256}
    )
    uri, registered_here = info.model_uri, False
    if registered_model and info.registered_model_version is not None:
        version = int(info.registered_model_version)
        first = first_version_of(client, registered_model, run_id, checkpoint_sha256)
        if first < version:  # another driver of this study registered this winner a moment ago
            client.delete_model_version(registered_model, str(version))
            client.delete_logged_model(info.model_id)
            log.info("the winner is version %d of %s, registered by another driver", first, registered_model)
        uri, registered_here = f"models:/{registered_model}/{first}", first == version
    RunTracker(client, run_id).set_tags({MODEL_URI_TAG: uri, CHECKPOINT_TAG: checkpoint_sha256})
    return uri, registered_here


def first_version_of(client: MlflowClient, registered_model: str, run_id: str, checkpoint_sha256: str) -> int:
    """Drivers that share a study see it done at the same moment and each evaluate and
    register its winner. The registry keeps the first version made from the winner's run and
    checkpoint; a driver whose version came later deletes its own, so every driver ends up
    naming the same one, whatever the order of their writes."""
    same_model = f"run_id = '{run_id}' and tags.{CHECKPOINT_TAG} = '{checkpoint_sha256}'"
    versions = client.search_model_versions(f"name = '{registered_model}' and {same_model}")
    return min(int(version.version) for version in versions)


def describe_version(client: MlflowClient, model_uri: str, best, test_accuracy: float, study: str) -> None:
    """What the registered version is: which study and trial, and how well it did."""
    name, version = model_uri.removeprefix("models:/").rsplit("/", 1)
    tags = {
        "study": study,
        "trial": best.number,
        METRIC: f"{best.value:.4f}",
        "test_accuracy": f"{test_accuracy:.4f}",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.update_model_version(
        name,
        version,
        description=(
            f"Winner of study {study}: trial {best.number}, {METRIC} {best.value:.4f}, "
            f"test_accuracy {test_accuracy:.4f}. Inputs: float32 images scaled to [0, 1]; "
            "outputs: one logit per class."
        ),
    )
