"""The winner is registered and crowned once per study, however many drivers finish it."""

from __future__ import annotations

from mlflow import MlflowClient


def test_drivers_finishing_one_study_together_register_its_winner_once(tmp_path):
    """Two drivers that share a study see it done at the same moment and each register the
    winner. Here the other driver registered it a moment ago and has not tagged the run yet:
    this driver's version is dropped and both name the first one."""
    import keras
    import numpy as np

    from study.core.names import CHECKPOINT_TAG, MODEL_URI_TAG
    from study.reporting.winner import log_winner_model
    from study.tracking.lineage import log_keras_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("winners", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment_id).info.run_id
    client.set_terminated(run_id)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    images = np.random.default_rng(0).random((8, 4), dtype=np.float32)

    def versions() -> list[str]:
        return sorted(str(version.version) for version in client.search_model_versions("name = 'winner'"))

    log_keras_model(uri, run_id, model, images, "winner", {CHECKPOINT_TAG: "aaa"})  # the other driver
    assert log_winner_model(client, run_id, model, "aaa", images, "winner") == ("models:/winner/1", False)
    assert versions() == ["1"]
    assert client.get_run(run_id).data.tags[MODEL_URI_TAG] == "models:/winner/1"
    logged = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert len(logged) == 1  # this driver's copy is gone with its version

    # A resumed study whose winner and checkpoint did not change logs nothing new.
    assert log_winner_model(client, run_id, model, "aaa", images, "winner") == ("models:/winner/1", False)
    # A promotion improved the winner's checkpoint: a new version, this driver's to describe.
    assert log_winner_model(client, run_id, model, "bbb", images, "winner") == ("models:/winner/3", True)
    assert versions() == ["1", "3"]
    assert client.get_model_version("winner", "3").tags[CHECKPOINT_TAG] == "bbb"


def test_one_winner_per_study_when_a_resumed_study_crowns_another_trial(tmp_path):
    from study.core.names import BEST_RUN_TAG, WINNER_TAG
    from study.reporting.winner import crown

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("winners", artifact_location=(tmp_path / "artifacts").as_uri())
    parent, first, second = (client.create_run(experiment_id).info.run_id for _ in range(3))

    crown(client, parent, first)
    client.set_tag(parent, BEST_RUN_TAG, first)  # what the first session's finish leaves
    crown(client, parent, second)  # a resumed session: another trial won
    crown(client, parent, second)  # a second driver of that session: the tag is gone already

    winners = client.search_runs([experiment_id], filter_string=f"tags.`{WINNER_TAG}` = 'true'")
    assert [run.info.run_id for run in winners] == [second]
