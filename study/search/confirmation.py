"""Where a study's confirmation is kept, and how its trials show it.

A confirmation (study.confirm_top, study.confirm_seeds) trains a finished trial's configuration
again with other seeds. Optuna keeps a finished trial as it is (its attributes can no longer be
written, and its storage caches it as final), so the result is a user attribute of the study,
one per trial: `confirmation.trial_0003` -> {confirm_mean, confirm_std, confirm_seeds}.
`with_confirmations` copies it onto the trial's user attributes, where the ranking reads it;
`ConfirmedStudy` is the study whose trials come that way, for everything that reports a winner.
"""

from __future__ import annotations

import copy
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from study.core.names import CONFIRM_MEAN_ATTR, CONFIRM_SEEDS_ATTR, CONFIRM_STD_ATTR, CONFIRMATION_ATTR_PREFIX


@dataclass(frozen=True)
class Confirmation:
    """A configuration's val_accuracy over its seeds: the trial's own and the confirmation's."""

    mean: float
    std: float
    seeds: int

    def as_attrs(self) -> dict[str, float | int]:
        return {CONFIRM_MEAN_ATTR: self.mean, CONFIRM_STD_ATTR: self.std, CONFIRM_SEEDS_ATTR: self.seeds}

    @classmethod
    def of(cls, trial: FrozenTrial) -> Confirmation | None:
        """The confirmation a trial shows (see `with_confirmations`); None when unconfirmed."""
        attrs = trial.user_attrs
        if CONFIRM_MEAN_ATTR not in attrs:
            return None
        return cls(attrs[CONFIRM_MEAN_ATTR], attrs[CONFIRM_STD_ATTR], attrs[CONFIRM_SEEDS_ATTR])


def confirmation_key(number: int) -> str:
    """The study user attribute that holds trial `number`'s confirmation."""
    return f"{CONFIRMATION_ATTR_PREFIX}{number:04d}"


def with_confirmations(trials: Iterable[FrozenTrial], study_attrs: Mapping[str, object]) -> list[FrozenTrial]:
    """The trials, each confirmed one a copy with its confirmation among its user attributes
    (the others as they are: the storage's own objects are never changed)."""
    shown = []
    for trial in trials:
        stored = study_attrs.get(confirmation_key(trial.number))
        if isinstance(stored, Mapping):
            trial = copy.copy(trial)
            trial.user_attrs = {**trial.user_attrs, **stored}
        shown.append(trial)
    return shown


class ConfirmedStudy(optuna.Study):
    """The study with its confirmations on its trials: the winner's evaluation, the leaderboard
    and the summary read the study's trials, and through this view each sees the same winner."""

    def __init__(self, study: optuna.Study):
        super().__init__(study.study_name, study._storage, study.sampler, study.pruner)

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return with_confirmations(super().get_trials(deepcopy=deepcopy, states=states), self.user_attrs)
