"""The one ranking of trials: the leaderboard, the live display, the end summary and the
winner all order trials by it.

A trial scores its validation accuracy (a pruned trial: its best epoch). Among complete
trials, the one of the highest rung ranks first (scheduler=asha: a configuration trained
further beats one that stopped early), then the best value, then the earliest trial.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from optuna.trial import FrozenTrial, TrialState

from study.search.asha import config_of, rung_of

# Leaderboard order of states: finished first, then what is still going on (Optuna's trial
# states and MLflow's run statuses alike).
STATE_ORDER = {"COMPLETE": 0, "FINISHED": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "KILLED": 4}


def trial_score(trial: FrozenTrial) -> float | None:
    """The trial's validation accuracy: its value, or for a pruned trial its best epoch."""
    if trial.value is not None:
        return trial.value
    return max(trial.intermediate_values.values(), default=None)


def rank_key(trial: FrozenTrial) -> tuple[int, float]:
    """Leaderboard order, best first when sorted descending: the rung reached, then the value."""
    return rung_of(trial), trial.value if trial.value is not None else -math.inf


def best_trial(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    """The winner: the complete trial of the highest rung with the best value (earliest on ties)."""
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE and trial.value is not None]
    if not complete:
        return None
    return max(complete, key=lambda trial: (*rank_key(trial), -trial.number))


def ranked_configurations(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Complete trials best first, each configuration once, at its best rank (scheduler=asha
    trains a configuration in several trials)."""
    complete = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
        key=lambda t: (*(-key for key in rank_key(t)), t.number),
    )
    firsts = {config_of(t): t for t in reversed(complete)}
    return [t for t in complete if firsts[config_of(t)] is t]
