"""What a study leaves behind: the leaderboard, Optuna's plots, and the winner on the test set."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from study.core.files import publish, publish_text
from study.core.names import (
    METRIC,
)
from study.search.ranking import trial_score

if TYPE_CHECKING:  # Keras is imported where a model is evaluated: config errors must not wait for it
    pass

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
        image = publish(folder / f"{name}.png", functools.partial(axes.figure.savefig, dpi=100))
        plt.close(axes.figure)
        client.log_artifact(run_id, str(image), "plots")
        made.append(name)
        figures.append(figure)
    if figures:
        client.log_artifact(run_id, str(write_interactive(figures, folder / INTERACTIVE)), "plots")
    return made


def write_interactive(figures: list, path: Path) -> Path:
    """Optuna's interactive (plotly) figures on one page that carries plotly.js once (4.6 MB):
    the MLflow UI and a machine without internet show it as it is."""
    parts = [figure.to_html(full_html=False, include_plotlyjs=i == 0) for i, figure in enumerate(figures)]
    return publish_text(
        path,
        f'<html><head><meta charset="utf-8"><title>{METRIC}: Optuna plots</title></head>'
        f"<body>{''.join(parts)}</body></html>",
    )


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
