"""launcher=slurm's checks and its task's errors: each one line, before any store is written.

The checks of a real cluster (a partition that does not exist, more GPUs than a node has) run
against the one-node Slurm cluster that `.ci/run` starts; the studies themselves run in
tests/e2e/test_slurm.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from study.config.checks import checked_sweep_config
from study.execution.slurm import node_gpus, requested_gpus, submitit_parameters
from tests.helpers import compose_config, run_command

needs_slurm = pytest.mark.skipif(
    shutil.which("sbatch") is None, reason="needs Slurm (.ci/run starts a cluster)"
)


def slurm_settings(*overrides: str):
    return checked_sweep_config(compose_config("sweep", ["launcher=slurm", *overrides]))


def test_the_launcher_fields_reach_sbatch_under_submitits_names():
    settings = slurm_settings(
        "study.name=big",
        "launcher.partition=gpu",
        "launcher.gpus_per_node=2",
        "launcher.mem_gb=8",
        "launcher.timeout_min=90",
        "launcher.setup=[module load cuda]",
        "+launcher.additional_parameters.exclusive=true",
    )
    parameters = submitit_parameters(settings)
    assert parameters["name"] == "study-big" and parameters["slurm_partition"] == "gpu"
    assert parameters["gpus_per_node"] == 2 and parameters["mem_gb"] == 8 and parameters["timeout_min"] == 90
    assert parameters["slurm_setup"] == ["module load cuda"]
    assert parameters["slurm_additional_parameters"] == {"requeue": True, "exclusive": True}
    assert "slurm_account" not in parameters  # unset fields stay Slurm's defaults


def test_gpus_asked_for_and_gpus_a_node_has():
    assert requested_gpus(slurm_settings("launcher.gres=gpu:a100:4").launcher) == 4
    assert requested_gpus(slurm_settings("launcher.gpus_per_node=1").launcher) == 1
    assert requested_gpus(slurm_settings().launcher) == 0
    assert (
        node_gpus("gpu:a100:4(S:0-1)") == 4
        and node_gpus("gpu:2,tmpdisk:100") == 2
        and node_gpus("(null)") == 0
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["launcher.workers=0"], "launcher.workers: expected an integer >= 1, got 0"),
        (["launcher.gres=gpus:2"], "launcher.gres: expected null or gpu:N or gpu:TYPE:N, got 'gpus:2'"),
    ],
)
def test_a_bad_launcher_value_is_one_line(sweep_setup, overrides, expected):
    tmp_path, base = sweep_setup
    result = run_command("sweep", *base, "launcher=slurm", *overrides, cwd=tmp_path)
    assert result.returncode != 0 and result.stderr.strip().splitlines() == [
        f"study.sweep: error: {expected}"
    ]
    assert not (tmp_path / "runs" / "optuna.db").exists()


def test_no_slurm_on_this_machine_is_one_line(sweep_setup):
    tmp_path, base = sweep_setup
    no_slurm = {"PATH": str(Path(sys.executable).parent)}
    result = run_command("sweep", *base, "launcher=slurm", cwd=tmp_path, env=no_slurm)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "study.sweep: error: launcher=slurm: sinfo not found on PATH: run on a login node of a Slurm "
        "cluster, or pick launcher=local"
    ]
    assert not (tmp_path / "runs" / "optuna.db").exists()


@needs_slurm
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["launcher.partition=nonexistent"],
            "launcher.partition: expected one of ['debug', 'gpu'], got 'nonexistent'",
        ),
        (
            ["launcher.gres=gpu:3"],
            "launcher.gres: expected at most 2 GPUs (the most a node of the default partition has), got 3",
        ),
        (
            [],
            "study.storage: expected a store every node can reach (postgresql://..., "
            "http://mlflow-host:5000), got a file on this machine (sqlite:///{runs}/optuna.db); "
            "set launcher.shared_filesystem=true if every node mounts it",
        ),
    ],
    ids=["partition", "gpus", "sqlite"],
)
def test_what_the_cluster_cannot_do_is_one_line_before_any_store_is_written(sweep_setup, overrides, expected):
    tmp_path, base = sweep_setup
    result = run_command("sweep", *base, "launcher=slurm", *overrides, cwd=tmp_path)
    expected = expected.format(runs=tmp_path / "runs")
    assert result.returncode != 0 and result.stderr.strip().splitlines() == [
        f"study.sweep: error: {expected}"
    ]
    assert not (tmp_path / "runs" / "optuna.db").exists()


TASK = """
import sys
from study.execution.slurm_task import StudyTask
from study.execution.spec import WorkerSpec
StudyTask()(WorkerSpec.read(__import__("pathlib").Path(sys.argv[1])))
"""


def test_a_task_that_cannot_reach_the_study_storage_exits_with_one_line(sweep_setup, tmp_path):
    _, base = sweep_setup
    spec = {
        "config_dir": str(Path("conf").resolve()),
        "config_name": "sweep",
        "overrides": [
            *base,
            "study.storage=postgresql://study@127.0.0.1:9/optuna",
            "study.store_retry_seconds=0",
        ],
        "parent_run_id": "0" * 32,
    }
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    result = subprocess.run(
        [sys.executable, "-c", TASK, str(spec_file)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("study.worker: error:")]
    assert len(errors) == 1 and "study.storage" in errors[0] and "127.0.0.1:9" in errors[0], result.stderr[
        -2000:
    ]
    assert "Traceback" not in result.stderr


def test_a_task_uses_the_gpus_slurm_gave_it(monkeypatch):
    from study.execution.slurm_task import with_slurm_gpus

    settings = slurm_settings("study.trials_per_gpu=2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert list(with_slurm_gpus(settings).study.gpus) == [2, 3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert list(with_slurm_gpus(settings).study.gpus) == []
    assert OmegaConf.is_config(with_slurm_gpus(settings))
