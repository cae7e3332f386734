"""How much of a study's lead is noise: the lines the end summary adds about it.

A trial's val_accuracy comes from one seed (which also draws the validation split) and a
validation set of a few hundred or thousand examples: a lead of +0.0004 can be far smaller than
the spread of one configuration across seeds. After a confirmation (study.confirm_top) the
summary gives each side's mean and std over seeds and says whether the lead of the means
exceeds their standard error. Without one, when the lead is within the noise the store can tell
(a seed spread that `study.reproduce --seeds` logged on either run, else the binomial standard
error of an accuracy on the validation set), it says so and prints the command that settles it:
the study's own command with the confirmation keys, which resumes the finished study and only
confirms.
"""

from __future__ import annotations

import logging
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from optuna.trial import FrozenTrial

from study.config.schema import CONFIG_DIR
from study.core.masking import mask_secrets
from study.core.names import MLFLOW_RUN_ATTR, SEED_VARIANCE_PREFIX
from study.search.asha import rung_of
from study.search.confirmation import Confirmation
from study.search.ranking import margin_over

log = logging.getLogger(__name__)

CONFIRM_KEYS = ("study.confirm_top=", "study.confirm_seeds=")
SUGGESTED_TOP, SUGGESTED_SEEDS = 2, 3  # the winner and the runner-up, each with 3 more seeds
SEED_STD_METRIC = f"{SEED_VARIANCE_PREFIX}best_val_accuracy.std"
SEED_COUNT_METRIC = f"{SEED_VARIANCE_PREFIX}n_seeds"
VALIDATION_SIZE_PARAM = "data.validation_size"


@dataclass(frozen=True)
class Noise:
    """How far apart two scores of one configuration may fall by chance, and what says so."""

    value: float
    source: str


def noise_lines(
    trials: Sequence[FrozenTrial], ranked: Sequence[FrozenTrial], tracking_uri: str, command: Sequence[str]
) -> list[str]:
    """The summary's lines about noise: the confirmation's means, or, for a lead within the
    noise, one line that says so and the command that settles it; none for a clear lead."""
    if not ranked:
        return []
    best, runner_up = ranked[0], ranked[1] if len(ranked) > 1 else None
    if Confirmation.of(best) is not None:
        return confirmed_lines(best, runner_up)
    margin = margin_over(trials, best, runner_up) if runner_up is not None else None
    if margin is None or margin.value is None:
        return []
    noise = measured_noise(tracking_uri, [margin.winner, margin.other], margin.winner.value)
    if noise is None or margin.value > noise.value:
        return []
    return [
        f"  the lead ({margin.value:+.4f}) is within the noise, {noise.source}; settle it with",
        f"    {confirm_command(command)}",
    ]


def confirmed_lines(best: FrozenTrial, runner_up: FrozenTrial | None) -> list[str]:
    """Each side's mean and std over its seeds, and whether the lead of the means exceeds
    their standard error (the noise left in a difference of two means)."""
    winner = Confirmation.of(best)
    text = f"  winner mean {winner.mean:.4f} ± {winner.std:.4f} over {winner.seeds} seeds"
    other = Confirmation.of(runner_up) if runner_up is not None else None
    if runner_up is None:
        return [text]
    if other is None:
        return [f"{text}; the runner-up, trial {runner_up.number}, is not confirmed"]
    lines = [f"{text}; runner-up {other.mean:.4f} ± {other.std:.4f} over {other.seeds} seeds"]
    if rung_of(runner_up) != rung_of(best):  # scheduler=asha: means at two budgets do not compare
        return [f"{lines[0]}, at a smaller budget: not compared"]
    lead = winner.mean - other.mean
    error = math.sqrt(winner.std**2 / winner.seeds + other.std**2 / other.seeds)
    verdict = "exceeds" if lead > error else "is within"
    lines.append(
        f"  the lead of the means ({lead:+.4f}) {verdict} the noise (its standard error, {error:.4f})"
    )
    return lines


def measured_noise(tracking_uri: str, trials: Sequence[FrozenTrial], accuracy: float) -> Noise | None:
    """The larger noise the runs of `trials` tell: a seed spread logged by `study.reproduce
    --seeds`, or the binomial standard error of `accuracy` on their validation set. None when
    the store cannot tell (no run, a store out of reach: the summary goes on without it)."""
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        run_ids = [
            trial.user_attrs[MLFLOW_RUN_ATTR] for trial in trials if MLFLOW_RUN_ATTR in trial.user_attrs
        ]
        runs = [client.get_run(run_id) for run_id in run_ids]
    except Exception as error:  # the summary's last lines must not fail the study's end
        log.warning("noise of the lead not measured: %s", error)
        return None
    found = []
    for run in runs:
        metrics, params = run.data.metrics, run.data.params
        if SEED_STD_METRIC in metrics:
            seeds = int(metrics.get(SEED_COUNT_METRIC, 0))
            source = f"the std across {seeds} seeds that study.reproduce --seeds measured"
            found.append(Noise(metrics[SEED_STD_METRIC], source))
        if params.get(VALIDATION_SIZE_PARAM, "").isdigit():
            size = int(params[VALIDATION_SIZE_PARAM])
            error = math.sqrt(accuracy * (1 - accuracy) / size)
            found.append(Noise(error, f"the standard error of an accuracy on {size} validation examples"))
    noise = max(found, key=lambda noise: noise.value, default=None)
    return None if noise is None else Noise(noise.value, f"{noise.source} ({noise.value:.4f})")


def study_command(config_dir: str | Path, config_name: str, overrides: Sequence[str]) -> list[str]:
    """The command that ran the study, word by word: run again, it resumes the study."""
    words = ["python", "-m", "study.sweep"]
    if Path(config_dir).resolve() != Path(CONFIG_DIR).resolve():
        words += ["--config-path", str(config_dir)]
    if config_name != "sweep":
        words += ["--config-name", config_name]
    return [*words, *overrides]


def confirm_command(command: Sequence[str]) -> str:
    """The study's command with the confirmation keys (replacing any it had): a finished study
    run with it goes straight to its end, and confirms its best configurations there."""
    kept = [word for word in command or study_command(CONFIG_DIR, "sweep", []) if not is_confirm_key(word)]
    words = [*kept, f"study.confirm_top={SUGGESTED_TOP}", f"study.confirm_seeds={SUGGESTED_SEEDS}"]
    return " ".join(shlex.quote(mask_secrets(word)) for word in words)


def is_confirm_key(word: str) -> bool:
    return word.lstrip("+").startswith(CONFIRM_KEYS)
