"""The benchmark runs end to end and writes its tables. Wall times are printed, never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

PROJECT_DIR = Path(__file__).resolve().parents[2]
TITLES = ("Tracked run against bare keras.Model.fit", "Fixed overhead per trial", "Sweep throughput")


@pytest.mark.slow
@pytest.mark.timeout(1000)
def test_quick_benchmark_prints_and_writes_its_tables(tmp_path):
    out = tmp_path / "bench"
    command = [sys.executable, "bench/run.py", "--quick", "--models", "softmax", "--workers", "1,2"]
    done = subprocess.run(
        [*command, "--out", str(out)], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for title in TITLES:
        assert title in done.stdout
    results = json.loads((out / "results.json").read_text())
    (model,) = results["models"]
    assert model["model"] == "softmax"
    assert model["same_val_accuracy"] is True  # the bare fit and the tracked run trained alike
    assert model["bare_best_s"] > 0 and model["tracked_best_s"] > 0
    assert results["overhead"]["trials"] == 4
    (segments,) = results["segments"]  # --quick: softmax on digits, 4 configurations, some promoted
    assert segments["model"] == "softmax" and segments["segments"] > 4 and segments["promotions"] >= 1
    assert segments["segment_cycle_seconds"] > 0 and segments["step_seconds"] >= 0
    assert [row["slots"] for row in results["throughput"]] == [1, 2]
    assert all(row["trials"] == 4 for row in results["throughput"])
    assert all(row["images_per_second_per_trial"] > 0 for row in results["throughput"])
    for name, rows in (("models", 1), ("overhead", 1), ("segments", 1), ("throughput", 2)):
        assert len(pd.read_csv(out / f"{name}.csv")) == rows


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_search_benchmark_writes_curves_summary_and_plot_and_goes_on_where_it_stopped(tmp_path):
    out = tmp_path / "search"

    def bench(strategies: str, *more: str) -> subprocess.CompletedProcess:
        command = [
            sys.executable,
            "bench/search.py",
            "--quick",
            "--strategies",
            strategies,
            *more,
            "--out",
            str(out),
        ]
        done = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done

    # The peer (Keras Tuner's Hyperband) beside a study, one core each.
    bench("keras-tuner,asha-steps", "--parallel", "2")
    # The same --out with one more strategy: the two measured studies are not run again.
    done = bench("keras-tuner,asha-steps,asha-steps-stratified")
    assert "2 studies measured earlier" in done.stdout
    assert [line.split(":")[0] for line in done.stdout.splitlines() if " -m study.sweep " in line] == [
        "asha-steps-stratified-tpe-0"
    ]
    assert "sampler.startup=stratified" in done.stdout
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["strategy"]) == ["keras-tuner", "asha-steps", "asha-steps-stratified"]
    assert list(summary["sampler"]) == ["hyperband", "tpe", "tpe"]
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["strategy"]) == {"keras-tuner", "asha-steps", "asha-steps-stratified"}
    assert curves.groupby("strategy")["best_val_accuracy"].is_monotonic_increasing.all()
    studies = pd.read_csv(out / "studies.csv")
    assert len(studies) == 3 and (studies["configurations"] > 1).all()
    assert (out / "best_so_far.png").stat().st_size > 0
    assert "median_s_to_0.9" in done.stdout
    steps_log = (out / "logs" / "asha-steps-tpe-0.log").read_text()
    assert "rung 0 step" in steps_log  # the first rung is counted in optimizer steps

    # More seeds for the same bench: --first-seed 1 runs seed 1 alone and summarizes it alone.
    done = bench("asha", "--first-seed", "1")
    (sweep,) = [line for line in done.stdout.splitlines() if " -m study.sweep " in line]
    assert sweep.startswith("asha-tpe-1:") and "sampler.seed=1 trainer.seed=1" in sweep
    summary = pd.read_csv(out / "summary.csv")
    (reached,) = summary["seeds_reaching_target"]
    assert list(summary["strategy"]) == ["asha"] and reached.endswith("/1")
    assert sorted(pd.read_csv(out / "studies.csv")["seed"]) == [0, 0, 0, 1]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--first-seed", "-1"], "--first-seed: expected 0 or more, got -1"),
        (["--seeds", "0"], "--seeds: expected 1 or more, got 0"),
        (["--budget", "0"], "--budget: expected > 0 seconds, got 0"),
        (
            ["--strategies", "asha-steps-stratified", "--samplers", "tpe,random"],
            "--strategies asha-steps-stratified: expected --samplers of tpe, gp, cmaes only",
        ),
    ],
)
def test_search_bench_refuses_bad_arguments_in_one_line(tmp_path, arguments, expected):
    done = subprocess.run(
        [
            sys.executable,
            str(PROJECT_DIR / "bench" / "search.py"),
            *arguments,
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.splitlines()[-1].endswith(expected), done.stderr
    assert not (tmp_path / "out").exists()
