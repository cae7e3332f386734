"""The one ranking of trials: the leaderboard, the live display, the end summary and the
winner all order trials by it.

A trial scores its validation accuracy (a pruned trial: its best epoch). Among complete
trials, the one of the highest rung ranks first (scheduler=asha: a configuration trained
further beats one that stopped early), then the best value, then the earliest trial. After a
confirmation (study.confirm_top), the confirmed configurations that lead rank by their mean
over seeds.

scheduler=asha trains a configuration in several trials, one per rung, each scored at its
rung's budget: tables show a configuration once, at its furthest trial, and a margin between
two configurations compares their trials at the highest rung both completed (a configuration
at 3 epochs against one at 1 epoch says nothing about either).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from study.core.names import RUNG_ATTR
from study.search.asha import config_of, rung_of, was_needed
from study.search.confirmation import Confirmation

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
    """The winner: the complete trial of the highest rung with the best value (earliest on
    ties); after a confirmation, the confirmed one with the best mean (`confirmed_first`)."""
    ranked = ranked_configurations(trials)
    return ranked[0] if ranked else None


def ranked_configurations(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Complete trials best first, each configuration once, at its best rank (scheduler=asha
    trains a configuration in several trials)."""
    complete = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
        key=lambda t: (*(-key for key in rank_key(t)), t.number),
    )
    firsts = {config_of(t): t for t in reversed(complete)}
    return confirmed_first([t for t in complete if firsts[config_of(t)] is t])


def confirmed_first(ranked: list[FrozenTrial]) -> list[FrozenTrial]:
    """The configurations that lead `ranked` and are confirmed (study.confirm_top), re-ranked by
    their mean over seeds: one lucky seed no longer wins. Only while they lead: a configuration
    that scored higher since (the search resumed after its confirmation) keeps its place first,
    as it would without any confirmation, until it is confirmed too."""
    confirmed = list(itertools.takewhile(lambda trial: Confirmation.of(trial) is not None, ranked))
    confirmed.sort(key=lambda trial: (-rung_of(trial), -Confirmation.of(trial).mean, trial.number))
    return confirmed + ranked[len(confirmed) :]


def leaderboard_key(trial: FrozenTrial) -> tuple[int, int, float, int]:
    """Leaderboard order, best first when sorted ascending: finished before pruned, running and
    failed; then the highest rung, the best score and the earliest trial."""
    score = trial_score(trial)
    state = STATE_ORDER.get(trial.state.name, len(STATE_ORDER))
    return state, -rung_of(trial), -score if score is not None else math.inf, trial.number


def one_per_configuration(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Each configuration's furthest trial, in the order given: the highest rung it completed,
    else its first in leaderboard order (running before failed). Without scheduler=asha every
    trial is a configuration of its own, so every trial stays."""
    trials = list(trials)
    furthest: dict[int, FrozenTrial] = {}
    for trial in sorted(trials, key=leaderboard_key):
        furthest.setdefault(config_of(trial), trial)
    kept = {trial.number for trial in furthest.values()}
    return [trial for trial in trials if trial.number in kept]


def trial_at_rung(trials: Iterable[FrozenTrial], config: int, rung: int) -> FrozenTrial | None:
    """Configuration `config`'s complete trial at `rung`: its score at that rung's budget (the
    earliest, should a duplicate promotion have completed too)."""
    at_rung = [t for t in completed_segments(trials) if config_of(t) == config and rung_of(t) == rung]
    return min(at_rung, key=lambda trial: trial.number, default=None)


def completed_segments(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and was_needed(t)]


@dataclass(frozen=True)
class Margin:
    """The winner against another configuration at one budget: `winner` and `other` are their
    trials at `rung` (scheduler=asha), or their own trials when every trial trains the same
    budget (`rung` None)."""

    winner: FrozenTrial
    other: FrozenTrial
    rung: int | None

    @property
    def value(self) -> float | None:
        score = trial_score(self.other)
        return None if score is None else self.winner.value - score


def margin_over(trials: Sequence[FrozenTrial], winner: FrozenTrial, other: FrozenTrial) -> Margin | None:
    """The winner's lead over `other`'s configuration at the same budget, or None when the two
    completed no rung in common (Hyperband brackets: one started above where the other stopped).

    With scheduler=asha the highest rung both configurations completed: the winner at 9 epochs
    against a runner-up that stopped at 3 is compared by the winner's own trial at 3 epochs.
    """
    if RUNG_ATTR not in winner.user_attrs:  # no scheduler: every trial trains the whole budget
        return Margin(winner, other, None)
    segments = completed_segments(trials)

    def rungs(config: int) -> set[int]:
        return {rung_of(t) for t in segments if config_of(t) == config}

    shared = rungs(config_of(winner)) & rungs(config_of(other))
    if not shared:
        return None
    rung = max(shared)
    ours, theirs = (trial_at_rung(segments, config_of(t), rung) for t in (winner, other))
    return Margin(ours, theirs, rung)
