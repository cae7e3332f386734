"""Studies on a real Ray cluster (`launcher=ray`) against real PostgreSQL and a real `mlflow server`:

- two nodes (`ray.cluster_utils.Cluster`, logical GPUs): the study ends with exactly n_trials;
  the node of a training trial's actor is removed mid-trial, Ray starts the actor again on
  the other node, and the trial is failed and retried;
- `ray start --head` as real processes: Ctrl-C detaches (the actors go on), the same command
  re-attaches without new actors, `launcher.cancel=true` ends them (their trials retried), the
  same command then starts the missing ones and the study ends; more GPUs than a node has is
  one line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from study.core.names import (
    WORKER_ATTR,
)
from tests.e2e.cluster_studies import (
    assert_lost_trials_retried,
    check_finished_study,
    cluster_overrides,
    early_in_training,
    start_sweep,
    training,
)
from tests.helpers import free_port, run_command, wait_for

ray = pytest.importorskip("ray", reason='needs Ray (pip install -e ".[ray]")')
pytestmark = pytest.mark.slow

N_TRIALS = 8
RAY = str(Path(sys.executable).parent / "ray")  # the command of this environment's Ray
NODE = {"num_cpus": 2, "num_gpus": 2, "object_store_memory": 80 * 1024**2}


@pytest.fixture(autouse=True)
def ray_without_tokens(monkeypatch):
    """Ray 2.5x turns token authentication on for a new local cluster and writes the token to
    ~/.ray; the clusters of these tests, their drivers and `ray start` all run without one, so
    that a token left by an earlier run cannot refuse them."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")


@pytest.fixture
def ray_study(sweep_setup, servers_on_postgres):
    """(cwd, overrides, storage URL, tracking server) of a tiny study on Ray with 2 actors."""
    (cwd, base), (storage, server) = sweep_setup, servers_on_postgres
    study = [
        *cluster_overrides(base, storage, server, N_TRIALS, epochs=40),
        "launcher=ray",
        "launcher.workers=2",
    ]
    return cwd, [*study, "study.trials_per_gpu=2"], storage, server  # half a GPU an actor


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def test_a_study_on_two_nodes_survives_the_loss_of_a_node_mid_trial(ray_study):
    from ray.cluster_utils import Cluster

    cwd, overrides, storage, server = ray_study
    name = "on-ray"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    nodes = [cluster.add_node(**NODE), cluster.add_node(**NODE)]
    try:
        driver = start_sweep([*overrides, f"study.name={name}", f"launcher.address={cluster.address}"], cwd)
        victim = wait_for(lambda: early_in_training(storage, name), timeout=240, interval=0.2)
        # The worker process's parent is its actor, whose parent is its node's raylet.
        raylet = parent_pid(parent_pid(int(victim.user_attrs[WORKER_ATTR].rpartition(":")[2])))
        node = next(n for n in nodes if n.all_processes["raylet"][0].process.pid == raylet)
        cluster.remove_node(node, allow_graceful=False)
        output, _ = driver.communicate(timeout=600)
        assert driver.returncode == 0, output[-3000:]
    finally:
        cluster.shutdown()
    assert_lost_trials_retried(check_finished_study(storage, name, server, N_TRIALS))


def named_actors(address: str, name: str) -> list[str]:
    code = (
        "import ray, sys; ray.init(address=sys.argv[1], namespace=sys.argv[2], logging_level='ERROR'); "
        "print(' '.join(sorted(ray.util.list_named_actors())))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, address, f"study-{name}"], capture_output=True, text=True, timeout=120
    )
    return result.stdout.split()


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head started as `ray start --head` does, as real processes; yields its address."""
    port = free_port()
    temp = Path("/tmp") / f"ray-{port}"  # Ray's socket paths must stay short
    command = [RAY, "start", "--head", f"--port={port}", "--num-cpus=4", "--num-gpus=2"]
    command += ["--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"]
    command += [f"--object-store-memory={80 * 1024**2}"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    subprocess.run(command, check=True, capture_output=True, timeout=120, env=env)
    yield f"127.0.0.1:{port}"
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


def test_detach_reattach_cancel_and_resume_with_ray_start(ray_study, ray_head):
    cwd, overrides, storage, server = ray_study
    name = "ray-detached"
    overrides = [*overrides, f"study.name={name}", f"launcher.address={ray_head}"]

    too_many = run_command("sweep", *overrides, "launcher.num_gpus=3", cwd=cwd, timeout=300)
    assert too_many.stderr.strip().splitlines() == [
        "study.sweep: error: launcher.num_gpus: expected at most 2 "
        "(the most GPUs a node of the cluster has), got 3"
    ]

    first = start_sweep(overrides, cwd)
    wait_for(lambda: len(training(storage, name)) == 2, timeout=240, interval=0.2)
    first.send_signal(signal.SIGINT)
    detached, _ = first.communicate(timeout=60)
    assert first.returncode == 0 and "re-attach: " in detached and "launcher.cancel=true" in detached, (
        detached
    )
    assert named_actors(ray_head, name) == ["worker-0", "worker-1"]  # they go on

    second = start_sweep(overrides, cwd)  # re-attaches: no new actor
    wait_for(lambda: "attached to its running actors" in (second.stdout.readline() or ""), timeout=120)
    second.send_signal(signal.SIGINT)
    reattached, _ = second.communicate(timeout=60)
    assert f"study {name}: started" not in reattached, reattached

    cancel = run_command("sweep", *overrides, "launcher.cancel=true", cwd=cwd, timeout=300)
    assert re.search(r"cancelled 2 actor\(s\) \(worker-0, worker-1\)", cancel.stdout), (
        cancel.stdout + cancel.stderr
    )
    wait_for(lambda: not named_actors(ray_head, name), timeout=60)

    third = start_sweep(overrides, cwd)  # starts the missing actors and finishes the study
    output, _ = third.communicate(timeout=600)
    assert third.returncode == 0 and "started worker-0, worker-1" in output, output[-3000:]
    assert_lost_trials_retried(check_finished_study(storage, name, server, N_TRIALS))  # the cancelled ones


def test_without_an_address_a_cluster_is_started_for_the_session(sweep_setup):
    """No launcher.address: Ray starts on this machine for the session; the actors are owned by
    the driver (not detached), and the stores may be its files (launcher.shared_filesystem)."""
    cwd, overrides = sweep_setup
    launcher = ["launcher=ray", "launcher.shared_filesystem=true", "study.n_trials=3"]
    result = run_command("sweep", *overrides, *launcher, cwd=cwd, timeout=600, env={"RAY_ADDRESS": ""})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "started worker-0, worker-1" in result.stdout and "3/3 done" in result.stdout
    assert "replacing ended actors" not in result.stdout
