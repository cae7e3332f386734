"""Every command the documentation shows runs as a user types it, from a fresh folder, in a
subprocess: README.md, the reference in docs/ and bench/README.md ("README" below: all of them).

The commands are read from the documents themselves (their ```bash blocks, and the `$ ` lines
of their transcript blocks), so an edit that breaks a command fails here. Each command has one
entry in CASES: the small overrides appended so it runs in seconds on tiny data (the same
command, fewer trials and epochs), the commands that must have run before it in the same
folder, and what README says it prints or writes. Commands that cannot run here (installs,
the test suite itself, servers on other machines) have a skip reason. A README command
without an entry fails: add one line to CASES.

The commands run one after another in one fresh folder (`work/`), beside a `shared/data/mnist`
that holds the tests' tiny IDX data: README's `../shared/data/mnist` resolves there, as it
does for this project's CI. Nothing is downloaded: commands that would download MNIST get
`data.path=../shared/data/mnist` appended.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient

from study.config.probes import visible_gpus
from tests.helpers import free_port

PROJECT_DIR = Path(__file__).resolve().parents[2]
README = PROJECT_DIR / "README.md"
# Read in this order: a command's first appearance decides where it runs in the shared folder.
DOCUMENTS = (README, *sorted((PROJECT_DIR / "docs").glob("*.md")), PROJECT_DIR / "bench" / "README.md")
COMMAND_TIMEOUT = 900  # seconds; the slowest case (bench --quick) takes about 3 minutes
FULL_MNIST_RACE = (  # README's full-MNIST table: 5 seeds x 3 strategies, two studies at once
    "python bench/search.py --data-path ../shared/data/mnist --budget 1300 --samplers tpe --seeds 5 "
    "--strategies asha-steps,median,hyperband --parallel 2 --target 0.98 --also-target 0.99"
)
FULL_MNIST_MORE_SEEDS = (  # the same table's seeds 5 to 7 for two of its strategies
    "python bench/search.py --data-path ../shared/data/mnist --budget 1300 --samplers tpe --seeds 3 "
    "--first-seed 5 --strategies asha-steps,median --parallel 2 --target 0.98 --also-target 0.99"
)
PEER_RACE = (  # README's race against Keras Tuner: tests/e2e/test_bench.py runs its strategies --quick
    "python bench/search.py --data-path ../shared/data/mnist --override data.max_train_samples=10000 "
    "--budget 300 --parallel 2 --first-rung-steps 33 --target 0.96 --also-target 0.97 --samplers tpe "
    "--seeds 5 --strategies asha-steps,asha-steps-stratified,keras-tuner"
)
FULL_MNIST_PEER_RACE = (  # README's full-MNIST race against Keras Tuner, seeds 0 to 4 and seed 5
    "python bench/search.py --data-path ../shared/data/mnist --budget 1300 --samplers tpe --seeds 5 "
    "--strategies asha-steps-stratified,keras-tuner --parallel 2 --target 0.98 --also-target 0.99"
)
FULL_MNIST_PEER_MORE = (
    "python bench/search.py --data-path ../shared/data/mnist --budget 1300 --samplers tpe --seeds 1 "
    "--first-seed 5 --strategies asha-steps-stratified,keras-tuner --parallel 2 --target 0.98 "
    "--also-target 0.99"
)
# --quick makes every bench command a digits run of a few studies, whatever its data and sizes:
# one of them runs here; the others differ in strategies and seeds, which these run already.
QUICK_BENCH = "tests/e2e/test_bench.py runs bench/run.py --quick (digits, whatever the data) and checks it"
QUICK_SEARCH = (
    "with --quick a digits run of its strategies: the case of FULL_MNIST_RACE runs asha-steps, median and "
    "hyperband, tests/e2e/test_bench.py asha, asha-steps, asha-steps-stratified and keras-tuner"
)
FLOOR_STRAIGHT = (  # bench/README.md's floor: the base config alone, four epochs of MNIST on one core
    "taskset -c 0 python -m study.train data.path=../shared/data/mnist trainer.epochs=4 "
    "trainer.batch_size=100 trainer.seed=0"
)
FLOOR_BASE_CONFIG_FIRST = (
    "python bench/search.py --data-path ../shared/data/mnist --budget 600 --samplers tpe --seeds 2 "
    "--strategies asha-steps-stratified --override study.enqueue_defaults=true --parallel 2 --target 0.98 "
    "--also-target 0.99"
)
FLOOR_SHORT_FIRST_RUNG = (
    "python bench/search.py --data-path ../shared/data/mnist --budget 400 --samplers tpe --seeds 6 "
    "--strategies asha-steps-stratified --first-rung-steps 61 --override sampler.n_startup_trials=10 "
    "--parallel 2 --target 0.98 --also-target 0.99"
)
MEASURED_SEARCH = (  # README's table of search strategies; the test runs it --quick
    "python bench/search.py --data-path ../shared/data/mnist --override data.max_train_samples=10000 "
    "--budget 300 --parallel 2 --first-rung-steps 33 --target 0.96 --also-target 0.97"
)

# --- reading README.md ------------------------------------------------------------------------

FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)


def strip_comment(line: str) -> str:
    """The line without its shell comment (a `#` after whitespace, outside quotes)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def readme_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks, in order, once each: continuation lines joined,
    comments and comment-only lines dropped, runs of spaces made one."""
    commands: list[str] = []
    for block in FENCE.finditer(text):
        if block["lang"] != "bash":
            continue
        for line in block["body"].replace("\\\n", " ").splitlines():
            command = " ".join(strip_comment(line).split())
            if command and command not in commands:
                commands.append(command)
    return commands


def readme_transcripts(text: str) -> list[tuple[str, list[str]]]:
    """(command, the lines README shows it printing) from plain blocks of `$ command` lines."""
    transcripts: list[tuple[str, list[str]]] = []
    for block in FENCE.finditer(text):
        lines = block["body"].splitlines()
        if block["lang"] or not lines or not lines[0].startswith("$ "):
            continue
        for line in lines:
            if line.startswith("$ "):
                transcripts.append((line[2:].strip(), []))
            elif line.strip():
                transcripts[-1][1].append(line.strip())
    return transcripts


# --- running a command ------------------------------------------------------------------------


@dataclass
class Result:
    command: str  # as it ran: README's text, placeholders filled in, overrides appended
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def run_id(self) -> str:
        """The MLflow run the command started (train logs `MLflow run <id> (...)`)."""
        found = re.search(r"MLflow run ([0-9a-f]{32})", self.output)
        assert found, f"no MLflow run in the output of {self.command}:\n{self.output[-3000:]}"
        return found[1]

    def describe(self) -> str:
        return f"{self.command} exited {self.returncode}:\n{self.stdout[-2000:]}\n{self.stderr[-4000:]}"


Expectation = Callable[[Result, "Workspace"], None]


@dataclass(frozen=True)
class Case:
    """How a README command runs here and what it must do."""

    append: str = ""  # options or overrides appended to the command as typed ({work}: its folder)
    needs: tuple[str, ...] = ()  # README commands that run first, in the same folder
    replace: tuple[tuple[str, str], ...] = ()  # README placeholder -> {run_id}, {tracking_server}
    expect: tuple[Expectation, ...] = ()  # what README says it prints or writes
    exit_code: int = 0
    server: str = ""  # a server: the URL path polled on 127.0.0.1:{port} before `expect`
    needs_executable: str = ""  # skipped, with the reason, where it is not installed
    needs_gpus: int = 0  # on a machine with fewer GPUs the command must be refused in one line
    skip: str = ""  # why it cannot run here; shown by pytest -ra
    slow: bool = False


class Workspace:
    """A fresh folder where README commands run one after another, each at most once."""

    def __init__(self, root: Path, tiny_data: Path):
        self.root = root
        self.work = root / "work"
        self.work.mkdir()
        (root / "shared" / "data").mkdir(parents=True)
        (root / "shared" / "data" / "mnist").symlink_to(tiny_data)  # README's ../shared/data/mnist
        (self.work / "bench").symlink_to(PROJECT_DIR / "bench")  # README's bench/run.py

        # README's examples/own_model, copied: its commands write data and runs into it.
        def written(folder: str, names: list[str]) -> set[str]:  # what an example's commands write
            top = Path(folder).parent == PROJECT_DIR / "examples"
            return {name for name in names if name == "__pycache__" or (top and name in ("data", "runs"))}

        shutil.copytree(PROJECT_DIR / "examples", self.work / "examples", ignore=written)
        self.results: dict[str, Result] = {}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        for name in ("HYDRA_FULL_ERROR", "MLFLOW_TRACKING_URI", "CUDA_VISIBLE_DEVICES"):
            self.env.pop(name, None)

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=f"sqlite:///{self.work / 'runs' / 'mlflow.db'}")

    def prepare(self, command: str) -> str:
        """README's command with its case's placeholders filled in and overrides appended."""
        case = CASES[command]
        values = {"work": str(self.work)}
        if case.needs:
            needed = self.run(case.needs[0])
            if "{run_id}" in str(case.replace):
                values["run_id"] = needed.run_id
        for readme_text, template in case.replace:
            command = command.replace(readme_text, template.format(**values))
        return f"{command} {case.append.replace('{work}', str(self.work))}".strip()

    def run(self, command: str) -> Result:
        """Run a README command (after the ones it needs), once; later calls get the result."""
        if command not in self.results:
            for needed in CASES[command].needs:
                self.run(needed)
            if "{tracking_server}" in str(CASES[command].replace):
                with self.tracking_server() as url:
                    self.results[command] = self._run(self.prepare(command).replace("{tracking_server}", url))
            else:
                self.results[command] = self._run(self.prepare(command))
        return self.results[command]

    def _run(self, command: str) -> Result:
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        return Result(command, done.returncode, done.stdout, done.stderr)

    @contextmanager
    def serve(self, command: str, port: int) -> Iterator[subprocess.Popen]:
        """Start a README server command, wait until it answers on 127.0.0.1, stop it after."""
        case = CASES[command]
        for needed in case.needs:
            self.run(needed)
        log = self.root / f"server-{port}.log"
        with open(log, "w") as out:
            server = subprocess.Popen(
                # `env`: a command may set variables first (VAR=value mlflow models serve ...)
                ["bash", "-c", "exec env " + self.prepare(command).format(port=port)],
                cwd=self.work,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the server's own workers are stopped with it
            )
        try:
            wait_for_http(f"http://127.0.0.1:{port}{case.server}", server, log)
            yield server
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()

    @contextmanager
    def tracking_server(self) -> Iterator[str]:
        """A real `mlflow server` on this folder's store: README's http://mlflow-host:5000."""
        port = free_port()
        command = f"mlflow server --backend-store-uri sqlite:///runs/mlflow.db --host 127.0.0.1 --port {port}"
        log = self.root / f"tracking-server-{port}.log"
        with open(log, "w") as out:
            server = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                cwd=self.work,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_http(f"http://127.0.0.1:{port}/health", server, log)
            yield f"http://127.0.0.1:{port}"
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def wait_for_http(url: str, server: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert server.poll() is None, f"{url}: the server exited: {log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout:.0f} s: {log.read_text()[-3000:]}")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


# --- what README says the commands print and write ------------------------------------------


def prints(*texts: str) -> Expectation:
    def check(result: Result, ws: Workspace) -> None:
        for text in texts:
            assert text in result.output, f"{text!r} not printed by {result.describe()}"

    return check


def writes(*paths: str) -> Expectation:
    def check(result: Result, ws: Workspace) -> None:
        for path in paths:
            assert list(ws.work.glob(path)), f"{path} not written by {result.command}"

    return check


def finished_run(*, test_accuracy_at_least: float = 0.0, backend: str | None = None) -> Expectation:
    """A FINISHED MLflow run with the metrics, artifacts and tags README lists."""

    def check(result: Result, ws: Workspace) -> None:
        run = ws.client.get_run(result.run_id)
        assert run.info.status == "FINISHED", result.describe()
        for key in ("best_val_accuracy", "test_accuracy", "test_loss", "train_seconds"):
            assert key in run.data.metrics, key
        assert run.data.metrics["test_accuracy"] >= test_accuracy_at_least
        assert re.search(rf"test_accuracy {run.data.metrics['test_accuracy']:.4f}", result.output)
        history = ws.client.get_metric_history(run.info.run_id, "val_accuracy")
        assert min(m.step for m in history) == 1
        artifacts = {a.path for a in ws.client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "tensorboard", "checkpoints"} <= artifacts
        checkpoints = {a.path for a in ws.client.list_artifacts(run.info.run_id, "checkpoints")}
        assert {"checkpoints/best.keras", "checkpoints/last.keras"} <= checkpoints
        assert run.data.tags["data.digest"].startswith("sha256:")
        if backend:
            assert run.data.tags["keras.backend"] == backend
        assert list(ws.work.glob("runs/hydra/train/*/.hydra/config.yaml"))  # Hydra's output under runs/

    return check


def same_metrics_as(readme_command: str) -> Expectation:
    """README: on a CPU the same config gives identical metrics."""

    def check(result: Result, ws: Workspace) -> None:
        original = ws.client.get_run(ws.results[readme_command].run_id).data.metrics
        replayed = ws.client.get_run(result.run_id).data.metrics
        for key in ("best_val_accuracy", "test_accuracy", "test_loss"):
            assert replayed[key] == original[key], key

    return check


def prints_config(result: Result, ws: Workspace) -> None:
    """--cfg job prints the composed config and trains nothing."""
    assert "model:\n  name: cnn" in result.stdout and "optimizer:\n  name: adam" in result.stdout
    assert "tracking_uri: sqlite:///${runs_dir}/mlflow.db" in result.stdout
    assert not (ws.work / "runs" / "mlflow.db").exists() or "MLflow run" not in result.output


def study_done(name: str, trials: int, workers: int = 1, exact: bool = True) -> Expectation:
    """README: the leaderboard, plots, worker logs and TensorBoard folders under
    runs/studies/<name>/; one MLflow parent run with a child run per trial. `exact=False`
    (scheduler=asha, whose promotions are trials too): at least `trials`."""

    def check(result: Result, ws: Workspace) -> None:
        assert re.search(
            r"^winner: trial \d+, val_accuracy [01]\.\d{4}, test_accuracy [01]\.\d{4}$", result.stdout, re.M
        ), result.describe()
        assert "look further:" in result.stdout, result.describe()
        assert f"tensorboard --logdir runs/studies/{name}/tensorboard" in result.stdout
        folder = ws.work / "runs" / "studies" / name
        count = (lambda n: n == trials) if exact else (lambda n: n >= trials)
        assert count(len(pd.read_csv(folder / "leaderboard.csv")))
        assert (folder / "plots" / "optimization_history.png").is_file()
        assert {f"worker_{index}.log" for index in range(workers)} <= {
            p.name for p in (folder / "logs").iterdir()
        }
        assert count(len(list((folder / "tensorboard").glob("trial_*"))))
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{ws.work / 'runs' / 'optuna.db'}")
        done = [
            t
            for t in study.trials
            if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        ]
        assert count(len(done))
        experiment = ws.client.get_experiment_by_name("study").experiment_id
        parents = ws.client.search_runs(
            [experiment], f"tags.`study.name` = '{name}' and tags.`study.role` = 'parent'"
        )
        assert len(parents) == 1, "one parent run per study, also after a resume"
        children = ws.client.search_runs(
            [experiment], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'"
        )
        assert len(children) >= trials

    return check


def refused(key: str) -> Expectation:
    """Bad input: exit status 2 and one line naming the key, nothing trained."""

    def check(result: Result, ws: Workspace) -> None:
        assert result.returncode == 2, result.describe()
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines and re.match(rf"study\.\w+: error: {re.escape(key)}", lines[-1]), result.describe()
        assert "Traceback" not in result.stderr

    return check


def reproduced(result: Result, ws: Workspace) -> None:
    assert "reproduced: largest difference 0" in result.stdout, result.describe()
    new_run = re.search(r"new run ([0-9a-f]{32})", result.stdout)[1]
    assert ws.client.get_run(new_run).data.tags["reproduction_of"] in result.command


def seed_variance_logged(result: Result, ws: Workspace) -> None:
    assert "test_accuracy: mean" in result.stdout, result.describe()
    original = re.search(r"[0-9a-f]{32}", result.command)[0]
    run = ws.client.get_run(original)
    assert run.data.metrics["seed_variance.n_seeds"] == 2
    assert "seed_variance.test_accuracy.std" in run.data.metrics
    assert "seed_variance.csv" in {a.path for a in ws.client.list_artifacts(original)}


def report_of(name: str, *studies: str, markdown: bool = False) -> Expectation:
    """README: a leaderboard printed and written to runs/reports/<name>.csv (and .md)."""

    def check(result: Result, ws: Workspace) -> None:
        assert result.returncode == 0, result.describe()
        assert "val_accuracy" in result.stdout and "run_id" in result.stdout
        table = pd.read_csv(ws.work / "runs" / "reports" / f"{name}.csv")
        assert len(table) >= 1 and table["run_id"].notna().all()
        if studies:
            assert set(table["study"]) == set(studies)
            assert set(table["state"]) <= {"COMPLETE", "PRUNED", "FAIL"}
        assert (ws.work / "runs" / "reports" / f"{name}.md").is_file() == markdown

    return check


def mlflow_ui_shows_the_run(result: Result, ws: Workspace, port: int) -> None:
    experiment = get_json(
        f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=study"
    )
    experiment_id = experiment["experiment"]["experiment_id"]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search",
        data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        runs = json.loads(response.read())["runs"]
    assert ws.results[FIRST_RUN].run_id in {run["info"]["run_id"] for run in runs}


def optuna_dashboard_lists_the_study(result: Result, ws: Workspace, port: int) -> None:
    studies = get_json(f"http://127.0.0.1:{port}/api/studies")
    assert "default" in json.dumps(studies)


def search_results(strategies: str, folder: str) -> Expectation:
    """README: bench/search.py writes curves.csv, summary.csv and best_so_far.png to runs/FOLDER;
    the summary has a row for each of the (comma-separated) strategies."""

    def check(result: Result, ws: Workspace) -> None:
        out = ws.work / "runs" / folder
        summarized = sorted(pd.read_csv(out / "summary.csv")["strategy"])
        assert summarized == sorted(strategies.split(",")), result.describe()
        assert (out / "curves.csv").is_file() and (out / "best_so_far.png").stat().st_size > 0

    return check


def confirmed(name: str, top: int, seeds: int) -> Expectation:
    """README: the same study command with study.confirm_top / confirm_seeds re-trains the best
    configurations with more seeds, logs mean and std, and chooses the winner on the mean."""

    def check(result: Result, ws: Workspace) -> None:
        assert result.returncode == 0, result.describe()
        experiment = ws.client.get_experiment_by_name("study").experiment_id
        parent = ws.client.search_runs(
            [experiment], f"tags.`study.name` = '{name}' and tags.`study.role` = 'parent'"
        )[0]
        nested = ws.client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        confirmations = [run for run in nested if run.data.tags.get("confirmation_of")]
        assert len(confirmations) == top * seeds, result.describe()
        assert {run.info.status for run in confirmations} == {"FINISHED"}
        assert "±" in result.stdout, result.describe()

    return check


def serves_raw_digits(result: Result, ws: Workspace, port: int) -> None:
    """README's curl: raw digit pixels in, the class and its probabilities out."""
    done = subprocess.run(
        ["bash", "-c", CURL_DIGIT.replace("5001", str(port))], capture_output=True, text=True, timeout=60
    )
    answer = json.loads(done.stdout)["predictions"][0]
    assert answer["class"] == 0, done.stdout
    assert abs(sum(answer["probabilities"]) - 1) < 1e-4 and max(answer["probabilities"]) > 0.5


def own_model_run(result: Result, ws: Workspace) -> None:
    """README's own model: a FINISHED run of the user's builder on the user's 3-class colour
    images, its keys as params, its module's digest as a tag."""
    client = MlflowClient(tracking_uri=f"sqlite:///{ws.work / OWN_MODEL / 'runs' / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED", result.describe()
    assert run.data.params["model.builder"] == "my_models:tiny_cnn" and run.data.params["model.width"] == "16"
    assert run.data.tags["data.name"] == "tiny_rgb" and run.data.tags["data.num_classes"] == "3"
    assert run.data.tags["model.source_digest"].startswith("sha256:")
    assert "test_accuracy" in run.data.metrics


def own_model_study(result: Result, ws: Workspace) -> None:
    assert re.search(r"^winner: trial \d+, val_accuracy", result.stdout, re.M), result.describe()
    table = pd.read_csv(ws.work / OWN_MODEL / "runs" / "studies" / "own" / "leaderboard.csv")
    assert len(table) == 4 and {"model.width", "model.dropout_rate"} <= set(table.columns)


# --- README's commands, one line each ---------------------------------------------------------

OWN_MODEL = "examples/own_model"
# In a subshell: the three lines pasted into one shell each start from the project's folder.
OWN_DATA = f"(cd {OWN_MODEL} && python make_data.py)"
OWN_CONF = "--config-dir conf model=tiny_cnn data=tiny_rgb"
OWN_TRAIN = f"(cd {OWN_MODEL} && python -m study.train {OWN_CONF} trainer.epochs=5)"
OWN_SWEEP = (
    f"(cd {OWN_MODEL} && python -m study.sweep {OWN_CONF} search_space=tiny study.name=own study.n_workers=2)"
)

LOCAL_MNIST = "data.path=../shared/data/mnist"  # for commands that download MNIST as typed
TINY = "data.validation_size=100 trainer.epochs=1"  # 300 training examples, one epoch
SWEEP = f"{TINY} study.n_trials=2"
ASHA_STEPS = (
    "python -m study.sweep study.name=asha-steps scheduler=asha scheduler.resource_unit=steps "
    "trainer.epochs=9"
)
FIRST_RUN = "python -m study.train data=digits model=mlp trainer.epochs=20"
DOWNLOAD = "downloads MNIST: run on the local copy"  # the reason a command gets data.path appended
INSTALL = "installs the project: CI runs this install first (.ci/run), these tests run in it"
SUITE = "the test suite itself: CI runs it (.ci/run)"
DASHBOARD_INSTALL = 'pip install -e ".[dashboard]" && '
SCALE_OUT = "needs PostgreSQL and other machines: tests/e2e/test_scale_out.py runs this setup on 127.0.0.1"
INSTALL_FIRST = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && "
FIRST_STUDY = f"{INSTALL_FIRST}python -m study.sweep data=digits"  # README's first command
CONFIRM = "python -m study.sweep data=digits study.confirm_top=2 study.confirm_seeds=3"
SERVE = (
    "MLFLOW_TRACKING_URI=sqlite:///runs/mlflow.db mlflow models serve -m models:/default@champion "
    "--env-manager local -p 5001 --host 127.0.0.1"
)
DIGIT_ZERO = (  # scikit-learn's first digit, raw pixels 0..16, no channel axis
    "[[[0,0,5,13,9,1,0,0],[0,0,13,15,10,15,5,0],[0,3,15,2,0,11,8,0],[0,4,12,0,0,8,8,0],"
    "[0,5,8,0,0,9,8,0],[0,4,11,0,1,12,7,0],[0,2,14,5,10,12,0,0],[0,0,6,13,10,0,0,0]]]"
)
CURL_DIGIT = (
    "curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' "
    f"-d '{{\"inputs\": {DIGIT_ZERO}}}'"
)
GPU_BENCH = (
    "KERAS_BACKEND=jax python bench/run.py --data-path ../shared/data/mnist --gpu 0 --slots 1,2,4,8 "
    "--throughput-model cnn --override trainer.steps_per_execution=50"
)
MNIST_STUDY = "python -m study.sweep data.path=../shared/data/mnist study.name=mnist"
CNN_LR = "python -m study.sweep study.name=cnn-lr study.n_trials=60 search_space=cnn_only trainer.epochs=9"
MLFLOW_SERVER_ON_POSTGRES = (
    "mlflow server --backend-store-uri postgresql://user@db-host/mlflow "
    "--artifacts-destination /shared/mlflow-artifacts --host 0.0.0.0 --port 5000 "
    "--app-name basic-auth --allowed-hosts mlflow-host:5000"
)
MLFLOW_LOGIN = (
    'read -rsp "MLflow password: " MLFLOW_TRACKING_PASSWORD && '
    "export MLFLOW_TRACKING_USERNAME=alice MLFLOW_TRACKING_PASSWORD"
)
SLURM_SWEEP = (
    "python -m study.sweep launcher=slurm launcher.workers=8 launcher.partition=gpu "
    "launcher.gpus_per_node=1 study.name=big study.storage=postgresql://user@db-host/optuna "
    "mlflow.tracking_uri=http://mlflow-host:5000 study.n_trials=500 study.trials_per_gpu=2"
)
ON_SLURM = (
    "needs a Slurm cluster and stores its nodes reach: tests/e2e/test_slurm.py runs launcher=slurm on the "
    "one-node cluster .ci/run starts"
)
RAY_SWEEP = (
    "python -m study.sweep launcher=ray launcher.address=auto launcher.workers=8 study.name=big "
    "study.storage=postgresql://user@db-host/optuna mlflow.tracking_uri=http://mlflow-host:5000 "
    "study.n_trials=500 study.trials_per_gpu=2"
)
ON_RAY = (
    "needs a Ray cluster and stores its nodes reach: tests/e2e/test_ray.py runs launcher=ray on a "
    "two-node cluster on this machine and on `ray start --head`"
)
SWEEP_ON_SERVERS = (
    "python -m study.sweep study.name=big study.storage=postgresql://user@db-host/optuna "
    "mlflow.tracking_uri=http://mlflow-host:5000 study.n_trials=500 study.gpus=[0,1,2,3] "
    "study.trials_per_gpu=2"
)
REPLAY_DOWNLOAD = (
    "MLFLOW_TRACKING_URI=sqlite:///runs/mlflow.db mlflow artifacts download --run-id <RUN_ID> "
    "--artifact-path config.yaml --dst-path runs/replay"
)

CASES: dict[str, Case] = {
    OWN_DATA: Case(expect=(lambda result, ws: (ws.work / OWN_MODEL / "data" / "tiny_rgb.npz").is_file(),)),
    # The overrides go inside the subshell's parentheses
    OWN_TRAIN: Case(
        needs=(OWN_DATA,), replace=(("epochs=5)", "epochs=5 trainer.epochs=2)"),), expect=(own_model_run,)
    ),
    OWN_SWEEP: Case(
        needs=(OWN_DATA,),
        replace=(("n_workers=2)", "n_workers=2 trainer.epochs=1 study.n_trials=4)"),),
        expect=(own_model_study,),
    ),
    # Start here: CI installed the project (.ci/run); the study runs as typed, all 12 trials
    FIRST_STUDY: Case(replace=((INSTALL_FIRST, ""),), expect=(study_done("default", 12),)),
    CONFIRM: Case(needs=(FIRST_STUDY,), expect=(confirmed("default", top=2, seeds=3),), slow=True),
    SERVE: Case(
        replace=(("-p 5001", "-p {{port}}"),),
        needs=(FIRST_STUDY,),
        server="/ping",
        expect=(serves_raw_digits,),
        slow=True,
    ),
    CURL_DIGIT: Case(skip="sent by the case of the serve command above, to the server it starts"),
    FIRST_RUN: Case(expect=(finished_run(test_accuracy_at_least=0.95),)),
    "python -m study.train data.path=../shared/data/mnist": Case(
        append=TINY, expect=(finished_run(),), slow=True
    ),
    "python -m study.train": Case(append=f"{LOCAL_MNIST} {TINY}", expect=(finished_run(),), slow=True),
    'pip install -e ".[dev]" && python -m pytest': Case(skip=f"{INSTALL}; {SUITE}"),
    "mlflow ui --backend-store-uri sqlite:///runs/mlflow.db": Case(
        append="--port {port}",
        needs=(FIRST_RUN,),
        server="/health",
        expect=(mlflow_ui_shows_the_run,),
        slow=True,
    ),
    # Training runs
    "python -m study.train model=softmax optimizer=sgd optimizer.learning_rate=0.5 trainer.epochs=3": Case(
        append=f"{LOCAL_MNIST} {TINY}", expect=(finished_run(),), slow=True
    ),
    "python -m study.train model=cnn model.dropout_rate=0.4 optimizer=adam data=fashion_mnist": Case(
        append=f"{LOCAL_MNIST} {TINY}", expect=(finished_run(),), slow=True
    ),
    "python -m study.train trainer.max_steps=1000 trainer.batch_size=50": Case(
        append=f"{LOCAL_MNIST} {TINY} trainer.max_steps=8", expect=(finished_run(),), slow=True
    ),
    "python -m study.train --cfg job": Case(expect=(prints_config,)),
    "KERAS_BACKEND=jax python -m study.train": Case(
        append=f"{LOCAL_MNIST} {TINY}", expect=(finished_run(backend="jax"),), slow=True
    ),
    # Replay
    REPLAY_DOWNLOAD: Case(
        needs=(FIRST_RUN,),
        replace=(("<RUN_ID>", "{run_id}"),),
        expect=(writes("runs/replay/config.yaml"),),
        slow=True,
    ),
    "python -m study.train --config-path runs/replay --config-name config": Case(
        needs=(REPLAY_DOWNLOAD, FIRST_RUN), expect=(finished_run(), same_metrics_as(FIRST_RUN)), slow=True
    ),
    # Studies
    MNIST_STUDY: Case(append=SWEEP, expect=(study_done("mnist", 2),), slow=True),
    CNN_LR: Case(append=f"{LOCAL_MNIST} {SWEEP}", expect=(study_done("cnn-lr", 2),), slow=True),
    "python -m study.sweep study.name=asha scheduler=asha": Case(
        append=f"{LOCAL_MNIST} {SWEEP} trainer.epochs=3",
        expect=(study_done("asha", 2, exact=False),),
        slow=True,
    ),
    ASHA_STEPS: Case(
        append=f"{LOCAL_MNIST} {SWEEP} trainer.epochs=3",  # rungs of 2, 6 and 18 steps
        expect=(study_done("asha-steps", 2, exact=False),),
        slow=True,
    ),
    "python -m study.sweep data.path=../shared/data/mnist study.name=parallel study.n_workers=2": Case(
        append=f"{SWEEP} study.n_trials=4", expect=(study_done("parallel", 4, workers=2),), slow=True
    ),
    "python -m study.sweep study.gpus=[0,1] study.trials_per_gpu=2": Case(
        append=f"{LOCAL_MNIST} {SWEEP} study.name=gpus",
        needs_gpus=2,
        expect=(study_done("gpus", 2, 4),),
        slow=True,
    ),
    "python -m study.sweep study.name=cnn-lr study.n_trials=80 search_space=cnn_only trainer.epochs=9": Case(
        append=f"{LOCAL_MNIST} {SWEEP} study.n_trials=3",
        needs=(CNN_LR,),
        expect=(study_done("cnn-lr", 3),),
        slow=True,
    ),
    'pip install -e ".[dashboard]" && optuna-dashboard sqlite:///runs/optuna.db': Case(
        replace=((DASHBOARD_INSTALL, ""),),  # CI installs .[dev], which holds .[dashboard]
        append="--port {port}",
        needs=(FIRST_STUDY,),
        server="/",
        needs_executable="optuna-dashboard",
        expect=(optuna_dashboard_lists_the_study,),
        slow=True,
    ),
    # Running on many machines
    'pip install -e ".[postgres]"': Case(skip=INSTALL),
    MLFLOW_SERVER_ON_POSTGRES: Case(skip=SCALE_OUT),
    MLFLOW_LOGIN: Case(skip=SCALE_OUT),
    SWEEP_ON_SERVERS: Case(skip=SCALE_OUT),
    'pip install -e ".[postgres,slurm]"': Case(skip=INSTALL),
    SLURM_SWEEP: Case(skip=ON_SLURM),
    'pip install -e ".[postgres,ray]"': Case(skip=INSTALL),
    RAY_SWEEP: Case(skip=ON_RAY),
    # Reproduce
    "python -m study.reproduce 3f2a...": Case(
        needs=(FIRST_RUN,), replace=(("3f2a...", "{run_id}"),), expect=(reproduced,)
    ),
    "python -m study.reproduce 3f2a... --tolerance 1e-3": Case(
        needs=(FIRST_RUN,),
        replace=(("3f2a...", "{run_id}"),),
        expect=(prints("reproduced: largest difference"),),
        slow=True,
    ),
    "python -m study.reproduce 3f2a... --seeds 5": Case(
        append="--seeds 2",
        needs=(FIRST_RUN,),
        replace=(("3f2a...", "{run_id}"),),
        expect=(seed_variance_logged,),
        slow=True,
    ),
    "python -m study.reproduce 3f2a... --tracking-uri http://mlflow-host:5000": Case(
        needs=(FIRST_RUN,),
        replace=(("3f2a...", "{run_id}"), ("http://mlflow-host:5000", "{{tracking_server}}")),
        expect=(reproduced,),
        slow=True,
    ),
    # Report
    "python -m study.report --study default": Case(
        needs=(FIRST_STUDY,), expect=(report_of("default", "default"),), slow=True
    ),
    "python -m study.report --study cnn-lr --study default": Case(
        needs=(CNN_LR, FIRST_STUDY),
        expect=(report_of("cnn-lr_vs_default", "cnn-lr", "default"),),
        slow=True,
    ),
    "python -m study.report --experiment study --markdown": Case(
        needs=(FIRST_RUN,), expect=(report_of("study", markdown=True),), slow=True
    ),
    # Speed
    "python bench/run.py --data-path ../shared/data/mnist": Case(skip=QUICK_BENCH),
    "python bench/search.py --data-path ../shared/data/mnist": Case(skip=QUICK_SEARCH),
    MEASURED_SEARCH: Case(skip=QUICK_SEARCH),
    FULL_MNIST_RACE: Case(
        append="--quick --out {work}/runs/search-full",
        expect=(search_results("asha-steps,median,hyperband", "search-full"),),
        needs_executable="taskset",
        slow=True,
    ),
    FULL_MNIST_MORE_SEEDS: Case(skip=QUICK_SEARCH),
    PEER_RACE: Case(skip="tests/e2e/test_bench.py runs its three strategies --quick, side by side"),
    FULL_MNIST_PEER_RACE: Case(skip="tests/e2e/test_bench.py runs its two strategies --quick, side by side"),
    FULL_MNIST_PEER_MORE: Case(skip="tests/e2e/test_bench.py runs its two strategies --quick, side by side"),
    FLOOR_STRAIGHT: Case(
        skip="trains 4 epochs of all of MNIST; the case of "
        "`python -m study.train data.path=../shared/data/mnist` runs the same training on tiny data"
    ),
    FLOOR_BASE_CONFIG_FIRST: Case(skip=QUICK_SEARCH),
    FLOOR_SHORT_FIRST_RUNG: Case(skip=QUICK_SEARCH),
    GPU_BENCH: Case(skip="needs a GPU and JAX's CUDA wheels: this project's CI machine has no GPU"),
    "python bench/run.py": Case(skip=f"{DOWNLOAD}; {QUICK_BENCH}"),
    "python bench/run.py --quick": Case(skip="tests/e2e/test_bench.py runs it and checks its tables"),
    "python bench/search.py --quick": Case(skip=QUICK_SEARCH),
    # Development
    "ruff check study tests bench && ruff format study tests bench": Case(
        skip="CI runs ruff check and ruff format --check (.ci/run); running it here would rewrite files"
    ),
    "python -m pytest -m slow": Case(skip=SUITE),
}

README_TEXT = "\n".join(document.read_text() for document in DOCUMENTS)


def command_params() -> list:
    params = []
    for command in readme_commands(README_TEXT):
        case = CASES.get(command)
        marks = [pytest.mark.slow] if case is not None and case.slow else []
        params.append(pytest.param(command, marks=marks, id=command[:80]))
    return params


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_idx_dir) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("readme"), tiny_idx_dir)


def test_every_case_is_a_readme_command():
    """A case whose command left README.md is stale: README and CASES say the same."""
    stale = sorted(set(CASES) - set(readme_commands(README_TEXT)))
    assert not stale, f"CASES has commands README.md no longer shows: {stale}"


@pytest.mark.parametrize("command", command_params())
def test_readme_command(command: str, workspace: Workspace):
    case = CASES.get(command)
    assert case is not None, (
        f"README.md shows a command tests/e2e/test_readme.py does not know how to run: {command!r}; "
        "add a line to CASES (appended overrides, what it prints or writes, or why it is skipped)"
    )
    if case.skip:
        pytest.skip(case.skip)
    if case.needs_executable and shutil.which(case.needs_executable, path=workspace.env["PATH"]) is None:
        pytest.skip(f"{case.needs_executable} is not installed (README: if installed)")
    if case.needs_gpus and len(visible_gpus()[0]) < case.needs_gpus:
        # Without the GPUs it names, the command must be refused before anything is written.
        result = workspace.run(command)
        refused("study.gpus")(result, workspace)
        assert not (workspace.work / "runs" / "studies" / "gpus").exists()
        return
    if case.server:
        port = free_port()
        with workspace.serve(command, port):
            for expect in case.expect:
                expect(None, workspace, port)
        return
    result = workspace.run(command)
    assert result.returncode == case.exit_code, result.describe()
    for expect in case.expect:
        expect(result, workspace)


@pytest.mark.parametrize(("command", "printed"), readme_transcripts(README_TEXT))
def test_readme_transcript(command: str, printed: list[str], workspace: Workspace):
    """A `$ command` README shows with its output prints exactly that (error lines: exit 2)."""
    result = workspace._run(command)
    lines = [line.strip() for line in result.output.splitlines() if line.strip()]
    assert lines[-len(printed) :] == printed, result.describe()
    if any(": error:" in line for line in printed):
        assert result.returncode == 2, result.describe()


def test_readme_commands_are_read_as_typed():
    text = "\n".join(
        [
            "```bash",
            "A=1 \\",
            "    b --x 'keep # this'   # a comment",
            "# a comment line",
            "c  d",
            "```",
            "```",
            "$ e f",
            "e: error: g",
            "```",
        ]
    )
    assert readme_commands(text) == ["A=1 b --x 'keep # this'", "c d"]
    assert readme_transcripts(text) == [("e f", ["e: error: g"])]


def test_readme_python_cell(tmp_path):
    """README's code cell runs as written in a fresh process, in a folder of its own, and writes
    only under the runs_dir it names."""
    cell = re.search(r"#+ From Python\n.*?```python\n(.*?)```", README_TEXT, re.S)[1]
    runs = tmp_path / "notebook-runs"
    (tmp_path / "notebooks").mkdir()
    script = tmp_path / "notebooks" / "cell.py"
    script.write_text(cell.replace("/tmp/study-notebook", str(runs)))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HYDRA_FULL_ERROR", "MLFLOW_TRACKING_URI")
    }
    done = subprocess.run(
        [sys.executable, str(script)], cwd=script.parent, capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^test_accuracy 0\.\d+", done.stdout, re.M) and "winner" in done.stdout
    assert (runs / "mlflow.db").is_file() and (runs / "optuna.db").is_file()
    assert sorted(path.name for path in script.parent.iterdir()) == ["cell.py"]  # no runs/ of its own
