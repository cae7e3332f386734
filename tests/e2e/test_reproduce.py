"""study.reproduce: identical metrics on CPU, refusals for changed data or software, seed variance."""

from __future__ import annotations

import gzip
import shutil

import pytest
from mlflow import MlflowClient

from study import reproduce
from study.training.data_files import IDX_FILES
from study.training.run import train
from tests.helpers import TINY_MODEL_OVERRIDES, TINY_VALIDATION, compose_config, run_command


@pytest.fixture(scope="module")
def original(tmp_path_factory, tiny_idx_dir):
    """A finished run on its own copy of the data, which the tests below may tamper with."""
    root = tmp_path_factory.mktemp("reproduce")
    data = root / "data"
    shutil.copytree(tiny_idx_dir, data)
    overrides = [
        f"runs_dir={root / 'runs'}",
        f"data.path={data}",
        f"data.validation_size={TINY_VALIDATION}",
        "trainer.epochs=2",
        "trainer.batch_size=32",
        "trainer.verbose=0",
        *TINY_MODEL_OVERRIDES["mlp"],
    ]
    cfg = compose_config("train", overrides)
    train(cfg)
    uri = f"sqlite:///{root / 'runs'}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    return client, uri, run, data


def runs_tagged(client, key, value):
    experiment = client.get_experiment_by_name("study").experiment_id
    return client.search_runs([experiment], filter_string=f"tags.{key} = '{value}'")


def test_reproduction_matches_exactly_on_cpu(original, capsys, tmp_path, monkeypatch):
    client, uri, run, _ = original
    monkeypatch.chdir(tmp_path)  # where the command runs gets nothing: Hydra's folder goes under runs/
    assert reproduce.main([run.info.run_id, "--tracking-uri", uri]) == 0
    assert list(tmp_path.iterdir()) == []
    printed = capsys.readouterr().out
    assert "reproduced: largest difference 0" in printed
    assert "val_accuracy" in printed and "test_accuracy" in printed
    (copy,) = runs_tagged(client, "reproduction_of", run.info.run_id)
    assert copy.info.status == "FINISHED"
    assert copy.data.metrics["test_accuracy"] == run.data.metrics["test_accuracy"]
    assert client.get_run(run.info.run_id).data.tags["reproduced_by"] == copy.info.run_id


def test_changed_data_is_refused(original, capsys):
    client, uri, run, data = original
    file = data / f"{IDX_FILES['y_test']}.gz"
    saved = file.read_bytes()
    labels = bytearray(gzip.decompress(saved))
    labels[-1] = (labels[-1] + 1) % 10  # one test label changed
    file.write_bytes(gzip.compress(bytes(labels)))
    before = len(client.search_runs([run.info.experiment_id]))
    try:
        assert reproduce.main([run.info.run_id, "--tracking-uri", uri]) == 2
    finally:
        file.write_bytes(saved)
    error = capsys.readouterr().err
    assert "the data differ from the original run's (data.digest" in error
    assert "pass --force" in error
    assert len(client.search_runs([run.info.experiment_id])) == before


def test_changed_package_versions_are_refused(original, capsys):
    client, uri, run, _ = original
    logged = run.data.tags["versions.numpy"]
    client.set_tag(run.info.run_id, "versions.numpy", "0.0.1")
    try:
        assert reproduce.main([run.info.run_id, "--tracking-uri", uri]) == 2
    finally:
        client.set_tag(run.info.run_id, "versions.numpy", logged)
    assert "package versions differ: numpy" in capsys.readouterr().err


def test_unknown_run_is_one_line(original, capsys):
    _, uri, _, _ = original
    assert reproduce.main(["0123456789abcdef", "--tracking-uri", uri]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("study.reproduce: error: run 0123456789abcdef: not found")
    assert "\n" not in error


def test_seed_variance_is_logged_on_the_original(original, capsys):
    client, uri, run, _ = original
    assert reproduce.main([run.info.run_id, "--tracking-uri", uri, "--seeds", "2"]) == 0
    seeded = runs_tagged(client, "seed_variance_of", run.info.run_id)
    assert sorted(r.data.params["trainer.seed"] for r in seeded) == ["43", "44"]
    metrics = client.get_run(run.info.run_id).data.metrics
    accuracies = [r.data.metrics["test_accuracy"] for r in seeded]
    assert metrics["seed_variance.test_accuracy.mean"] == pytest.approx(sum(accuracies) / 2)
    assert metrics["seed_variance.n_seeds"] == 2
    assert "seed_variance.best_val_accuracy.std" in metrics
    assert "test_accuracy: mean" in capsys.readouterr().out


def test_a_config_with_a_yaml_syntax_error_is_one_line(original, tmp_path, capsys):
    client, uri, run, _ = original
    broken = client.create_run(run.info.experiment_id)
    (tmp_path / "config.yaml").write_text("data:\n  name: digits\nmodel: {name: mlp\n")
    client.log_artifact(broken.info.run_id, str(tmp_path / "config.yaml"))
    client.set_terminated(broken.info.run_id)
    assert reproduce.main([broken.info.run_id, "--tracking-uri", uri]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"study.reproduce: error: run {broken.info.run_id}: config.yaml: not valid YAML")
    assert error.endswith(
        "config.yaml: not valid YAML at line 4, column 1: expected ',' or '}', but got '<stream end>'"
    )
    assert "\n" not in error


def test_an_explicit_other_keras_backend_is_refused_in_one_line(original, tmp_path):
    """The user's choice is not overruled, and no training is needed to say so."""
    client, uri, run, _ = original
    logged = run.data.tags["keras.backend"]
    other = "jax" if logged == "tensorflow" else "tensorflow"
    before = len(client.search_runs([run.info.experiment_id]))
    done = run_command(
        "reproduce", run.info.run_id, "--tracking-uri", uri, cwd=tmp_path, env={"KERAS_BACKEND": other}
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"study.reproduce: error: KERAS_BACKEND={other} is set, but run {run.info.run_id} trained on "
        f"{logged} (keras.backend); unset KERAS_BACKEND to replay on {logged}; "
        "pass --force to reproduce anyway"
    )
    assert len(client.search_runs([run.info.experiment_id])) == before
