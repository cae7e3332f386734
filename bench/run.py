"""The benchmark: how fast are tracked runs and trials, side by side with bare Keras.

    python bench/run.py --data-path ../shared/data/mnist            # about 15 min on 2 CPU cores
    python bench/run.py --data-path ../shared/data/mnist --tables segments   # that table alone
    KERAS_BACKEND=jax python bench/run.py --data-path ... --gpu 0 --slots 1,2,4,8 \\
        --throughput-model cnn --override trainer.steps_per_execution=50

Three measurements, each side by side in the same run:

1. Per model: a bare `keras.Model.fit` (bench/bare_fit.py) and the same training as a tracked
   `study.train` run (bench/tracked_fit.py), each in a fresh process, alternating, --rounds
   times; medians, their ratio, and training images per second.
2. Fixed overhead per trial: a sweep of trials so small that training is negligible (digits,
   softmax, one epoch) with one worker; the time from one trial's start to the next, minus
   the bare fit of the same training (repeated in one process, as a worker would). The same
   per segment of scheduler=asha with rungs in optimizer steps, new configurations and
   promotions apart: softmax on digits (rungs of 4, 12, 36 steps) and the Deep-MNIST CNN on
   the bench's data (10, 30, 90 steps), minus the steps' own time from bare fits at two sizes.
3. Sweep throughput: one fixed small study run with 1 and n workers (CPU cores), or with 1..k
   trials sharing one GPU (--gpu, --slots): trials per hour.

Prints the tables and writes results.json and one CSV per table to --out.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from mlflow import MlflowClient
from optuna.trial import TrialState
from tabulate import tabulate

from study.core.names import CONFIG_ATTR, MLFLOW_RUN_ATTR

from common import read_result, steady_median

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
MODELS = ("softmax", "mlp", "cnn")
SECONDS_PER_HOUR = 3600.0
UNMATCHED_KEYS = ("trainer.max_steps", "trainer.verbose")  # bare_fit.py trains whole epochs, silently


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-path", help="MNIST IDX folder or .npz (default: download through Keras)")
    parser.add_argument("--models", default=",".join(MODELS), help="models of table 1 (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each table-1 run (default: 1)")
    parser.add_argument("--rounds", type=int, default=3, help="bare/tracked pairs per model (default: 3)")
    parser.add_argument("--overhead-trials", type=int, default=20, help="trials of study 2 (default: 20)")
    parser.add_argument("--throughput-trials", type=int, default=12, help="trials of study 3 (default: 12)")
    parser.add_argument("--throughput-model", default="mlp", help="model of study 3 (default: mlp)")
    parser.add_argument("--workers", help="worker counts of study 3 on CPU (default: 1,<cores>)")
    parser.add_argument("--gpu", type=int, help="run study 3 on this GPU, with --slots trials at once")
    parser.add_argument("--slots", default="1,2,4", help="trials per GPU for --gpu (default: %(default)s)")
    parser.add_argument(
        "--override", action="append", default=[], help="a config override for every run (repeatable)"
    )
    parser.add_argument(
        "--tables", default=",".join(TABLES), help="which tables to measure (default: %(default)s)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: digits data, 1 round, few trials")
    parser.add_argument("--out", type=Path, help="results folder (default: runs/bench/<time>)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.overhead_trials, args.throughput_trials = 1, 4, 4
    args.tables = [name for name in args.tables.split(",") if name]
    unknown = [name for name in args.tables if name not in TABLES]
    if unknown or not args.tables:
        parser.error(f"--tables: expected some of {', '.join(TABLES)}, got {','.join(unknown) or 'none'}")
    if args.overhead_trials < 3:
        parser.error("--overhead-trials: expected 3 or more (the first trial is left out)")
    if args.rounds < 1:
        parser.error("--rounds: expected 1 or more")
    if any(override.split("=", 1)[0].lstrip("+~") in UNMATCHED_KEYS for override in args.override):
        parser.error(f"--override: the bare fit does not do {', '.join(UNMATCHED_KEYS)}; leave them out")
    if args.out is None:
        args.out = PROJECT_DIR / "runs" / "bench" / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    args.out = args.out.resolve()
    return args


def data_overrides(args: argparse.Namespace) -> list[str]:
    if args.quick:
        return ["data=digits"]
    return [f"data.path={Path(args.data_path).resolve()}"] if args.data_path else ["data=mnist"]


def run_script(args: argparse.Namespace, script: str, overrides: list[str], repeat: int = 1) -> dict:
    """One bench script in a fresh interpreter; its result line as a dict."""
    command = [sys.executable, str(BENCH_DIR / script), "--repeat", str(repeat), *overrides]
    return read_result(run_command(args, command, script.removesuffix(".py")).stdout)


def run_command(args: argparse.Namespace, command: list[str], name: str) -> subprocess.CompletedProcess:
    log_file = args.out / "logs" / f"{name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_DIR, env=env)
    with log_file.open("a") as log:
        log.write(f"$ {' '.join(command)}\n{process.stdout}\n{process.stderr}\n")
    if process.returncode != 0:
        raise RuntimeError(f"{name} failed with exit status {process.returncode}; see {log_file}")
    return process


def prepare_stores(args: argparse.Namespace) -> None:
    """Create the benchmark's MLflow store up front: making a new database's tables (about
    2 s, once per store) would otherwise be billed to the first tracked run."""
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    MlflowClient(tracking_uri=tracking_uri(args)).search_experiments()


def tracking_uri(args: argparse.Namespace) -> str:
    return f"sqlite:///{args.out / 'runs' / 'mlflow.db'}"  # the default of conf/mlflow/local.yaml


def compare_models(args: argparse.Namespace) -> list[dict]:
    """Table 1: bare fit against tracked run, per model."""
    rows = []
    for model in args.models.split(","):
        overrides = [
            *data_overrides(args),
            f"model={model}",
            f"trainer.epochs={args.epochs}",
            "trainer.verbose=0",
            f"runs_dir={args.out / 'runs'}",
            *args.override,
        ]
        bare, tracked = [], []
        for round_index in range(args.rounds):
            # Alternate which goes first, so a slow spell of a shared machine hits both.
            pair = [("bare_fit.py", bare), ("tracked_fit.py", tracked)]
            for script, results in pair if round_index % 2 == 0 else reversed(pair):
                results.append(run_script(args, script, overrides))
            print(f"  {model}: round {round_index + 1}/{args.rounds} done", flush=True)
        rows.append(model_row(model, bare, tracked))
    return rows


def model_row(model: str, bare: list[dict], tracked: list[dict]) -> dict:
    """Best of the rounds (timeit's advice: slower rounds measure the machine, not the code)
    and the medians beside them."""
    bare_seconds = [result["seconds"][0] for result in bare]
    tracked_seconds = [result["seconds"][0] for result in tracked]
    images = bare[0]["train_examples"] * bare[0]["epochs"]
    return {
        "model": model,
        "epochs": bare[0]["epochs"],
        "train_examples": bare[0]["train_examples"],
        "rounds": len(bare),
        "bare_best_s": min(bare_seconds),
        "tracked_best_s": min(tracked_seconds),
        "ratio": min(tracked_seconds) / min(bare_seconds),
        "bare_median_s": statistics.median(bare_seconds),
        "tracked_median_s": statistics.median(tracked_seconds),
        "median_ratio": statistics.median(tracked_seconds) / statistics.median(bare_seconds),
        "bare_images_per_s": images / min(bare_seconds),
        "tracked_images_per_s": images / min(tracked_seconds),
        # Same seed, same kernels: both must train exactly the same numbers.
        "same_val_accuracy": len({result["val_accuracy"] for result in bare + tracked}) == 1,
        "val_accuracy": tracked[0]["val_accuracy"],
        "device": bare[0]["device"],
    }


def sweep_overrides(
    args: argparse.Namespace, name: str, n_trials: int, scheduler: tuple[str, ...] = ("scheduler=none",)
) -> list[str]:
    return [
        f"runs_dir={args.out / 'runs'}",
        f"study.name={name}",
        f"study.n_trials={n_trials}",
        "study.enqueue_defaults=false",
        "search_space=learning_rate",
        "sampler=random",
        "pruner=none",
        *scheduler,  # default none: one trial per configuration, each one fit
        "trainer.verbose=0",
        *args.override,
    ]


def run_sweep(args: argparse.Namespace, overrides: list[str], name: str) -> tuple[float, optuna.Study]:
    start = time.perf_counter()
    run_command(args, [sys.executable, "-m", "study.sweep", *overrides], name)
    seconds = time.perf_counter() - start
    storage = f"sqlite:///{args.out / 'runs' / 'optuna.db'}"
    return seconds, optuna.load_study(study_name=name, storage=storage)


def measure_overhead(args: argparse.Namespace) -> dict:
    """Table 2: the fixed cost of a trial beyond its training."""
    training = ["data=digits", "model=softmax", "trainer.epochs=1"]
    bare = run_script(args, "bare_fit.py", [*training, "trainer.verbose=0", *args.override], repeat=8)
    name = "bench-overhead"
    _, study = run_sweep(args, [*training, *sweep_overrides(args, name, args.overhead_trials)], name)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda trial: trial.datetime_start)
    starts = [trial.datetime_start.timestamp() for trial in trials]
    ends = [trial.datetime_complete.timestamp() for trial in trials]
    # The first trial of a worker pays one-time costs (first trace, first store access).
    starts, ends = starts[1:], ends[1:]
    cycles = [later - earlier for earlier, later in itertools.pairwise(starts)]
    inside = [end - start for start, end in zip(starts, ends, strict=True)]
    between = [start - end for end, start in zip(ends[:-1], starts[1:], strict=True)]
    bare_seconds = steady_median(bare["seconds"])
    cycle = statistics.median(cycles)
    return {
        "trials": len(trials),
        "bare_fit_seconds": bare_seconds,
        "trial_cycle_seconds": cycle,
        "fixed_overhead_seconds": cycle - bare_seconds,
        "inside_trial_seconds": statistics.median(inside),
        "between_trials_seconds": statistics.median(between),
    }


SEGMENT_BATCH = 50  # the bare fits' sizes are steps x this


@dataclass(frozen=True)
class SegmentCase:
    """A study of scheduler=asha in optimizer steps whose segments are timed: rungs of
    `first_rung`, 3x and 9x that many steps of `model` on `data`."""

    model: str
    data: tuple[str, ...]
    first_rung: int
    trials: int


def segment_cases(args: argparse.Namespace) -> list[SegmentCase]:
    """Softmax on digits (a segment's steps take milliseconds: what is left is its fixed cost),
    and, but for --quick, the Deep-MNIST CNN on the bench's data."""
    cases = [SegmentCase("softmax", ("data=digits",), 4, args.overhead_trials)]
    if not args.quick:
        cases.append(SegmentCase("cnn", tuple(data_overrides(args)), 10, 9))
    return cases


def measure_segments(args: argparse.Namespace) -> list[dict]:
    """Table 2, second part: the fixed cost of a segment of scheduler=asha, new configurations
    and promotions apart. Each segment builds or reloads its model, traces it, trains its steps,
    validates, saves its checkpoints and opens or resumes its MLflow run; a bare fit of the same
    model at two sizes gives the cost of a step, and what a bare fit pays besides its steps."""
    return [measure_segment_case(args, case) for case in segment_cases(args)]


def measure_segment_case(args: argparse.Namespace, case: SegmentCase) -> dict:
    training = [*case.data, f"model={case.model}", f"trainer.batch_size={SEGMENT_BATCH}"]
    step_seconds, bare_fixed, device = bare_step_costs(args, case, training)
    training.append("trainer.epochs=3")
    name = f"bench-segments-{case.model}"
    rungs = ("scheduler=asha", "scheduler.resource_unit=steps", f"scheduler.min_resource={case.first_rung}")
    _, study = run_sweep(args, [*training, *sweep_overrides(args, name, case.trials, rungs)], name)
    # The first segment of a worker pays its one-time costs (first trace, first store access).
    trials = sorted(study.get_trials(deepcopy=False), key=lambda trial: trial.datetime_start)[1:]
    starts = [trial.datetime_start.timestamp() for trial in trials]
    cycles = [later - earlier for earlier, later in itertools.pairwise(starts)]
    fixed = [
        cycle - segment_steps(trial) * step_seconds for trial, cycle in zip(trials, cycles, strict=False)
    ]
    promoted = [CONFIG_ATTR in trial.user_attrs for trial in trials[: len(cycles)]]
    firsts = [seconds for seconds, promotion in zip(fixed, promoted, strict=True) if not promotion]
    promotions = [seconds for seconds, promotion in zip(fixed, promoted, strict=True) if promotion]
    return {
        "model": case.model,
        "data": " ".join(case.data),
        "rungs_steps": f"{case.first_rung}, {3 * case.first_rung}, {9 * case.first_rung}",
        "segments": len(trials) + 1,
        "promotions": sum(promoted),
        "segment_cycle_seconds": statistics.median(cycles),
        "step_seconds": step_seconds,
        "fixed_seconds_new": statistics.median(firsts) if firsts else None,
        "fixed_seconds_promotion": statistics.median(promotions) if promotions else None,
        "fixed_seconds": statistics.median(fixed),
        "bare_fit_fixed_seconds": bare_fixed,
        "fixed_overhead_seconds": statistics.median(fixed) - bare_fixed,
        "device": device,
    }


def bare_step_costs(
    args: argparse.Namespace, case: SegmentCase, training: list[str]
) -> tuple[float, float, str]:
    """(seconds per optimizer step, seconds of a bare fit besides its steps: build, trace and
    validation, the device) from bare 1-epoch fits of `first_rung` and 3x that many steps."""
    seconds = {}
    for steps in (case.first_rung, 3 * case.first_rung):
        size = f"data.max_train_samples={steps * SEGMENT_BATCH}"
        sized = [*training, "trainer.epochs=1", size, "trainer.verbose=0"]
        result = run_script(args, "bare_fit.py", [*sized, *args.override], repeat=4)
        seconds[steps] = steady_median(result["seconds"])
    step_seconds = max(0.0, (seconds[3 * case.first_rung] - seconds[case.first_rung]) / (2 * case.first_rung))
    return step_seconds, seconds[case.first_rung] - case.first_rung * step_seconds, result["device"]


def segment_steps(trial: optuna.trial.FrozenTrial) -> int:
    """Optimizer steps a segment trained: to its rung from the rung below (3x fewer steps), or
    from step 0 for a new configuration."""
    stop = max(trial.intermediate_values, default=0)
    return stop - stop // 3 if CONFIG_ATTR in trial.user_attrs else stop


def measure_throughput(args: argparse.Namespace) -> list[dict]:
    """Table 3: trials per hour of one fixed study, by workers or GPU slots."""
    training = [*data_overrides(args), f"model={args.throughput_model}", "trainer.epochs=1"]
    if args.gpu is not None:
        settings = [
            (slots, [f"study.gpus=[{args.gpu}]", f"study.trials_per_gpu={slots}"])
            for slots in map(int, args.slots.split(","))
        ]
    else:
        workers = args.workers or f"1,{usable_cores()}"
        settings = [(count, [f"study.n_workers={count}"]) for count in map(int, workers.split(","))]
    rows = []
    for slots, placement in settings:
        name = f"bench-throughput-{slots}"
        overrides = [*training, *sweep_overrides(args, name, args.throughput_trials), *placement]
        seconds, study = run_sweep(args, overrides, name)
        every = study.get_trials(deepcopy=False)  # with any that failed or lost the race for the last
        first_start = min(trial.datetime_start for trial in every)
        last_end = max(trial.datetime_complete for trial in every)
        steady = (last_end - first_start).total_seconds()
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        rows.append(
            {
                "slots": slots,
                "placement": " ".join(placement),
                "trials": len(trials),
                "command_seconds": seconds,
                "trials_per_hour": len(trials) * SECONDS_PER_HOUR / seconds,
                "steady_trials_per_hour": len(trials) * SECONDS_PER_HOUR / steady,
                "images_per_second_per_trial": images_per_second(args, trials),
            }
        )
        print(f"  {name}: {len(trials)} trials in {seconds:.1f} s", flush=True)
    base = rows[0]["trials_per_hour"]
    for row in rows:
        row["speed_up"] = row["trials_per_hour"] / base  # against the first setting (1 worker)
    return rows


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def images_per_second(args: argparse.Namespace, trials: list) -> float:
    """Mean training images per second of the trials' last epochs, as their runs logged it."""
    client = MlflowClient(tracking_uri=tracking_uri(args))
    runs = [client.get_run(trial.user_attrs[MLFLOW_RUN_ATTR]) for trial in trials]
    return statistics.mean(run.data.metrics["images_per_second"] for run in runs) if runs else 0.0


TABLES = {
    "models": "Tracked run against bare keras.Model.fit",
    "overhead": "Fixed overhead per trial (digits, softmax, 1 epoch, 1 worker)",
    "segments": "Fixed cost per segment (scheduler=asha in optimizer steps, 1 worker)",
    "throughput": "Sweep throughput",
}


def save(args: argparse.Namespace, results: dict) -> None:
    """results.json and the CSV of every table measured so far (after each, in case one fails)."""
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    for name in TABLES:
        if results.get(name):
            rows = results[name] if isinstance(results[name], list) else [results[name]]
            pd.DataFrame(rows).to_csv(args.out / f"{name}.csv", index=False)


def print_tables(args: argparse.Namespace, results: dict) -> None:
    for name, title in TABLES.items():
        if not results.get(name):
            continue
        frame = pd.read_csv(args.out / f"{name}.csv")
        table = tabulate(frame, headers="keys", tablefmt="github", showindex=False, floatfmt=".3f")
        print(f"\n{title}\n{table}")
    print(f"\n{results['machine']}\nresults: {args.out}")


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"benchmark results go to {args.out}", flush=True)
    prepare_stores(args)
    results = {"machine": "", "arguments": {key: str(value) for key, value in vars(args).items()}}
    measures = {
        "models": compare_models,
        "overhead": measure_overhead,
        "segments": measure_segments,
        "throughput": measure_throughput,
    }
    for name in args.tables:
        results[name] = measures[name](args)
        results["machine"] = machine(args, results)
        save(args, results)
    print_tables(args, results)


def machine(args: argparse.Namespace, results: dict) -> str:
    """The device the bare fits reported (the bench process itself never imports the backend)."""
    rows = [row for name in ("models", "segments") for row in results.get(name) or []]
    device = rows[0]["device"] if rows else "device: see the runs' tags"
    return (
        f"{device}, {usable_cores()} cores, "
        f"Keras backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}, "
        f"overrides: {' '.join(args.override) or 'none'}"
    )


if __name__ == "__main__":
    main()
