"""The lines a study ends with: what won, by how much over the runner-up and over the
baseline, and the commands to look further."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState

from study.core.masking import mask_secrets
from study.core.names import (
    BASELINE_ATTR,
    BEST_MODEL_TAG,
    BEST_RUN_TAG,
    BEST_TEST_METRIC,
    DEFAULT_TRACKING_URI,
    EXPERIMENT_ID_KEY,
    METRIC,
    RUNG_ATTR,
    SERVING_INPUT_KEY,
    SERVING_URI_KEY,
)
from study.reporting.leaderboard import describe_config, trial_config
from study.reporting.noise import noise_lines
from study.search.asha import config_of, rung_budget, was_needed
from study.search.ranking import leaderboard_key, margin_over, ranked_configurations, trial_score


def final_summary(
    study,
    settings,
    tracking_uri: str,
    study_dir: Path,
    summary: Mapping,
    targets: Mapping[str, str],
    command: Sequence[str] = (),
) -> str:
    """What won, by how much over the runner-up and over the baseline, how much of that is
    noise (`command`, the study's own, is printed with the keys that settle it), and the
    commands to look further."""
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
            lines.append(_margin_line(trials, best, complete[1], "the runner-up", settings))
        lines.extend(noise_lines(trials, complete, tracking_uri, command))  # is the lead more than noise
        lines.extend(_baseline_lines(trials, best, settings))
    uri = mask_secrets(tracking_uri)
    uri_option = "" if uri == DEFAULT_TRACKING_URI else f" --tracking-uri {uri}"
    local_store = not uri.startswith(("http://", "https://"))  # a file or a database: `mlflow ui` opens it
    looks = [
        ("leaderboard, plots", f"{study_dir}/leaderboard.csv, {study_dir}/plots/"),
        *_mlflow_ui(uri, local_store, summary.get(EXPERIMENT_ID_KEY)),
        ("table", f"python -m study.report --study {name}{uri_option}"),
    ]
    run_id = summary.get(BEST_RUN_TAG)
    if run_id:
        looks.append(("replay the winner", f"python -m study.reproduce {run_id}{uri_option}"))
    model_uri = summary.get(SERVING_URI_KEY) or summary.get(BEST_MODEL_TAG)  # models:/NAME@champion
    if model_uri:
        serve = f"mlflow models serve -m {model_uri} --env-manager local -p 5001 --host 127.0.0.1"
        looks.append(("serve the winner", f"MLFLOW_TRACKING_URI={uri} {serve}"))
    if model_uri and summary.get(SERVING_INPUT_KEY):  # raw test images, as the served model takes them
        request = f"-H 'Content-Type: application/json' -d @{summary[SERVING_INPUT_KEY]}"
        looks.append(("ask it", f"curl -s http://127.0.0.1:5001/invocations {request}"))
    looks.append(("TensorBoard", f"tensorboard --logdir {study_dir / 'tensorboard'}"))
    looks.append(
        (
            "Optuna dashboard",
            f'optuna-dashboard {mask_secrets(settings.study.storage)}  # after pip install -e ".[dashboard]"',
        )
    )
    lines.append("look further:")
    width = max(len(label) for label, _ in looks)
    lines.extend(f"  {label:<{width}}  {command}" for label, command in looks)
    return "\n".join(lines)


def _mlflow_ui(uri: str, local_store: bool, experiment_id: str | None) -> list[tuple[str, str]]:
    """How to open the study's experiment: a command, then an address, each on a line of its own
    (a line is copied whole). MLflow 3.17's UI shows an experiment's GenAI pages (traces,
    prompts) unless the address asks for its model-training view: runs and metrics."""
    page = f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning" if experiment_id else ""
    if not local_store:
        return [("MLflow UI", f"{uri.rstrip('/')}{page}")]
    command = ("MLflow UI", f"mlflow ui --backend-store-uri {uri}")
    return [command, ("then open", f"http://127.0.0.1:5000{page}")] if page else [command]


def _baseline_lines(trials: list[FrozenTrial], best: FrozenTrial, settings) -> list[str]:
    # A retried baseline is tagged too (Optuna's retry copies the attribute): the furthest one.
    baselines = [t for t in trials if t.user_attrs.get(BASELINE_ATTR) and was_needed(t)]
    if not baselines:
        return []
    baseline = min(baselines, key=leaderboard_key)
    if config_of(baseline) == config_of(best):  # scheduler=asha: the winner may be its promotion
        return [f"  the baseline won (trial {best.number}, the base config): nothing searched beat it"]
    score = trial_score(baseline)
    if score is None:
        return [f"  the baseline, trial {baseline.number}, ended {baseline.state.name} without a score"]
    if RUNG_ATTR in best.user_attrs:  # scheduler=asha: at the highest budget both reached
        return [_margin_line(trials, best, baseline, "the baseline", settings)]
    pruned = (
        f", pruned at epoch {len(baseline.intermediate_values)}"
        if baseline.state == TrialState.PRUNED
        else ""
    )
    return [f"  {_lead_text(best.value - score)} the baseline, trial {baseline.number} ({score:.4f}{pruned})"]


def _margin_line(trials: list[FrozenTrial], best: FrozenTrial, other: FrozenTrial, who: str, settings) -> str:
    """The winner's lead over `who` (trial `other`'s configuration) at the same budget: with
    scheduler=asha the highest rung both completed, named with its epochs or steps, and the
    winner's own trial there when that is not the winning trial."""
    margin = margin_over(trials, best, other)
    if margin is None:
        return (
            f"  {who}, trial {other.number} ({other.value:.4f}), completed no rung the winner did "
            "(another bracket): no margin at the same budget"
        )
    text = _lead_text(margin.value)
    if margin.rung is None:  # every trial trained the same budget
        return f"  {text} {who}, trial {other.number} ({other.value:.4f})"
    there = (
        ""
        if margin.winner.number == best.number
        else f"; the winner there: trial {margin.winner.number}, {margin.winner.value:.4f}"
    )
    budget = _budget_text(trials, margin.rung, settings)
    return f"  {text} {who} at {budget} (trial {margin.other.number}, {margin.other.value:.4f}{there})"


def _budget_text(trials: list[FrozenTrial], rung: int, settings) -> str:
    """`3 epochs`, `1 epoch`, `550 steps`: what a configuration trained by the end of `rung`."""
    budget = rung_budget(trials, rung)
    if budget is None:
        return f"rung {rung}"
    unit = settings.scheduler.resource_unit  # epochs or steps
    return f"{budget} {unit.removesuffix('s') if budget == 1 else unit}"


def _lead_text(lead: float) -> str:
    """ "+0.0024 over", "tied with", or, after a confirmation chose the winner on its mean,
    "0.0012 under" (its single seed may score below another configuration's)."""
    return f"{lead:+.4f} over" if lead > 0 else ("tied with" if lead == 0 else f"{-lead:.4f} under")
