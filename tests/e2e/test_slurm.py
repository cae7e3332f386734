"""Studies on a real one-node Slurm cluster (slurmctld + slurmd + munge, two fake GPUs; `.ci/run`
starts it with `.ci/start-slurm.sh`): `launcher=slurm` submits a job array of workers through
submitit against real PostgreSQL and a real `mlflow server`.

- a study's tasks each get their GPU; Ctrl-C detaches, the same command re-attaches without new
  jobs, and with its driver killed the tasks finish the study and write its outputs once;
- a task cancelled mid-trial loses the trial to a retry, and the same command submits only the
  task that is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from study.core.names import (
    DEVICE_GPUS_TAG,
    FAIL_REASON_ATTR,
    MLFLOW_RUN_ATTR,
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
from tests.helpers import run_command, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs Slurm (.ci/run starts a cluster)"),
]

N_TRIALS = 10
# Two tasks train about one trial in 2 s each between the second driver's Ctrl-C and the
# cancel's scancel (a `study.sweep` start-up): 10 trials were all done by then. With 24, trials
# are left for the cancel to interrupt and for the third command to finish.
CANCELLED_STUDY_TRIALS = 24


@pytest.fixture
def slurm_study(sweep_setup, servers_on_postgres):
    """(cwd, overrides, storage URL, tracking server) of a tiny study on Slurm with 2 tasks."""
    (cwd, base), (storage, server) = sweep_setup, servers_on_postgres
    study = cluster_overrides(base, storage, server, N_TRIALS, epochs=25)
    yield cwd, [*study, "launcher=slurm", "launcher.workers=2", "launcher.gres=gpu:1"], storage, server
    subprocess.run(["scancel", "--user", os.environ.get("USER", "root")], capture_output=True)


def queued(name: str) -> list[str]:
    """The study's tasks in the queue. A cancelled task stays there, COMPLETING, while its worker
    ends its trial; the driver counts it as live (a task being requeued is COMPLETING too)."""
    output = subprocess.run(
        ["squeue", "--noheader", "--array", f"--name=study-{name}", "--format=%i"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(output.split())


def task_of(trial: optuna.trial.FrozenTrial) -> str:
    """The array task (123_0) whose worker runs `trial`, from the worker's environment."""
    pid = int(trial.user_attrs[WORKER_ATTR].rpartition(":")[2])
    environ = Path(f"/proc/{pid}/environ").read_text().split("\0")
    environment = dict(line.split("=", 1) for line in environ if "=" in line)
    return f"{environment['SLURM_ARRAY_JOB_ID']}_{environment['SLURM_ARRAY_TASK_ID']}"


def outputs_written(cwd, name: str, *driver_outputs: str) -> int:
    """How many processes wrote the study's outputs: drivers and the tasks' job logs."""
    logs = "".join(path.read_text() for path in (cwd / "runs" / "studies" / name / "slurm").rglob("*.out"))
    return sum(text.count("writing Optuna's plots") for text in (logs, *driver_outputs))


def test_tasks_get_their_gpus_a_detached_or_killed_driver_leaves_them_finishing_once(slurm_study):
    cwd, overrides, storage, server = slurm_study
    name = "on-slurm"
    overrides = [*overrides, f"study.name={name}"]
    first = start_sweep(overrides, cwd)
    wait_for(lambda: len(training(storage, name)) == 2, timeout=240)
    tasks = queued(name)
    assert len(tasks) == 2, tasks
    first.send_signal(signal.SIGINT)  # Ctrl-C: detach
    detached, _ = first.communicate(timeout=60)
    assert first.returncode == 0, detached[-3000:]
    assert "detached" in detached and "re-attach: " in detached and "launcher.cancel=true" in detached
    assert queued(name) == tasks  # the tasks go on

    second = start_sweep(overrides, cwd)  # the same command re-attaches: no new job
    wait_for(lambda: "attached to its running tasks" in (second.stdout.readline() or ""), timeout=60)
    assert queued(name) == tasks
    os.killpg(second.pid, signal.SIGKILL)  # the driver dies: the tasks finish the study alone
    second.wait()
    # Slurm's warning before a time limit (or a preemption): what submitit asks for with --signal.
    warned = wait_for(lambda: early_in_training(storage, name), timeout=120, interval=0.2)
    warned_task = task_of(warned)
    subprocess.run(["scancel", "--signal=USR2", warned_task], check=True)
    wait_for(lambda: not queued(name), timeout=400, interval=2)

    trials = check_finished_study(storage, name, server, N_TRIALS)
    client = MlflowClient(tracking_uri=server.url)
    gpus = {client.get_run(t.user_attrs[MLFLOW_RUN_ATTR]).data.tags.get(DEVICE_GPUS_TAG) for t in trials}
    assert {"0", "1"} <= gpus, gpus
    assert outputs_written(cwd, name, detached) == 1
    assert (cwd / "runs" / "studies" / name / "leaderboard.csv").exists()
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    # The warned task's trial ended interrupted and was retried; the task was requeued and went on.
    lost = assert_lost_trials_retried(trials)
    assert any("interrupted" in trials[number].user_attrs[FAIL_REASON_ATTR] for number in lost)
    log = (cwd / "runs" / "studies" / name / "slurm" / warned_task / f"{warned_task}_0_log.out").read_text()
    assert "Requeued" in log and log.count("Starting with JobEnvironment") == 2, log[-3000:]


def test_a_cancelled_task_loses_its_trial_to_a_retry_and_the_same_command_submits_only_it(slurm_study):
    cwd, overrides, storage, server = slurm_study
    name = "cancelled-task"
    overrides = [o for o in overrides if not o.startswith("study.n_trials=")]
    overrides += [f"study.name={name}", f"study.n_trials={CANCELLED_STUDY_TRIALS}"]
    first = start_sweep(overrides, cwd)
    victim = wait_for(lambda: next(iter(training(storage, name)), None), timeout=240)
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    task = task_of(victim)
    survivor = [t for t in queued(name) if t != task]
    subprocess.run(["scancel", task], check=True)
    wait_for(lambda: queued(name) == survivor, timeout=60)

    second = start_sweep(overrides, cwd)  # submits only the cancelled task's replacement
    replaced = wait_for(lambda: re.search(r"started (.+?) \(worker logs", second.stdout.readline() or ""))
    assert re.fullmatch(r"\d+(_0)?", replaced[1]), replaced[0]  # one task
    wait_for(lambda: len(queued(name)) == 2 and len(training(storage, name)) == 2, timeout=240)
    second.send_signal(signal.SIGINT)
    attached, _ = second.communicate(timeout=60)
    assert f"attached to its running tasks {survivor[0]}\n" in attached or survivor[0] in attached, attached

    cancel = run_command("sweep", *overrides, "launcher.cancel=true", cwd=cwd, timeout=300)
    assert re.search(r"cancelled 2 task\(s\)", cancel.stdout), cancel.stdout + cancel.stderr
    wait_for(lambda: not queued(name), timeout=60)

    third = start_sweep(overrides, cwd)  # submits the two that are missing and ends the study
    output, _ = third.communicate(timeout=600)
    assert third.returncode == 0, output[-3000:]
    started = re.findall(r"started (.+?) \(worker logs", output)
    assert len(started) == 1 and len(started[0].split(", ")) == 2, started

    trials = check_finished_study(storage, name, server, CANCELLED_STUDY_TRIALS)
    # The scancelled task's trial, and those of the two launcher.cancel=true ended: retried.
    assert len(assert_lost_trials_retried(trials)) >= 2
    assert outputs_written(cwd, name, output) == 1
