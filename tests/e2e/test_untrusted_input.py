"""A logged config is data, not code; untrusted files are bounded before they are read.

Each case runs a command as a user runs it, in a subprocess from a fresh folder: a replayed or
reproduced config.yaml never calls a Hydra callback or a resolver such as `${oc.env:...}`,
YAML with anchors and aliases (a few hundred bytes that expand to gigabytes) is refused in
seconds, a report stays under --output-dir whatever the experiment is called, and a gzip
bomb of IDX data is refused after the bytes its header declares.
"""

from __future__ import annotations

import gzip
import shutil
import struct
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from study.config import checked_config
from study.training.data_files import IDX_FILES
from study.training.replay_config import write_replay_config
from tests.e2e.test_bad_input import assert_refused
from tests.helpers import compose_config, run_command

SECRET = "env-value-7Qx2"

# 9 levels of 9 aliases: 270 bytes that expand to 9**9 (387 million) strings.
ALIAS_BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)
)


def replay_folder(cwd: Path, *lines: str, header: str = "", **values: str) -> Path:
    """A logged config.yaml in cwd/replay, as the README downloads it, with `values` replaced
    (`seed="-1"`) and `lines` appended."""
    cfg = compose_config("train", ["data=digits", f"runs_dir={cwd / 'runs'}"])
    (cwd / "replay").mkdir()
    file = write_replay_config(checked_config(cfg), cwd / "replay" / "config.yaml", run_id="0" * 32)
    text = file.read_text()
    for key, value in values.items():
        text = "\n".join(
            f"{line.split(':')[0]}: {value}" if line.strip().startswith(f"{key}:") else line
            for line in text.splitlines()
        )
    file.write_text(header + text + "\n" + "".join(f"{line}\n" for line in lines))
    return file.parent


def replay(cwd: Path, env: dict[str, str] | None = None):
    return run_command("train", "--config-path", "replay", "--config-name", "config", cwd=cwd, env=env)


HYDRA_ATTACKS = {
    "hydra block": (
        "hydra:",
        "  callbacks:",
        "    x:",
        "      _target_: builtins.open",
        "      _args_: [{file}, w]",
    ),
    "hydra group": ("defaults:", "  - override hydra/job_logging: none", "  - _self_"),
}


@pytest.mark.parametrize("attack", sorted(HYDRA_ATTACKS))
def test_a_replayed_config_cannot_make_hydra_run_code(tmp_path, attack):
    """The README's manual replay: Hydra would instantiate `hydra.callbacks` (opening FILE for
    writing truncates it) before the job starts, also for a config refused later."""
    victim = tmp_path / "FILE"
    victim.write_text("precious\n")
    lines = [line.format(file=victim) for line in HYDRA_ATTACKS[attack]]
    replay_folder(tmp_path, *lines, seed="-1")
    done = replay(tmp_path)
    expected = "study.train: error: trainer.seed" if attack == "hydra block" else "study.train: error: "
    assert_refused(done, expected, tmp_path)
    if attack == "hydra group":
        assert "selects Hydra's own settings" in done.stderr
    assert victim.read_text() == "precious\n"


def test_a_replayed_config_in_hydras_package_is_refused(tmp_path):
    replay_folder(tmp_path, header="# @package hydra.callbacks\n")
    done = replay(tmp_path)
    assert_refused(
        done, f"study.train: error: {tmp_path / 'replay' / 'config.yaml'}: sets Hydra's own", tmp_path
    )


def test_a_replayed_config_resolves_no_environment_variable(tmp_path):
    replay_folder(tmp_path, experiment_name="${oc.env:STUDY_TEST_SECRET}")
    done = replay(tmp_path, env={"STUDY_TEST_SECRET": SECRET})
    expected = "mlflow.experiment_name: calls the resolver oc.env; a logged config is data"
    assert_refused(done, f"study.train: error: {tmp_path / 'replay' / 'config.yaml'}: {expected}", tmp_path)
    assert SECRET not in done.stdout + done.stderr


def logged_run(store: Path, config_text: str) -> tuple[str, str]:
    """(tracking URI, run id) of a run in a fresh store whose config.yaml artifact is `config_text`."""
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("study", artifact_location=str(store / "artifacts"))
    run = client.create_run(experiment)
    (store / "config.yaml").write_text(config_text)
    client.log_artifact(run.info.run_id, str(store / "config.yaml"))
    client.set_terminated(run.info.run_id)
    return uri, run.info.run_id


def test_reproduce_resolves_no_environment_variable(tmp_path):
    """The value of ${oc.env:VAR} in a logged config is neither used nor logged anywhere."""
    cwd, store = tmp_path / "cwd", tmp_path / "store"
    cwd.mkdir()
    store.mkdir()
    text = (
        replay_folder(tmp_path, experiment_name="${oc.env:STUDY_TEST_SECRET}") / "config.yaml"
    ).read_text()
    uri, run_id = logged_run(store, text)
    done = run_command("reproduce", run_id, "--tracking-uri", uri, cwd=cwd, env={"STUDY_TEST_SECRET": SECRET})
    expected = (
        f"study.reproduce: error: run {run_id}: config.yaml: mlflow.experiment_name: calls the resolver"
    )
    assert_refused(done, expected, cwd)
    for file in [*store.rglob("*"), *cwd.rglob("*")]:
        assert not file.is_file() or SECRET.encode() not in file.read_bytes(), file


def test_reproduce_refuses_an_alias_bomb_in_seconds(tmp_path):
    cwd, store = tmp_path / "cwd", tmp_path / "store"
    cwd.mkdir()
    store.mkdir()
    uri, run_id = logged_run(store, ALIAS_BOMB)
    start = time.monotonic()
    done = run_command("reproduce", run_id, "--tracking-uri", uri, cwd=cwd, timeout=60)
    assert time.monotonic() - start < 10
    expected = f"study.reproduce: error: run {run_id}: config.yaml: line 1: YAML anchors and aliases"
    assert_refused(done, expected, cwd)


def search_space_dir(tmp_path: Path, text: str) -> Path:
    conf = tmp_path / "conf" / "search_space"
    conf.mkdir(parents=True)
    (conf / "bomb.yaml").write_text(text)
    return conf / "bomb.yaml"


def test_sweep_refuses_an_alias_bomb_search_space_in_seconds(tmp_path):
    """Before: no answer after 240 s, and SIGTERM did not end it."""
    file = search_space_dir(tmp_path, ALIAS_BOMB + "model: {type: categorical, choices: *a8}\n")
    start = time.monotonic()
    done = run_command(
        "sweep", "--config-dir", "conf", "search_space=bomb", "data=digits", cwd=tmp_path, timeout=60
    )
    assert time.monotonic() - start < 10
    assert_refused(done, f"study.sweep: error: {file}: line 1: YAML anchors and aliases", tmp_path)


def test_sweep_refuses_a_search_space_over_a_megabyte(tmp_path):
    choices = ", ".join(f"c{i}" for i in range(200_000))
    file = search_space_dir(tmp_path, f"model: {{type: categorical, choices: [{choices}]}}\n")
    done = run_command(
        "sweep", "--config-dir", "conf", "search_space=bomb", "data=digits", cwd=tmp_path, timeout=60
    )
    assert_refused(done, f"study.sweep: error: {file}: larger than 1000000 bytes", tmp_path)


@pytest.mark.parametrize("name", ["{tmp}/elsewhere/report", "../escaped", ".."])
def test_a_report_stays_under_its_output_dir(tmp_path, name):
    cwd, store = tmp_path / "cwd", tmp_path / "store"
    for folder in (cwd, store, tmp_path / "elsewhere"):
        folder.mkdir()
    name = name.format(tmp=tmp_path)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(name, artifact_location=str(store / "artifacts"))
    client.set_terminated(client.create_run(experiment).info.run_id)
    done = run_command(
        "report", "--experiment", name, "--tracking-uri", uri, "--output-dir", "out", "--markdown", cwd=cwd
    )
    assert done.returncode == 0, done.stderr[-2000:]
    written = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*.csv"))
    assert len(written) == 1 and written[0].parent == Path("cwd/out"), written
    assert not list((tmp_path / "elsewhere").iterdir())
    assert len(list((cwd / "out").glob("*.md"))) == 1


def bomb_member_stream(header: bytes, zeros: int) -> bytes:
    """A gzip file: `header`, then `zeros` zero bytes in repeated 1 MiB members (made in
    milliseconds; each member is about 1 KiB)."""
    member = gzip.compress(bytes(1 << 20), compresslevel=9)
    return gzip.compress(header) + member * (zeros >> 20)


def idx_folder(tmp_path: Path, tiny_idx_dir: Path) -> Path:
    folder = tmp_path / "data"
    shutil.copytree(tiny_idx_dir, folder)
    return folder


def test_a_gzip_bomb_is_refused_after_the_bytes_its_header_declares(tmp_path, tiny_idx_dir):
    """2 MB of gzip that inflate to 2 GiB behind a header of 400 labels: refused after 401."""
    folder = idx_folder(tmp_path, tiny_idx_dir)
    file = folder / f"{IDX_FILES['y_test']}.gz"
    file.write_bytes(bomb_member_stream(bytes([0, 0, 8, 1]) + struct.pack(">I", 100), 2 << 30))
    start = time.monotonic()
    done = run_command("train", f"data.path={folder}", "data.validation_size=100", cwd=tmp_path, timeout=60)
    assert time.monotonic() - start < 10
    expected = (
        f"study.train: error: data file {file}: holds more than 108 bytes, its header (100,) promises 108"
    )
    assert_refused(done, expected, tmp_path)


def test_a_header_that_promises_more_than_the_file_can_hold_is_refused_unread(tmp_path, tiny_idx_dir):
    folder = idx_folder(tmp_path, tiny_idx_dir)
    file = folder / f"{IDX_FILES['x_test']}.gz"
    file.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 60_000, 4096, 4096)))
    done = run_command("train", f"data.path={folder}", "data.validation_size=100", cwd=tmp_path, timeout=60)
    expected = f"study.train: error: data file {file}: its header (60000, 4096, 4096) promises"
    assert_refused(done, expected, tmp_path)
