"""Time to a good model: search strategies on the same wall budget and the same space.

    python bench/search.py --data-path ../shared/data/mnist          # MNIST: 5 x 2 x 3 studies of 20 min
    python bench/search.py --quick                                    # digits, tiny budget: about 3 min

Each study is a real `python -m study.sweep` in its own process and stores, one worker, given
`--budget` seconds (study.timeout, then Ctrl-C at the budget: a trial still running is cut);
`--parallel N` runs N studies at once, each pinned to a CPU core of its own.
Strategies: `none` (every trial trains all its epochs), `median` (Optuna's MedianPruner),
`hyperband` (Optuna's HyperbandPruner), `asha` (scheduler=asha: promotion from checkpoints,
rungs of 1, 3, 9 epochs), `asha-steps` (the same with a first rung of `--first-rung-steps`
optimizer steps); each with the samplers of `--samplers` (TPE, random) and `--seeds` seeds
(sampler and trainer seed, from `--first-seed` on). `keras-tuner` is the peer a Keras user
would pick, Keras Tuner's Hyperband (factor 3) over the same models, space and data split
(bench/keras_tuner_search.py: needs `pip install keras-tuner`, in the dev extra), once per
seed (sampler `hyperband` in the tables). The space: softmax or the Deep-MNIST CNN x
SGD / Adam / RMSProp x log learning rate 1e-4..1 x dropout (CNN), batch 100, `--epochs` (9) at
most, no enqueued baseline.

The score over time is the best validation accuracy any run had logged by then (MLflow's
per-epoch metrics and their timestamps, from the sweep's start), whatever the strategy did with
it. Writes to --out: `curves.csv` (every point) and `studies.csv` (configurations per study),
both after every study, so the same command with the same --out goes on where a cut-short
bench stopped, and one with more strategies or seeds runs only those; `summary.csv` (per
strategy and sampler: median over seeds of the time to `--target` and of the best at the
budget; seeds that reached the target), `best_so_far.png`, `logs/`; prints the summary table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import matplotlib.pyplot as plt
import pandas as pd
from mlflow import MlflowClient
from tabulate import tabulate

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
STRATEGIES = {
    "none": ["pruner=none", "scheduler=none"],
    "median": ["pruner=median", "scheduler=none"],
    "hyperband": ["pruner=hyperband", "scheduler=none"],
    "asha": ["pruner=none", "scheduler=asha"],
    # ASHA with a first rung shorter than an epoch (--first-rung-steps optimizer steps).
    "asha-steps": ["pruner=none", "scheduler=asha", "scheduler.resource_unit=steps"],
    # The same, its first configurations spread over the space (sampler.startup=stratified).
    "asha-steps-stratified": [
        "pruner=none",
        "scheduler=asha",
        "scheduler.resource_unit=steps",
        "sampler.startup=stratified",
    ],
    # The peer: Keras Tuner's Hyperband (bench/keras_tuner_search.py), its own random sampling.
    "keras-tuner": None,
}
DEFAULT_STRATEGIES = ("none", "median", "hyperband", "asha", "asha-steps", "keras-tuner")
MODEL_BASED = ("tpe", "gp", "cmaes")  # the samplers with a startup (sampler.startup)
PEER_SAMPLER = "hyperband"  # keras-tuner's rows in the tables: one study per seed, whatever --samplers
SPACE = """\
# bench/search.py: softmax or the Deep-MNIST CNN x SGD/Adam/RMSProp x learning rate x dropout.
model: {type: categorical, choices: [softmax, cnn]}
optimizer: {type: categorical, choices: [sgd, adam, rmsprop]}
optimizer.learning_rate: {type: float, low: 1.0e-4, high: 1.0, log: true}
model.dropout_rate: {type: float, low: 0.0, high: 0.7, when: {model: [cnn]}}
"""
STOP_GRACE_SECONDS = 120  # after Ctrl-C, before SIGKILL


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-path", help="MNIST IDX folder or .npz (default: download through Keras)")
    parser.add_argument("--budget", type=float, default=1200.0, help="seconds per study (default: 1200)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per strategy and sampler (default: 3)")
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="the seeds are FIRST_SEED .. FIRST_SEED + SEEDS - 1 (default: 0): more seeds for an "
        "earlier bench, on another machine or in another --out",
    )
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES), help="default: %(default)s")
    parser.add_argument("--samplers", default="tpe,random", help="default: %(default)s")
    parser.add_argument("--epochs", type=int, default=9, help="epochs of a full trial (default: 9)")
    parser.add_argument("--target", type=float, default=0.98, help="val_accuracy to reach (default: 0.98)")
    parser.add_argument(
        "--also-target", default="", help="more val_accuracy targets for the table, comma-separated"
    )
    parser.add_argument(
        "--override", action="append", default=[], help="a config override for every study (repeatable)"
    )
    parser.add_argument(
        "--first-rung-steps",
        type=int,
        default=183,
        help="asha-steps: optimizer steps of the first rung (default: 183, a third of an epoch of "
        "MNIST's 55,000 training images at batch 100)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="studies at once, each pinned to a CPU core of its own with taskset (default: 1, "
        "one study at a time on the whole machine)",
    )
    parser.add_argument("--quick", action="store_true", help="digits, 20 s a study, one seed, TPE: ~3 min")
    parser.add_argument("--out", type=Path, help="results folder (default: runs/bench/search-<time>)")
    args = parser.parse_args(argv)
    if args.quick:
        args.budget, args.seeds, args.samplers, args.target = 20.0, 1, "tpe", 0.9
        args.first_rung_steps = 4  # a third of an epoch of digits
    args.strategies = [s for s in args.strategies.split(",") if s]
    args.samplers = [s for s in args.samplers.split(",") if s]
    unknown = [s for s in args.strategies if s not in STRATEGIES]
    if unknown:
        parser.error(f"--strategies: expected some of {', '.join(STRATEGIES)}, got {', '.join(unknown)}")
    stratified = [s for s in args.strategies if "sampler.startup=stratified" in (STRATEGIES[s] or [])]
    if stratified and any(sampler not in MODEL_BASED for sampler in args.samplers):
        parser.error(f"--strategies {stratified[0]}: expected --samplers of {', '.join(MODEL_BASED)} only")
    if args.seeds < 1:
        parser.error(f"--seeds: expected 1 or more, got {args.seeds}")
    if args.first_seed < 0:
        parser.error(f"--first-seed: expected 0 or more, got {args.first_seed}")
    if args.budget <= 0:
        parser.error(f"--budget: expected > 0 seconds, got {args.budget:g}")
    if not 1 <= args.parallel <= (os.cpu_count() or 1):
        parser.error(f"--parallel: expected 1 to {os.cpu_count()} (the CPU cores), got {args.parallel}")
    if args.out is None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        args.out = PROJECT_DIR / "runs" / "bench" / f"search-{stamp}"
    return args


def study_overrides(
    args: argparse.Namespace, strategy: str, sampler: str, seed: int, runs: Path
) -> list[str]:
    data = ["data=digits"] if args.quick else [f"data.path={args.data_path}"] if args.data_path else []
    return [
        f"hydra.searchpath=[file://{args.out / 'conf'}]",
        "search_space=bench",
        *data,
        f"runs_dir={runs}",
        "study.name=bench",
        "study.n_trials=100000",  # the budget ends the study
        f"study.timeout={args.budget}",
        "study.enqueue_defaults=false",
        f"sampler={sampler}",
        f"sampler.seed={seed}",
        f"trainer.seed={seed}",
        f"trainer.epochs={args.epochs}",
        "trainer.batch_size=100",
        "trainer.verbose=0",
        *STRATEGIES[strategy],
        *([f"scheduler.min_resource={args.first_rung_steps}"] if strategy.startswith("asha-steps") else []),
        *args.override,
    ]


def peer_arguments(args: argparse.Namespace, seed: int, runs: Path) -> list[str]:
    """bench/keras_tuner_search.py's arguments: the same data, split, epochs and batch."""
    data = ["data=digits"] if args.quick else [f"data.path={args.data_path}"] if args.data_path else []
    return [
        *("--log", str(runs / "epochs.jsonl"), "--directory", str(runs / "keras_tuner")),
        *("--seed", str(seed), "--epochs", str(args.epochs), "--batch-size", "100"),
        *data,
        f"trainer.seed={seed}",
        *args.override,
    ]


def run_study(
    args: argparse.Namespace, strategy: str, sampler: str, seed: int, core: int | None = None
) -> tuple[list[dict], int]:
    """One study, stopped at the budget (on CPU core `core` only, when given); returns its
    best-so-far curve and the configurations it tried."""
    name = f"{strategy}-{sampler}-{seed}"
    runs = args.out / "runs" / name
    if STRATEGIES[strategy] is None:
        runs.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            str(BENCH_DIR / "keras_tuner_search.py"),
            *peer_arguments(args, seed, runs),
        ]
    else:
        command = [sys.executable, "-m", "study.sweep", *study_overrides(args, strategy, sampler, seed, runs)]
    if core is not None:
        command = ["taskset", "--cpu-list", str(core), *command]
    log_file = args.out / "logs" / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": f"{PROJECT_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    print(f"{name}: {' '.join(command)}", flush=True)
    with open(log_file, "w") as log:
        start = time.time()
        process = subprocess.Popen(
            command, cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            process.wait(timeout=args.budget + 5)
        except subprocess.TimeoutExpired:
            stop(process)
    try:
        if STRATEGIES[strategy] is None:
            return measure_peer(runs, start, args.budget, name)
        return measure(runs, start, args.budget, name)
    except RuntimeError as error:  # one broken study does not cost the others' results
        print(f"{name}: {error}", flush=True)
        return [], 0


def stop(process: subprocess.Popen) -> None:
    """Ctrl-C to the study's process group (driver and workers), then SIGKILL if it lingers."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def measure(runs: Path, start: float, budget: float, name: str) -> tuple[list[dict], int]:
    """A study's best-so-far curve, (seconds since the start, best val_accuracy so far) at every
    logged validation, and its MLflow child runs: one per configuration tried (with asha a run
    spans its rungs)."""
    client = MlflowClient(tracking_uri=f"sqlite:///{runs}/mlflow.db")
    experiment = client.get_experiment_by_name("study")
    if experiment is None:
        raise RuntimeError(f"{name}: no MLflow experiment was written; see logs/{name}.log")
    points = []
    children = [
        run
        for run in client.search_runs([experiment.experiment_id], max_results=50000)
        if run.data.tags.get("study.role") != "parent"
    ]
    for run in children:
        for metric in client.get_metric_history(run.info.run_id, "val_accuracy"):
            seconds = metric.timestamp / 1000.0 - start
            if seconds <= budget:
                points.append((seconds, metric.value))
    return best_so_far(points), len(children)


def measure_peer(runs: Path, start: float, budget: float, name: str) -> tuple[list[dict], int]:
    """measure() for Keras Tuner: its epochs' log, and the distinct configurations its trials
    trained (a Hyperband trial that goes on from an earlier one's weights is the same one)."""
    log = runs / "epochs.jsonl"
    if not log.is_file():
        raise RuntimeError(f"{name}: Keras Tuner logged no epoch; see logs/{name}.log")
    points = [
        (record["time"] - start, record["val_accuracy"])
        for record in map(json.loads, log.read_text().splitlines())
        if record["time"] - start <= budget
    ]
    configurations = set()
    for trial in (runs / "keras_tuner").glob("bench/trial_*/trial.json"):
        values = json.loads(trial.read_text())["hyperparameters"]["values"]
        configurations.add(tuple(sorted((k, v) for k, v in values.items() if not k.startswith("tuner/"))))
    return best_so_far(points), len(configurations)


def best_so_far(points: list[tuple[float, float]]) -> list[dict]:
    """The curve's rows: (seconds, best so far) at each improvement."""
    best = 0.0
    rows = []
    for seconds, value in sorted(points):
        if value > best:
            best = value
            rows.append({"seconds": round(seconds, 2), "best_val_accuracy": best})
    return rows


def summarize(args: argparse.Namespace, curves: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for strategy, sampler in searches(args):
        group = curves[(curves["strategy"] == strategy) & (curves["sampler"] == sampler)]
        seeds = [group[group["seed"] == seed] for seed in seed_range(args)]
        finals = [points["best_val_accuracy"].max() if len(points) else 0.0 for points in seeds]
        to_target = {target: [seconds_to(points, target) for points in seeds] for target in targets(args)}
        counts = trials[(trials["strategy"] == strategy) & (trials["sampler"] == sampler)]
        rows.append(
            {
                "strategy": strategy,
                "sampler": sampler,
                **{f"median_s_to_{target}": statistics.median(times) for target, times in to_target.items()},
                "seeds_reaching_target": f"{sum(t != math.inf for t in to_target[args.target])}/{args.seeds}",
                "median_best_at_budget": statistics.median(finals),
                "best_at_budget_per_seed": " ".join(f"{value:.4f}" for value in finals),
                "median_configurations": statistics.median(counts["configurations"]),
            }
        )
    return pd.DataFrame(rows)


def searches(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(strategy, sampler) of every search the bench compares, in --strategies' order; the peer
    has its own sampling, so one search whatever --samplers."""
    return [
        (strategy, sampler)
        for strategy in args.strategies
        for sampler in ([PEER_SAMPLER] if STRATEGIES[strategy] is None else args.samplers)
    ]


def seed_range(args: argparse.Namespace) -> range:
    return range(args.first_seed, args.first_seed + args.seeds)


def seconds_to(points: pd.DataFrame, target: float) -> float:
    """When a best-so-far curve first reached `target` (inf: never)."""
    reached = points[points["best_val_accuracy"] >= target]["seconds"]
    return float(reached.min()) if len(reached) else math.inf


def targets(args: argparse.Namespace) -> list[float]:
    return [args.target, *(float(value) for value in args.also_target.split(",") if value)]


def plot(args: argparse.Namespace, curves: pd.DataFrame) -> Path:
    figure, axes = plt.subplots(1, len(args.samplers), figsize=(7 * len(args.samplers), 5), squeeze=False)
    colors = dict(
        zip(
            STRATEGIES,
            ("tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "black"),
            strict=True,
        )
    )
    for axis, sampler in zip(axes[0], args.samplers, strict=True):
        # The peer's curves on every sampler's panel: it is what each is measured against.
        for strategy, its_sampler in [(s, m) for s, m in searches(args) if m in (sampler, PEER_SAMPLER)]:
            mine = curves[(curves["strategy"] == strategy) & (curves["sampler"] == its_sampler)]
            for seed in seed_range(args):
                points = mine[mine["seed"] == seed]
                if points.empty:
                    continue
                xs = [*points["seconds"], args.budget]
                ys = [*points["best_val_accuracy"], points["best_val_accuracy"].iloc[-1]]
                axis.step(xs, ys, where="post", color=colors[strategy], alpha=0.8,
                          label=strategy if seed == args.first_seed else None)  # fmt: skip
        axis.axhline(args.target, color="black", linewidth=0.5, linestyle="--")
        low = max(0.0, curves["best_val_accuracy"].quantile(0.1) - 0.02) if len(curves) else 0.0
        axis.set(title=f"sampler={sampler}", xlabel="seconds", ylabel="best val_accuracy so far")
        axis.set_ylim(low, 1.0)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="lower right")
    figure.suptitle(f"best validation accuracy over time, {args.seeds} seed(s), budget {args.budget:.0f} s")
    figure.tight_layout()
    path = args.out / "best_so_far.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


class Results:
    """What the bench measured: every study's curve and configurations, saved to --out after each
    study (curves.csv, studies.csv), so a bench cut short, or one given more strategies, runs
    again with the same --out and measures only what is missing."""

    CURVE_COLUMNS: ClassVar[list[str]] = ["strategy", "sampler", "seed", "seconds", "best_val_accuracy"]
    STUDY_COLUMNS: ClassVar[list[str]] = ["strategy", "sampler", "seed", "configurations"]

    def __init__(self, out: Path):
        self.curves_file, self.studies_file = out / "curves.csv", out / "studies.csv"
        self.curves = self._read(self.curves_file, self.CURVE_COLUMNS)
        self.studies = self._read(self.studies_file, self.STUDY_COLUMNS)
        self.lock = threading.Lock()

    @staticmethod
    def _read(path: Path, columns: list[str]) -> pd.DataFrame:
        return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=columns)

    def has(self, seed: int, sampler: str, strategy: str) -> bool:
        studies = self.studies
        mine = (studies["seed"] == seed) & (studies["sampler"] == sampler) & (studies["strategy"] == strategy)
        return bool(mine.any())

    def add(self, seed: int, sampler: str, strategy: str, points: list[dict], configurations: int) -> None:
        key = {"strategy": strategy, "sampler": sampler, "seed": seed}
        with self.lock:
            rows = pd.DataFrame([{**key, **point} for point in points], columns=self.CURVE_COLUMNS)
            self.curves = pd.concat([self.curves, rows], ignore_index=True) if len(rows) else self.curves
            study = pd.DataFrame([{**key, "configurations": configurations}], columns=self.STUDY_COLUMNS)
            self.studies = pd.concat([self.studies, study], ignore_index=True)
            self.curves.to_csv(self.curves_file, index=False)
            self.studies.to_csv(self.studies_file, index=False)

    def of(self, studies: list[tuple[int, str, str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The curves and study rows of `studies` (this bench's seeds, samplers and strategies)."""
        keys = {(seed, sampler, strategy) for seed, sampler, strategy in studies}

        def mine(frame: pd.DataFrame) -> pd.DataFrame:
            rows = zip(frame["seed"], frame["sampler"], frame["strategy"], strict=True)
            return frame[pd.Series([key in keys for key in rows], index=frame.index, dtype=bool)]

        return mine(self.curves), mine(self.studies)


def run_studies(args: argparse.Namespace, studies: list[tuple[int, str, str]], results: Results) -> None:
    """Run `studies` into `results`; --parallel of them at a time, each on a core of its own."""
    free_cores: queue.Queue[int | None] = queue.Queue()
    for core in range(args.parallel) if args.parallel > 1 else [None]:
        free_cores.put(core)

    def on_a_free_core(study: tuple[int, str, str]) -> None:
        seed, sampler, strategy = study
        core = free_cores.get()
        try:
            points, configurations = run_study(args, strategy, sampler, seed, core)
        finally:
            free_cores.put(core)
        results.add(seed, sampler, strategy, points, configurations)

    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(on_a_free_core, studies))


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    (args.out / "conf" / "search_space").mkdir(parents=True, exist_ok=True)
    (args.out / "conf" / "search_space" / "bench.yaml").write_text(SPACE)
    (args.out / "logs").mkdir(exist_ok=True)
    # Seeds outermost: a cut-short bench still compares strategies.
    studies = [(seed, sampler, strategy) for seed in seed_range(args) for strategy, sampler in searches(args)]
    results = Results(args.out)
    to_run = [study for study in studies if not results.has(*study)]
    if len(to_run) < len(studies):
        print(
            f"{len(studies) - len(to_run)} studies measured earlier in {args.out}: not run again", flush=True
        )
    run_studies(args, to_run, results)
    curves, trials = results.of(studies)
    summary = summarize(args, curves, trials)
    summary.to_csv(args.out / "summary.csv", index=False)
    plot(args, curves)
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "date": str(datetime.date.today())}
    (args.out / "settings.json").write_text(json.dumps({**settings, "machine": machine}, indent=2))
    print(tabulate(summary, headers="keys", tablefmt="github", showindex=False, floatfmt=".4f"))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
