"""Worker slots: what each worker process gets before its interpreter (and backend) starts."""

from __future__ import annotations

from omegaconf import OmegaConf

from study.execution.pool import worker_slots


def study_cfg(**values):
    return OmegaConf.create({"n_workers": 1, "gpus": [], "trials_per_gpu": 1, **values})


def test_gpu_slots_see_one_gpu_and_take_their_share_of_its_memory():
    slots = worker_slots(study_cfg(gpus=[0, 1], trials_per_gpu=4))
    assert len(slots) == 8
    assert [env["CUDA_VISIBLE_DEVICES"] for env, _ in slots] == ["0"] * 4 + ["1"] * 4
    for env, cores in slots:
        assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"  # JAX takes exactly its share up front
        assert float(env["XLA_PYTHON_CLIENT_MEM_FRACTION"]) * 4 <= 0.9  # 4 trials fit on one GPU
        assert cores == []


def test_cpu_workers_split_the_cores_and_limit_their_threads():
    slots = worker_slots(study_cfg(n_workers=2))
    assert len(slots) == 2
    all_cores = [core for _, cores in slots for core in cores]
    assert len(all_cores) == len(set(all_cores))  # no core shared
    for env, cores in slots:
        assert env["TF_NUM_INTRAOP_THREADS"] == str(len(cores)) == env["OMP_NUM_THREADS"]
        assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
