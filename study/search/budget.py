"""The one rule that says whether a study is done, whether this session should stop, and
whether a trial is needed: `Budget`, built once per process from the settings.

The driver's progress loop, every worker before each trial and the driver's final check all
ask `Budget.judge`, and every trial asks `Budget.surplus` when it starts, so they never
disagree. Every failed trial of this session counts against
`study.max_failed_trials`, whatever raised and where (a config error, an MLflow store that
cannot be written, a dead worker), except a trial that ended at once because the study no
longer needed it.

With scheduler=asha (`ladder` given), study.n_trials counts configurations, not trials: the
study is done when that many finished their first segment and no promotion is due, waiting or
running (study/search/asha.py), and a worker may start a trial while a promotion is due, a trial
waits, or configurations are missing.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass

from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from study.search import asha


@dataclass(frozen=True)
class TrialCounts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def done(self) -> int:
        """Trials that count towards study.n_trials."""
        return self.complete + self.pruned


def count_trials(trials: list[FrozenTrial]) -> TrialCounts:
    states = collections.Counter(trial.state for trial in trials)
    return TrialCounts(
        complete=states[TrialState.COMPLETE],
        pruned=states[TrialState.PRUNED],
        failed=states[TrialState.FAIL],
        running=states[TrialState.RUNNING],
        waiting=states[TrialState.WAITING],
    )


# Why a session stops; None while it goes on.
DONE = "done"
TOO_MANY_FAILURES = "too many failures"
TIMEOUT = "timeout"


@dataclass(frozen=True)
class Verdict:
    counts: TrialCounts
    n_trials: int
    failed_this_session: int
    max_failed: int
    stop: str | None  # DONE, TOO_MANY_FAILURES, TIMEOUT or None
    configurations_done: int | None = None  # asha: configurations that finished their first segment
    work_left: bool | None = None  # asha: a promotion is due, a trial waits, configurations are missing
    promotion: asha.Promotion | None = None  # asha: the promotion due now

    @property
    def done(self) -> int:
        """What study.n_trials counts: complete and pruned trials, or with asha configurations."""
        return self.counts.done if self.configurations_done is None else self.configurations_done

    @property
    def may_start_trial(self) -> bool:
        """A new trial is wanted: the running ones alone cannot reach n_trials."""
        if self.work_left is not None:
            return self.stop is None and self.work_left
        return self.stop is None and self.counts.done + self.counts.running < self.n_trials

    def reason(self) -> str:
        if self.stop == TOO_MANY_FAILURES:
            return f"{self.failed_this_session} trials failed in this session (study.max_failed_trials)"
        if self.stop == TIMEOUT:
            return "study.timeout passed"
        return "the workers stopped (see logs/worker_N.log)"


def failed_in_session(trials: list[FrozenTrial], session_start: float) -> int:
    """Failed trials that started in this session; "not needed" trials are no failures."""
    return sum(
        1
        for trial in trials
        if trial.state == TrialState.FAIL
        and asha.was_needed(trial)
        and trial.datetime_start is not None
        and trial.datetime_start.timestamp() >= session_start
    )


@dataclass(frozen=True)
class Budget:
    """The study's budget as one process sees it, built once: whether the study is done, whether
    this process may start a trial, and whether a trial it just started is needed."""

    n_trials: int
    max_failed: int
    session_start: float  # time.time() when the session began: failures count from it
    deadline: float | None = None  # time.time() after which no new trial starts
    ladder: asha.Ladder | None = None  # scheduler=asha: its rungs

    @classmethod
    def of(
        cls,
        settings: DictConfig,
        session_start: float,
        deadline: float | None,
        ladder: asha.Ladder | None = None,
    ) -> Budget:
        limit = settings.study.max_failed_trials
        n_trials = settings.study.n_trials
        return cls(n_trials, n_trials if limit is None else limit, session_start, deadline, ladder)

    def judge(self, trials: list[FrozenTrial], now: float | None = None) -> Verdict:
        """Where the study and this session stand, from one fetch of the trials."""
        now = time.time() if now is None else now
        counts = count_trials(trials)
        failed = failed_in_session(trials, self.session_start)
        asha_state: dict = {}
        if self.ladder is not None:
            promotion = asha.next_promotion(trials, self.ladder)
            missing = asha.may_start_configuration(trials, self.n_trials)
            asha_state = {
                "configurations_done": asha.configurations_done(trials),
                "work_left": promotion is not None or counts.waiting > 0 or missing,
                "promotion": promotion,
            }
        stop = None
        if asha.is_done(trials, self.n_trials, self.ladder):
            stop = DONE
        elif failed >= self.max_failed:
            stop = TOO_MANY_FAILURES
        elif self.deadline is not None and now >= self.deadline:
            stop = TIMEOUT
        return Verdict(counts, self.n_trials, failed, self.max_failed, stop, **asha_state)

    def surplus(self, trial: FrozenTrial, trials: list[FrozenTrial]) -> str | None:
        """Why `trial` is not needed, or None. Workers race for the last places: a configuration
        beyond n_trials (done or started before it) is not needed, and with scheduler=asha
        neither is a promotion another trial already does. A study without ASHA is ASHA with one
        rung: each trial is a configuration of its own."""
        if self.ladder is not None:
            duplicate = asha.duplicate_of(trial, trials)
            if duplicate is not None:
                return f"trial {duplicate.number} does the same promotion"
        what = "configurations" if self.ladder is not None else "trials"
        return asha.surplus_configuration(trial, trials, self.n_trials, what)
