"""The lines a study ends with: what won, by how much over the runner-up and over the
baseline, and the commands to look further."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState

from study.core.masking import mask_secrets
from study.core.names import (
    BASELINE_ATTR,
    BEST_MODEL_TAG,
    BEST_RUN_TAG,
    BEST_TEST_METRIC,
    DEFAULT_TRACKING_URI,
    METRIC,
)
from study.reporting.leaderboard import describe_config, trial_config
from study.search.ranking import ranked_configurations, trial_score


def final_summary(
    study,
    settings,
    tracking_uri: str,
    study_dir: Path,
    summary: Mapping,
    targets: Mapping[str, str],
) -> str:
    """What won, by how much over the runner-up and over the baseline, and the commands to
    look further."""
    trials = study.get_trials(deepcopy=False)
    name = settings.study.name
    lines = [""]
    complete = ranked_configurations(trials)  # scheduler=asha: a configuration once, at its best
    if not complete:
        lines.append(f"study {name}: no trial completed, so nothing won")
    else:
        best = complete[0]
        test = summary.get(BEST_TEST_METRIC)
        test_text = f", test_accuracy {test:.4f}" if test is not None else ""
        lines.append(f"winner: trial {best.number}, {METRIC} {best.value:.4f}{test_text}")
        lines.append(f"  {describe_config(trial_config(best, targets))}")
        if len(complete) > 1:
            runner_up = complete[1]
            margin = best.value - runner_up.value
            lead = f"{margin:+.4f} over" if margin > 0 else "tied with"
            lines.append(f"  {lead} the runner-up, trial {runner_up.number} ({runner_up.value:.4f})")
        lines.extend(_baseline_lines(trials, best))
    uri = mask_secrets(tracking_uri)
    uri_option = "" if uri == DEFAULT_TRACKING_URI else f" --tracking-uri {uri}"
    local_store = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    looks = [
        ("leaderboard, plots", f"{study_dir}/leaderboard.csv, {study_dir}/plots/"),
        ("MLflow UI", f"mlflow ui --backend-store-uri {uri}" if local_store else uri),
        ("table", f"python -m study.report --study {name}{uri_option}"),
    ]
    run_id = summary.get(BEST_RUN_TAG)
    if run_id:
        looks.append(("replay the winner", f"python -m study.reproduce {run_id}{uri_option}"))
    model_uri = summary.get(BEST_MODEL_TAG)
    if model_uri:
        looks.append(
            (
                "serve the winner",
                f"MLFLOW_TRACKING_URI={uri} mlflow models serve -m {model_uri} --env-manager local -p 5001",
            )
        )
    looks.append(("TensorBoard", f"tensorboard --logdir {study_dir / 'tensorboard'}"))
    looks.append(
        (
            "Optuna dashboard",
            f'optuna-dashboard {mask_secrets(settings.study.storage)}  (pip install -e ".[dashboard]")',
        )
    )
    lines.append("look further:")
    width = max(len(label) for label, _ in looks)
    lines.extend(f"  {label:<{width}}  {command}" for label, command in looks)
    return "\n".join(lines)


def _baseline_lines(trials: list[FrozenTrial], best: FrozenTrial) -> list[str]:
    baseline = next((t for t in trials if t.user_attrs.get(BASELINE_ATTR)), None)
    if baseline is None:
        return []
    if baseline.number == best.number:
        return [f"  the baseline won (trial {baseline.number}, the base config): nothing searched beat it"]
    score = trial_score(baseline)
    if score is None:
        return [f"  the baseline, trial {baseline.number}, ended {baseline.state.name} without a score"]
    pruned = (
        f", pruned at epoch {len(baseline.intermediate_values)}"
        if baseline.state == TrialState.PRUNED
        else ""
    )
    return [f"  {best.value - score:+.4f} over the baseline, trial {baseline.number} ({score:.4f}{pruned})"]
