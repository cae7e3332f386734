"""Multi-fidelity scheduling: asynchronous successive halving with promotion (ASHA).

ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020), with
optional Hyperband brackets over it. A configuration (one point of the search space) trains in
segments, one Optuna trial per segment:

- its first trial is sampled (or enqueued, like the baseline) and trains up to the budget of its
  first rung (rung 0, or its bracket's first rung);
- a promotion is a new trial with the same params and the user attributes
  {"config": <number of the configuration's first trial>, "rung": k}: it resumes the
  configuration from its checkpoint up to rung k's budget, logging into the same MLflow run.
  A configuration is promoted from rung k when it ranks in the top 1/eta of the results at
  rung k (so at least eta results exist there) and was not promoted from it yet.

Every trial completes with the configuration's best validation accuracy so far. A free worker
takes a due promotion first (highest rung first), else starts a new configuration while fewer
than study.n_trials exist. The study is done when study.n_trials configurations finished their
first segment and no promotion is due, waiting or running.

Everything here is a pure function of the study's trials: the worker and the objective act on
what it decides, and the decisions are unit-tested without training.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from study.core.errors import ConfigError
from study.core.names import CONFIG_ATTR, NOT_NEEDED_ATTR, RUNG_ATTR

DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
ACTIVE_STATES = (TrialState.WAITING, TrialState.RUNNING)
UNITS = ("epochs", "steps")


@dataclass(frozen=True)
class Ladder:
    """The rungs: `budgets[k]` is the resource (epochs or steps) trained at the end of rung k."""

    budgets: tuple[int, ...]
    reduction_factor: int = 3
    unit: str = "epochs"
    brackets: int = 1

    @property
    def top(self) -> int:
        return len(self.budgets) - 1

    def segment(self, rung: int, first: bool) -> tuple[int, int]:
        """(start, stop) resource of a trial that trains up to `rung`."""
        start = 0 if first else self.budgets[rung - 1]
        return start, self.budgets[rung]


def rung_budgets(min_resource: int, max_resource: int, reduction_factor: int) -> tuple[int, ...]:
    """min x eta^k for k = 0, 1, ..., then max_resource as the top rung.

    The number of promotions is log_eta(max / min) rounded to the nearest integer (at least one
    when max > min), so the top rung always trains the full budget: 1..9 epochs with eta 3
    gives 1, 3, 9; 1..10 gives 1, 3, 10; 1..2 gives 1, 2.
    """
    if max_resource <= min_resource:
        return (max_resource,)
    promotions = max(1, math.floor(math.log(max_resource / min_resource, reduction_factor) + 0.5 + 1e-9))
    return (*(min_resource * reduction_factor**k for k in range(promotions)), max_resource)


def rungs_down_from(max_resource: int, reduction_factor: int, lowest: float) -> tuple[int, ...]:
    """max / eta^k for k = n, ..., 1, 0, rounded: n promotions, as many as keep the first rung at
    `lowest` or above (at least one while the first rung stays >= 1).

    scheduler.min_resource=auto with resource_unit=steps: `lowest` is an epoch / eta, so 9
    epochs of 550 steps with eta 3 give 183, 550, 1650, 4950 (a first rung of a third of an
    epoch, the others at epoch ends, as Keras Tuner's Hyperband's 1, 3, 9 epochs).
    """
    if max_resource < reduction_factor:
        return (max_resource,)
    ratio = math.log(max_resource / lowest, reduction_factor) if max_resource > lowest else 0.0
    most = math.floor(math.log(max_resource, reduction_factor) + 1e-9)  # first rung >= 1
    promotions = min(most, max(1, math.floor(ratio + 1e-9)))
    return tuple(round(max_resource / reduction_factor**k) for k in range(promotions, -1, -1))


def build_ladder(scheduler_cfg: Any, trainer_cfg: Any, train_examples: int) -> Ladder:
    """The ladder of `scheduler=asha` for a train config; raises ConfigError on bad values.

    max_resource defaults to trainer.epochs, or for resource_unit=steps to trainer.max_steps
    (else trainer.epochs full epochs of the training set, in steps). min_resource=auto is one
    epoch, or with resource_unit=steps the rungs of `rungs_down_from`: a first rung of about
    1/eta of an epoch, which screens eta configurations for the price of one epoch.
    """
    cfg = scheduler_cfg
    steps_per_epoch = math.ceil(train_examples / trainer_cfg.batch_size)
    max_resource = cfg.max_resource
    if max_resource is None:
        if cfg.resource_unit == "epochs":
            max_resource = trainer_cfg.epochs
        elif trainer_cfg.max_steps is not None:
            max_resource = trainer_cfg.max_steps
        else:
            max_resource = trainer_cfg.epochs * steps_per_epoch
    eta = cfg.reduction_factor
    if cfg.min_resource == "auto" and cfg.resource_unit == "steps":
        budgets = rungs_down_from(max_resource, eta, lowest=steps_per_epoch / eta)
    else:
        min_resource = 1 if cfg.min_resource == "auto" else cfg.min_resource
        if max_resource < min_resource:
            raise ConfigError(
                f"scheduler.max_resource: expected >= scheduler.min_resource ({min_resource} "
                f"{cfg.resource_unit}), got {max_resource} (it defaults to trainer.epochs)"
            )
        budgets = rung_budgets(min_resource, max_resource, eta)
    return checked_ladder(Ladder(budgets, eta, cfg.resource_unit, cfg.brackets), trainer_cfg)


def checked_ladder(ladder: Ladder, trainer_cfg: Any) -> Ladder:
    if ladder.unit == "epochs" and trainer_cfg.max_steps is not None:
        raise ConfigError(
            "trainer.max_steps: scheduler=asha with resource_unit=epochs trains whole epochs; "
            "leave trainer.max_steps null or set scheduler.resource_unit=steps"
        )
    if ladder.brackets > len(ladder.budgets):
        raise ConfigError(
            f"scheduler.brackets: expected at most the {len(ladder.budgets)} rungs "
            f"{list(ladder.budgets)}, got {ladder.brackets}"
        )
    return ladder


def ladder_for(settings: Any, base: Any) -> Ladder | None:
    """The ladder of a sweep config's scheduler; None for scheduler=none."""
    if settings.scheduler.name != "asha":
        return None
    examples = 0
    scheduler_cfg = settings.scheduler
    first_rung_from_epoch = scheduler_cfg.resource_unit == "steps" and scheduler_cfg.min_resource == "auto"
    if first_rung_from_epoch or (scheduler_cfg.max_resource is None and base.trainer.max_steps is None):
        from study.training.data import (
            load_dataset,  # cached per process; the driver and workers load it anyway
        )

        examples = len(load_dataset(base.data, base.trainer.seed).x_train)
    return build_ladder(scheduler_cfg, base.trainer, examples)


def surplus_configuration(
    trial: FrozenTrial, trials: Iterable[FrozenTrial], n_trials: int, what: str = "configurations"
) -> str | None:
    """Why a new configuration is not needed (n_trials done or started before it), or None;
    `what` names configurations in the reason ("trials" where each trial is one)."""
    if is_promotion(trial):
        return None
    done, earlier = 0, 0
    for other in first_segments(trials):
        if other.state in DONE_STATES:
            done += 1
        elif other.state == TrialState.RUNNING and other.number < trial.number:
            earlier += 1
    if done + earlier >= n_trials:
        return f"{done} {what} done and {earlier} running reach study.n_trials"
    return None


# --- what a trial is ----------------------------------------------------------------------------


def is_promotion(trial: FrozenTrial) -> bool:
    return CONFIG_ATTR in trial.user_attrs


def config_of(trial: FrozenTrial) -> int:
    """The configuration a trial trains: the number of the configuration's first trial."""
    return int(trial.user_attrs.get(CONFIG_ATTR, trial.number))


def rung_of(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get(RUNG_ATTR, 0))


def was_needed(trial: FrozenTrial) -> bool:
    """Not a trial that ended at once because another one did its work or the study had its
    trials (it never trained: no failure, no configuration, no leaderboard row)."""
    return not trial.user_attrs.get(NOT_NEEDED_ATTR, False)


def first_segments(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    return [trial for trial in trials if not is_promotion(trial) and was_needed(trial)]


def rung_budget(trials: Iterable[FrozenTrial], rung: int) -> int | None:
    """The epochs (or steps) a configuration has trained at the end of `rung`, as its complete
    trials there reported them: every segment validates at its rung's end."""
    return max(
        (
            max(trial.intermediate_values, default=0)
            for trial in trials
            if trial.state == TrialState.COMPLETE and rung_of(trial) == rung and was_needed(trial)
        ),
        default=None,
    )


def epochs_trained(trials: Iterable[FrozenTrial]) -> dict[int, int]:
    """{trial number: the epochs its configuration trained by the trial's end}.

    A promotion resumes from its configuration's checkpoint and reports only its own segment's
    epochs, so its own count says too little: this counts every epoch the configuration's trials
    reported up to the trial's rung, each once (a retry may report the killed attempt's again).
    Without scheduler=asha, the trial's own epochs. With resource_unit=steps, its validations:
    the epoch ends and the ends of rungs that stop mid-epoch.
    """
    trials = [trial for trial in trials if was_needed(trial)]
    by_config: dict[int, list[FrozenTrial]] = {}
    for trial in trials:
        by_config.setdefault(config_of(trial), []).append(trial)
    trained = {}
    for trial in trials:
        segments = [other for other in by_config[config_of(trial)] if _before(other, trial)]
        trained[trial.number] = len({step for other in segments for step in other.intermediate_values})
    return trained


def _before(other: FrozenTrial, trial: FrozenTrial) -> bool:
    """`other` trained its configuration before `trial` ended: a lower rung, or an earlier attempt
    at the same rung (a retry resumes where the killed attempt's last checkpoint left it)."""
    return (rung_of(other), other.number) <= (rung_of(trial), trial.number)


def configurations_done(trials: Iterable[FrozenTrial]) -> int:
    """Configurations that finished their first segment: what study.n_trials counts."""
    return sum(1 for trial in first_segments(trials) if trial.state in DONE_STATES)


# --- decisions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Promotion:
    """Continue configuration `config` (params `params`) up to rung `rung`."""

    config: int
    rung: int
    params: dict[str, Any]

    @property
    def user_attrs(self) -> dict[str, int]:
        return {CONFIG_ATTR: self.config, RUNG_ATTR: self.rung}


def rung_results(trials: Iterable[FrozenTrial]) -> dict[int, dict[int, float]]:
    """{rung: {config: value}} of the segments that completed."""
    results: dict[int, dict[int, float]] = {}
    for trial in trials:
        if trial.state == TrialState.COMPLETE and trial.value is not None and was_needed(trial):
            results.setdefault(rung_of(trial), {})[config_of(trial)] = trial.value
    return results


def next_promotion(trials: Sequence[FrozenTrial], ladder: Ladder) -> Promotion | None:
    """The promotion due now, or None: the best candidate of the highest rung that has one.

    A configuration is a candidate at rung k < top when it is among the floor(n / eta) best of
    the n results of its bracket at rung k, and no trial for it at rung k + 1 exists yet (in
    any state: a failed promotion is not promoted again, a killed one is retried by the storage).
    """
    taken = {(config_of(t), rung_of(t)) for t in trials if is_promotion(t)}
    first = {trial.number: trial for trial in first_segments(trials)}
    by_bracket: dict[tuple[int, int], list[tuple[float, int]]] = {}
    for rung, results in rung_results(trials).items():
        for config, value in results.items():
            if config in first:
                by_bracket.setdefault((rung_of(first[config]), rung), []).append((value, config))
    candidates = []
    for (_, rung), results in by_bracket.items():
        if rung >= ladder.top:
            continue
        ranked = sorted(results, key=lambda result: (-result[0], result[1]))
        for value, config in ranked[: len(ranked) // ladder.reduction_factor]:
            if (config, rung + 1) not in taken:
                candidates.append((rung, value, -config))
    if not candidates:
        return None
    rung, _, config = max(candidates)
    return Promotion(-config, rung + 1, dict(first[-config].params))


def promotions_in_flight(trials: Iterable[FrozenTrial]) -> int:
    return sum(1 for t in trials if is_promotion(t) and t.state in ACTIVE_STATES and was_needed(t))


def is_done(trials: Sequence[FrozenTrial], n_trials: int, ladder: Ladder | None) -> bool:
    """n_trials configurations finished their first segment; no promotion due, waiting or running.
    Without a ladder (no scheduler) every trial is a configuration of one segment."""
    if configurations_done(trials) < n_trials:
        return False
    return ladder is None or (promotions_in_flight(trials) == 0 and next_promotion(trials, ladder) is None)


def may_start_configuration(trials: Iterable[FrozenTrial], n_trials: int) -> bool:
    """Fewer than n_trials configurations are done or on their way."""
    started = sum(1 for trial in first_segments(trials) if trial.state in (*DONE_STATES, *ACTIVE_STATES))
    return started < n_trials


def duplicate_of(trial: FrozenTrial, trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    """An earlier trial doing the same promotion, if any: then `trial` is not needed.

    Two workers may both see a promotion due and both enqueue it. The lowest-numbered live one
    (waiting, running or complete) does the work; any other ends at once. A complete one wins
    whatever its number.
    """
    if not is_promotion(trial):
        return None
    key = (config_of(trial), rung_of(trial))
    for other in trials:
        if other.number == trial.number or not is_promotion(other) or not was_needed(other):
            continue
        if (config_of(other), rung_of(other)) != key:
            continue
        earlier_and_live = other.state in ACTIVE_STATES and other.number < trial.number
        if other.state == TrialState.COMPLETE or earlier_and_live:
            return other
    return None


def bracket_for(index: int, ladder: Ladder) -> int:
    """The first rung of the `index`-th configuration: Hyperband's brackets over ASHA.

    Bracket b starts at rung b. As in Hyperband, an aggressive bracket gets more configurations:
    n_b = ceil((S + 1) / (S - b + 1) * eta^(S - b)) for S = top rung, spread evenly over
    consecutive configurations (smooth weighted round robin), so it needs no shared state.
    """
    if ladder.brackets <= 1:
        return 0
    top = ladder.top
    eta = ladder.reduction_factor
    weights = [math.ceil((top + 1) / (top - b + 1) * eta ** (top - b)) for b in range(ladder.brackets)]
    credit = [0] * len(weights)
    chosen = 0
    for _ in range(index % sum(weights) + 1):
        credit = [c + w for c, w in zip(credit, weights, strict=True)]
        chosen = max(range(len(credit)), key=lambda b: (credit[b], -b))
        credit[chosen] -= sum(weights)
    return chosen


def first_rung(trial: FrozenTrial, trials: Iterable[FrozenTrial], ladder: Ladder) -> int:
    """The rung a new configuration trains up to: its bracket's first rung.

    A retried first segment keeps the rung of the trial it retries (Optuna copies user attrs).
    """
    if RUNG_ATTR in trial.user_attrs:
        return rung_of(trial)
    earlier = sum(1 for other in first_segments(trials) if other.number < trial.number)
    return bracket_for(earlier, ladder)


# --- ranking ------------------------------------------------------------------------------------


def sampler_view(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials a model-based sampler learns from: one per configuration, valued by how far
    ASHA took it, plus the first segments still running (a constant-liar sampler keeps away).

    A configuration is its first segment, valued at the promotions it earned plus its value at
    the highest rung it completed (values are validation accuracies, in [0, 1]): configurations
    rank as on the leaderboard, the way Optuna's TPE ranks pruned trials by the step they
    reached, then their value. Learning from one rung's trials only (BOHB's rule) shows the
    sampler a population ASHA already selected: TPE then finds its "bad" group where the good
    configurations are, and samples the corners nobody tried (measured: learning rates of 0.3
    to 0.9 with dropout 0.65 on MNIST, after rung 1 had five results).
    """
    reached: dict[int, tuple[int, float]] = {}  # config -> (highest rung completed, value there)
    for rung, results in sorted(rung_results(trials).items()):
        for config, value in results.items():
            reached[config] = (rung, value)
    view = []
    for trial in first_segments(trials):
        if trial.state == TrialState.RUNNING:
            view.append(trial)
        elif trial.number in reached:
            rung, value = reached[trial.number]
            valued = copy.copy(trial)
            valued.value = rung - rung_of(trial) + value
            view.append(valued)
    return view
