"""The search layer decides and never acts: what to sample (`space`, `samplers`), what to stop
(`pruners`), what to promote (`asha`), whether the study is done (`budget`) and which trial is
best (`ranking`). Each decision is a pure function of the stored trials, so every process that
reads the same study decides the same."""

from study.search.asha import Ladder, ladder_for
from study.search.budget import DONE, TIMEOUT, TOO_MANY_FAILURES, Budget, TrialCounts, Verdict, count_trials
from study.search.pruners import build_pruner
from study.search.ranking import best_trial, ranked_configurations, trial_score
from study.search.samplers import build_sampler, for_scheduler
from study.search.space import SearchSpace

__all__ = [
    "DONE",
    "TIMEOUT",
    "TOO_MANY_FAILURES",
    "Budget",
    "Ladder",
    "SearchSpace",
    "TrialCounts",
    "Verdict",
    "best_trial",
    "build_pruner",
    "build_sampler",
    "count_trials",
    "for_scheduler",
    "ladder_for",
    "ranked_configurations",
    "trial_score",
]
