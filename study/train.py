"""One tracked training run: `python -m study.train [overrides]`, or `train(cfg)` from code.

Data flows one way: config -> data -> model -> fit -> tracker. Everything that can be wrong
with the user's input (config keys and values, data files) is checked before the MLflow run
is created, so a bad command leaves the tracking store as it was.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from study.cli import report_input_errors, run_cli
from study.config import checked_config
from study.data import Dataset, load_dataset

# Keras (and with it TensorFlow) and MLflow are imported where a run needs them, not here:
# a typo on the command line is reported in about a second instead of after their start-up.
if TYPE_CHECKING:
    import keras

    from study.tracking import RunTracker

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]

REPLAY_HEADER = """\
# The resolved config of one study.train run. Replay it with
#   python -m study.train --config-path <folder of this file> --config-name config
"""
REPLAY_OF_TAG = "replay_of"  # on a replay's run: the id of the run whose config.yaml it replays
# Keeps a replay's Hydra output folder under runs/, like the original command.
REPLAY_HYDRA_BLOCK = {"hydra": {"run": {"dir": "${runs_dir}/hydra/train/${now:%Y-%m-%d_%H-%M-%S}"}}}


def train(
    cfg: DictConfig,
    on_epoch_end: EpochCallback | None = None,
    *,
    tracker: RunTracker | None = None,
    output_dir: Path | str | None = None,
    tensorboard_dir: Path | str | None = None,
    evaluate_test: bool = True,
) -> dict[str, float]:
    """Train the configured model, track it in MLflow and return its final metrics.

    on_epoch_end(epoch, metrics) is called after each epoch's metrics are logged; it may raise
    to stop training (a pruned trial does). `tracker` logs into a run its caller owns (and
    ends: a trial of a study) instead of creating and ending one; `output_dir` keeps the
    local copies of the artifacts (a temporary folder
    when None), `tensorboard_dir` the event files (default: `output_dir/tensorboard`).
    `evaluate_test=False` leaves the test set alone (trials of a study).
    """
    cfg = checked_config(cfg)
    dataset = load_dataset(cfg.data, cfg.trainer.seed)  # the last input check: data files
    import keras

    from study import backend
    from study.lineage import log_keras_model, system_metrics
    from study.tracking import RunTracker, check_tracking_store

    if tracker is None:  # a trial's run exists: the study's driver checked the store
        check_tracking_store(cfg.mlflow)
    with tempfile.TemporaryDirectory(prefix="study-") as scratch:
        folder = Path(output_dir) if output_dir is not None else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        owned = tracker is None
        if owned:
            tracker = RunTracker.start(cfg.mlflow, run_name=run_name(cfg), tags=cfg.mlflow.tags)
        interval = cfg.mlflow.system_metrics_interval
        with (
            tracker if owned else contextlib.nullcontext(tracker),
            system_metrics(cfg.mlflow.tracking_uri, tracker.run_id, interval),
        ):
            log_run_description(tracker, cfg, dataset)
            backend.seed_everything(cfg.trainer.seed)
            model = compile_model(cfg, dataset)
            logdir = Path(tensorboard_dir) if tensorboard_dir is not None else folder / "tensorboard"
            metrics = fit_and_evaluate(
                cfg, model, dataset, tracker, folder, logdir, on_epoch_end, evaluate_test
            )
            if evaluate_test:  # a run of its own (not a trial): its best model, ready to serve
                best = keras.saving.load_model(folder / "checkpoints" / "best.keras")
                log_keras_model(cfg.mlflow.tracking_uri, tracker.run_id, best, dataset.x_test)
        log.info("run %s: best val_accuracy %.4f", tracker.run_id, metrics["best_val_accuracy"])
        return metrics


def run_name(cfg: DictConfig) -> str:
    """mlflow.run_name, or what the run is: cnn-adam-mnist (a replay: cnn-adam-mnist-replay)."""
    if cfg.mlflow.run_name:
        return cfg.mlflow.run_name
    name = f"{cfg.model.name}-{cfg.optimizer.name}-{cfg.data.name}"
    return f"{name}-replay" if REPLAY_OF_TAG in cfg.mlflow.tags else name


def compile_model(cfg: DictConfig, dataset: Dataset) -> keras.Model:
    import keras

    from study.models import build_model
    from study.optimizers import build_optimizer

    with dtype_policy(cfg.trainer.precision):  # layers take the policy when they are built
        model = build_model(cfg.model, dataset.image_shape, dataset.num_classes)
    model.compile(
        optimizer=build_optimizer(cfg.optimizer),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=cfg.trainer.steps_per_execution,
        jit_compile=cfg.trainer.jit_compile,
    )
    return model


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Keras' global dtype policy for the block only: the next run starts from float32 again."""
    import keras

    from study import backend

    if name != "float32" and backend.device_name().startswith("CPU"):
        log.warning("trainer.precision=%s on a CPU: mixed precision pays off on GPUs only", name)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def log_run_description(tracker: RunTracker, cfg: DictConfig, dataset: Dataset) -> None:
    """Params (the whole config, flattened) and the tags that say what ran where."""
    import keras

    from study import backend
    from study.lineage import log_dataset
    from study.tracking import flatten

    tracker.log_params(flatten(OmegaConf.to_container(cfg)))
    versions = {f"versions.{name}": version for name, version in backend.package_versions().items()}
    tracker.set_tags(
        {
            "keras.backend": keras.backend.backend(),
            "device": backend.device_name(),
            "data.name": dataset.name,
            "data.source": dataset.source,
            "data.digest": dataset.digest,
            "data.train_examples": len(dataset.x_train),
            **versions,
        }
    )
    log_dataset(tracker.client, tracker.run_id, dataset)


def fit_and_evaluate(
    cfg: DictConfig,
    model: keras.Model,
    dataset: Dataset,
    tracker: RunTracker,
    folder: Path,
    logdir: Path,
    on_epoch_end: EpochCallback | None,
    evaluate_test: bool = True,
) -> dict[str, float]:
    from study.callbacks import BestCheckpoint, EpochMetrics, StepBudget
    from study.tensorboard import ScalarWriter

    trainer = cfg.trainer
    config_file = write_replay_config(cfg, folder / "config.yaml", tracker.run_id)
    tracker.log_artifact(config_file)
    checkpoints = folder / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    writer = ScalarWriter(logdir)
    sinks = [lambda epoch, metrics: tracker.log_metrics(metrics, step=epoch), writer.write]
    epoch_metrics = EpochMetrics(len(dataset.x_train), trainer.batch_size, sinks, on_epoch_end)
    callbacks = [
        epoch_metrics,
        BestCheckpoint(checkpoints / "best.keras"),
    ]
    steps_per_epoch = math.ceil(len(dataset.x_train) / trainer.batch_size)
    epochs = trainer.epochs
    if trainer.max_steps is not None:
        epochs = math.ceil(trainer.max_steps / steps_per_epoch)
        callbacks.append(StepBudget(trainer.max_steps, steps_per_epoch))
    start = time.perf_counter()
    try:
        model.fit(
            dataset.x_train,
            dataset.y_train,
            batch_size=trainer.batch_size,
            epochs=epochs,
            validation_data=(dataset.x_val, dataset.y_val),
            validation_batch_size=trainer.eval_batch_size,
            callbacks=callbacks,
            verbose=trainer.verbose,
        )
    finally:
        writer.close()
        # Curves and checkpoints written so far are kept, also for a failed or pruned run.
        tracker.log_artifact(writer.logdir, "tensorboard")
        tracker.log_artifact(checkpoints, "checkpoints")
    train_seconds = time.perf_counter() - start
    model.save(checkpoints / "last.keras")
    tracker.log_artifact(checkpoints / "last.keras", "checkpoints")
    test_metrics = {}
    if evaluate_test:
        test_loss, test_accuracy = model.evaluate(
            dataset.x_test, dataset.y_test, batch_size=trainer.eval_batch_size, verbose=0
        )
        test_metrics = {"test_loss": float(test_loss), "test_accuracy": float(test_accuracy)}
    return summarize(epoch_metrics.history, test_metrics, train_seconds, tracker)


def summarize(
    history: list[dict[str, float]],
    test_metrics: dict[str, float],
    train_seconds: float,
    tracker: RunTracker,
) -> dict[str, float]:
    """Final metrics: the last epoch's, the best validation accuracy and the test figures."""
    best_epoch = max(range(len(history)), key=lambda i: history[i]["val_accuracy"])
    summary = {
        "best_val_accuracy": history[best_epoch]["val_accuracy"],
        "best_epoch": float(best_epoch + 1),
        **test_metrics,
        "train_seconds": train_seconds,
    }
    tracker.log_metrics(summary, step=len(history))
    return {**history[-1], **summary, "epochs": float(len(history))}


def write_replay_config(cfg: DictConfig, path: Path, run_id: str) -> Path:
    """The resolved config as the primary config of a replay (`--config-name config`); the
    replay's run is tagged with the run it replays (`replay_of`)."""
    from study.tracking import write_masked

    plain = OmegaConf.to_container(cfg)
    plain["mlflow"]["tags"] = {**plain["mlflow"]["tags"], REPLAY_OF_TAG: run_id}
    body = OmegaConf.to_yaml({**plain, **REPLAY_HYDRA_BLOCK})
    return write_masked(path, REPLAY_HEADER + body)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@report_input_errors
def main(cfg: DictConfig) -> float:
    metrics = train(cfg, output_dir=HydraConfig.get().runtime.output_dir)
    log.info("test_accuracy %.4f", metrics["test_accuracy"])
    return metrics["best_val_accuracy"]


if __name__ == "__main__":
    run_cli(main)
