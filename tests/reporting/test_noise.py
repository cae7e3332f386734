"""The summary's lines about noise, on real Optuna trials and a real MLflow store (SQLite): a
lead within the noise is said, with the command that settles it; a clear lead is not."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from study.config.schema import CONFIG_DIR
from study.core.names import MLFLOW_RUN_ATTR, RUNG_ATTR, SEED_VARIANCE_PREFIX
from study.reporting.noise import confirm_command, noise_lines, study_command
from study.search.confirmation import Confirmation

LR = {"lr": FloatDistribution(1e-4, 1.0, log=True)}
COMMAND = ["python", "-m", "study.sweep", "data=digits", "study.confirm_top=5", "trainer.epochs=2"]
SETTLE = "python -m study.sweep data=digits trainer.epochs=2 study.confirm_top=2 study.confirm_seeds=3"


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("study", artifact_location=(tmp_path / "artifacts").as_uri())

    def trial(number: int, value: float, validation_size: int = 300, seed_std: float | None = None, **attrs):
        run = client.create_run(experiment)
        client.log_param(run.info.run_id, "data.validation_size", validation_size)
        if seed_std is not None:
            client.log_metric(run.info.run_id, f"{SEED_VARIANCE_PREFIX}best_val_accuracy.std", seed_std)
            client.log_metric(run.info.run_id, f"{SEED_VARIANCE_PREFIX}n_seeds", 3)
        user_attrs = {MLFLOW_RUN_ATTR: run.info.run_id, **attrs}
        made = create_trial(
            state=TrialState.COMPLETE,
            value=value,
            params={"lr": 0.01},
            distributions=LR,
            user_attrs=user_attrs,
        )
        made.number = number
        return made

    return uri, trial


def test_a_lead_within_the_standard_error_of_the_validation_set_is_said_with_its_command(store):
    uri, trial = store
    ranked = [trial(3, 0.9731), trial(5, 0.9727)]  # +0.0004; sqrt(0.9731 * 0.0269 / 300) = 0.0093
    lines = noise_lines(ranked, ranked, uri, COMMAND)
    assert lines == [
        "  the lead (+0.0004) is within the noise, the standard error of an accuracy on 300 validation "
        "examples (0.0093); settle it with",
        f"    {SETTLE}",
    ]


def test_a_clear_lead_says_nothing(store):
    uri, trial = store
    ranked = [trial(3, 0.9900, validation_size=5000), trial(5, 0.9500, validation_size=5000)]
    assert noise_lines(ranked, ranked, uri, COMMAND) == []


def test_a_seed_spread_that_study_reproduce_measured_counts_when_larger(store):
    uri, trial = store
    ranked = [trial(3, 0.9731, validation_size=5000), trial(5, 0.9700, validation_size=5000, seed_std=0.0055)]
    (line, command) = noise_lines(ranked, ranked, uri, COMMAND)
    assert "the std across 3 seeds that study.reproduce --seeds measured (0.0055)" in line
    assert command == f"    {SETTLE}"


def test_a_confirmation_gives_both_means_and_whether_the_lead_exceeds_their_standard_error(store):
    uri, trial = store
    winner = trial(3, 0.9720, **Confirmation(0.9731, 0.0021, 4).as_attrs())
    runner_up = trial(5, 0.9740, **Confirmation(0.9718, 0.0030, 4).as_attrs())
    assert noise_lines([winner, runner_up], [winner, runner_up], uri, COMMAND) == [
        "  winner mean 0.9731 ± 0.0021 over 4 seeds; runner-up 0.9718 ± 0.0030 over 4 seeds",
        "  the lead of the means (+0.0013) is within the noise (its standard error, 0.0018)",
    ]
    clear = trial(5, 0.9740, **Confirmation(0.9600, 0.0030, 4).as_attrs())
    assert "(+0.0131) exceeds the noise" in noise_lines([winner, clear], [winner, clear], uri, COMMAND)[1]


def test_the_command_is_the_studys_own_quoted_and_masked():
    command = study_command(CONFIG_DIR, "sweep", ["study.storage=postgresql://u:secret@db/optuna", "x='a b'"])
    assert command[:3] == ["python", "-m", "study.sweep"]
    settle = confirm_command(command)
    assert "secret" not in settle and "'x='\"'\"'a b'\"'\"''" in settle
    assert settle.endswith("study.confirm_top=2 study.confirm_seeds=3")
    elsewhere = study_command("/somewhere/conf", "experiment", [])
    assert elsewhere[3:] == ["--config-path", "/somewhere/conf", "--config-name", "experiment"]


def test_confirmed_means_at_two_budgets_are_not_compared(store):
    uri, trial = store  # scheduler=asha: the runner-up stopped at a lower rung
    winner = trial(7, 0.8733, **{RUNG_ATTR: 1}, **Confirmation(0.8733, 0.0, 2).as_attrs())
    runner_up = trial(1, 0.5200, **{RUNG_ATTR: 0}, **Confirmation(0.4883, 0.0448, 2).as_attrs())
    assert noise_lines([winner, runner_up], [winner, runner_up], uri, COMMAND) == [
        "  winner mean 0.8733 ± 0.0000 over 2 seeds; runner-up 0.4883 ± 0.0448 over 2 seeds, "
        "at a smaller budget: not compared"
    ]
