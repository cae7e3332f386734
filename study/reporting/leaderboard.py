"""One leaderboard design for `study.sweep` (leaderboard.csv) and `study.report`.

A row is one configuration (or one MLflow run): its furthest trial's state, its validation
accuracy, the epochs the configuration trained, the test accuracy where it was evaluated (a
study's winner only), its role (winner, baseline), the effective config values that were
searched, named by config key (`optimizer.learning_rate`, whichever search-space entry sampled
it), a short error, and the MLflow run id. Without scheduler=asha a configuration is one trial;
with it, one trial per rung, and `all_rungs` lists every one. Figures are rounded; columns no
row fills are left out. Light on imports: `study.report` must not pay for TensorFlow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from study.core.names import BASELINE_ATTR, FAIL_REASON_ATTR, METRIC, MLFLOW_RUN_ATTR, RUNG_ATTR, TEST_METRIC
from study.core.names import CONFIRM_MEAN_COLUMN as CONFIRM_MEAN
from study.core.names import CONFIRM_STD_COLUMN as CONFIRM_STD
from study.core.names import DURATION_COLUMN as DURATION
from study.core.names import EPOCHS_COLUMN as EPOCHS
from study.core.names import ERROR_COLUMN as ERROR
from study.core.names import ROLE_COLUMN as ROLE
from study.core.names import RUN_ID_COLUMN as RUN_ID
from study.core.names import RUN_NAME_COLUMN as RUN_NAME
from study.core.names import RUNG_COLUMN as RUNG
from study.core.names import STATE_COLUMN as STATE
from study.core.names import STUDY_COLUMN as STUDY
from study.core.names import TRIAL_COLUMN as TRIAL
from study.search.asha import config_of, epochs_trained, rung_of, was_needed
from study.search.confirmation import Confirmation
from study.search.ranking import (
    STATE_ORDER,
    best_trial,
    one_per_configuration,
    ranked_configurations,
    trial_score,
)

LEADING = [STUDY, TRIAL, RUN_NAME, STATE, RUNG, METRIC, CONFIRM_MEAN, CONFIRM_STD, TEST_METRIC]
LEADING += [EPOCHS, DURATION, ROLE]
RANK = "_rank"  # a row's place in the one ranking (study.search.ranking), where it has one
TRAILING = [ERROR, RUN_ID]
ALWAYS = {TRIAL, STATE, RUN_ID}  # kept even when empty: a table of nothing still says what it lists

WINNER, BASELINE = "winner", "baseline"
ERROR_LENGTH = 80


def space_targets(space: Mapping[str, Any]) -> dict[str, str]:
    """{Optuna param name: the config key it sets} of a search space (its `target`, else its
    name, as search_space.Entry reads it), typed or as loaded from search_space.yaml."""
    return {name: (spec.get("target") or name) for name, spec in space.items()}


def trial_error(trial: FrozenTrial) -> str:
    """Why a failed trial failed, in a few words (the MLflow run has the rest)."""
    if trial.state != TrialState.FAIL:
        return ""
    reason = trial.user_attrs.get(FAIL_REASON_ATTR)
    if not reason:
        return "worker stopped (killed or crashed)"
    first = str(reason).strip().splitlines()[0] if str(reason).strip() else "error"
    return first if len(first) <= ERROR_LENGTH else first[: ERROR_LENGTH - 3] + "..."


def trial_config(trial: FrozenTrial, targets: Mapping[str, str]) -> dict[str, Any]:
    """The trial's sampled values by the config key they set ({param name: key} in `targets`)."""
    return {targets.get(name, name): value for name, value in trial.params.items()}


def trial_row(
    trial: FrozenTrial,
    targets: Mapping[str, str],
    best: int | None = None,
    test: float | None = None,
    epochs: int | None = None,
    baseline: bool | None = None,
) -> dict[str, Any]:
    """One trial's row; `epochs` and `baseline` are its configuration's (scheduler=asha: a
    promotion trains on from earlier trials), by default the trial's own."""
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    roles = [WINNER] if trial.number == best else []
    confirmation = Confirmation.of(trial)
    if baseline if baseline is not None else trial.user_attrs.get(BASELINE_ATTR):
        roles.append(BASELINE)
    return {
        TRIAL: trial.number,
        STATE: trial.state.name,
        RUNG: rung_of(trial) if RUNG_ATTR in trial.user_attrs else None,
        METRIC: trial_score(trial),
        CONFIRM_MEAN: confirmation.mean if confirmation else None,
        CONFIRM_STD: confirmation.std if confirmation else None,
        TEST_METRIC: test if trial.number == best else None,
        EPOCHS: epochs if epochs is not None else len(trial.intermediate_values),
        DURATION: duration,
        ROLE: ", ".join(roles),
        **trial_config(trial, targets),
        ERROR: trial_error(trial),
        RUN_ID: trial.user_attrs.get(MLFLOW_RUN_ATTR, ""),
    }


def best_trial_number(trials: Iterable[FrozenTrial]) -> int | None:
    best = best_trial(trials)  # with scheduler=asha: the best of the highest rung
    return best.number if best is not None else None


def trials_table(
    trials: list[FrozenTrial],
    targets: Mapping[str, str],
    test_accuracy: float | None = None,
    all_rungs: bool = False,
) -> pd.DataFrame:
    """The leaderboard of a study's configurations; `test_accuracy` is the winner's, when
    evaluated. A trial that lost the race for the study's last places never trained: it is left
    out, so a study of n_trials lists n_trials rows however many workers raced."""
    trials = [trial for trial in trials if was_needed(trial)]
    config_keys = list(dict.fromkeys(key for t in trials for key in trial_config(t, targets)))
    return leaderboard(trial_rows(trials, targets, test_accuracy, all_rungs), config_keys)


def trial_rows(
    trials: Sequence[FrozenTrial], targets: Mapping[str, str], test: float | None, all_rungs: bool = False
) -> list[dict[str, Any]]:
    """A row per configuration at its furthest trial (scheduler=asha: its highest rung, which
    the winner's row is too), or with `all_rungs` a row per trial; epochs are the
    configuration's by the end of the row's trial."""
    best = best_trial_number(trials)
    epochs = epochs_trained(trials)
    baselines = {config_of(trial) for trial in trials if trial.user_attrs.get(BASELINE_ATTR)}
    shown = trials if all_rungs else one_per_configuration(trials)
    # Every rung's trials by rung and score; configurations in the ranking's order
    ranking = [] if all_rungs else ranked_configurations(trials)
    rank = {trial.number: place for place, trial in enumerate(ranking)}
    return [
        {
            **trial_row(trial, targets, best, test, epochs.get(trial.number), config_of(trial) in baselines),
            RANK: rank.get(trial.number),
        }
        for trial in shown
    ]


def leaderboard(rows: list[dict[str, Any]], config_keys: list[str]) -> pd.DataFrame:
    """Rows in the shared column order, best first, rounded, without empty columns."""
    columns = [c for c in LEADING if any(c in row for row in rows) or c in ALWAYS]
    columns += [key for key in config_keys if key not in columns] + TRAILING
    ranked = [RANK] if any(row.get(RANK) is not None for row in rows) else []
    table = pd.DataFrame(rows, columns=columns + ranked)
    if table.empty:
        return table.drop(columns=ranked)
    table["_order"] = table[STATE].map(lambda state: STATE_ORDER.get(state, len(STATE_ORDER)))
    rungs = [RUNG] if RUNG in table and table[RUNG].notna().any() else []  # asha: highest rung first
    # Complete configurations in the ranking's order (a confirmation's means included), the rest after
    by = ["_order", *ranked, *rungs, METRIC] + ([TRIAL] if TRIAL in table else [])
    ascending = [True, *[True] * len(ranked), *[False] * len(rungs), False, True][: len(by)]
    table = table.sort_values(by, ascending=ascending, na_position="last")
    table = table.drop(columns=["_order", *ranked]).reset_index(drop=True)
    return rounded(drop_empty(table))


def drop_empty(table: pd.DataFrame) -> pd.DataFrame:
    empty = [
        column
        for column in table.columns
        if column not in ALWAYS and table[column].map(lambda v: v is None or v == "" or pd.isna(v)).all()
    ]
    return table.drop(columns=empty)


def rounded(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracies to 4 decimals, durations to 0.1 s, other figures to 4 significant digits."""
    table = table.copy()
    for column in table.columns:
        values = table[column]
        if column in (METRIC, TEST_METRIC, CONFIRM_MEAN, CONFIRM_STD):
            table[column] = pd.to_numeric(values, errors="coerce").round(4)
        elif column == DURATION:
            table[column] = pd.to_numeric(values, errors="coerce").round(1)
        elif column in (TRIAL, EPOCHS, RUNG):
            table[column] = pd.to_numeric(values, errors="coerce").astype("Int64")
        elif values.map(lambda v: isinstance(v, float)).any():
            table[column] = values.map(significant)
    return table


def significant(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float) and value == value:  # not NaN
        return float(f"{value:.{digits}g}")
    return value


def format_value(value: Any) -> str:
    """A config value as the terminal shows it: 0.00123, 0.31, cnn."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def describe_config(config: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={format_value(value)}" for key, value in config.items())
