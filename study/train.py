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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import numpy as np
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
LAST_CHECKPOINT = "checkpoints/last.keras"  # model and optimizer state: where a segment resumes


@dataclass(frozen=True)
class Segment:
    """One stretch of a run that trains in several (a rung of scheduler=asha): from `start` to
    `stop` epochs or optimizer steps (`unit`). A segment with `start` > 0 resumes the run's last
    checkpoint, model and optimizer state.

    Segments see the data in a fixed order per epoch, drawn from (trainer.seed, epoch), and
    validate on the whole validation set at every epoch end and at `stop`, so training in
    segments gives the same weights and metrics as one segment over the same span. Metric steps
    are epochs, or optimizer steps with unit "steps" (a rung may end mid-epoch).
    """

    start: int
    stop: int
    unit: str = "epochs"

    def steps(self, steps_per_epoch: int) -> tuple[int, int]:
        factor = steps_per_epoch if self.unit == "epochs" else 1
        return self.start * factor, self.stop * factor

    def label(self, step: int, steps_per_epoch: int) -> int:
        """The metric step of a point of training: an epoch count, or an optimizer step count."""
        return math.ceil(step / steps_per_epoch) if self.unit == "epochs" else step


def train(
    cfg: DictConfig,
    on_epoch_end: EpochCallback | None = None,
    *,
    tracker: RunTracker | None = None,
    output_dir: Path | str | None = None,
    tensorboard_dir: Path | str | None = None,
    evaluate_test: bool = True,
    segment: Segment | None = None,
) -> dict[str, float]:
    """Train the configured model, track it in MLflow and return its final metrics.

    on_epoch_end(epoch, metrics) is called after each epoch's metrics are logged; it may raise
    to stop training (a pruned trial does). `tracker` logs into a run its caller owns (and
    ends: a trial of a study) instead of creating and ending one; `output_dir` keeps the
    local copies of the artifacts (a temporary folder
    when None), `tensorboard_dir` the event files (default: `output_dir/tensorboard`).
    `evaluate_test=False` leaves the test set alone (trials of a study). `segment` trains one
    stretch of a run that trains in several (see `Segment`); the run's best validation accuracy
    then covers its earlier segments too.
    """
    cfg = checked_config(cfg)
    if segment is None and cfg.trainer.resumable:  # a replay of a trial of scheduler=asha, say
        budget = cfg.trainer.max_steps
        segment = Segment(0, budget, "steps") if budget is not None else Segment(0, cfg.trainer.epochs)
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
            resuming = segment is not None and segment.start > 0
            if not resuming:  # the first segment logged the params; MLflow refuses to change them
                log_run_description(tracker, cfg, dataset)
            backend.seed_everything(cfg.trainer.seed)
            model = load_last_checkpoint(tracker, folder) if resuming else compile_model(cfg, dataset)
            logdir = Path(tensorboard_dir) if tensorboard_dir is not None else folder / "tensorboard"
            metrics = fit_and_evaluate(
                cfg, model, dataset, tracker, folder, logdir, on_epoch_end, evaluate_test, segment
            )
            if evaluate_test:  # a run of its own (not a trial): its best model, ready to serve
                best = keras.saving.load_model(best_checkpoint(tracker, folder))
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
    segment: Segment | None = None,
) -> dict[str, float]:
    from study.callbacks import BestCheckpoint, EpochMetrics, StepBudget
    from study.tensorboard import ScalarWriter

    trainer = cfg.trainer
    config_file = write_replay_config(cfg, folder / "config.yaml", tracker.run_id)
    tracker.log_artifact(config_file)
    checkpoints = folder / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    writer = ScalarWriter(logdir)
    labels: list[int] = []  # the metric step of each history entry
    sinks = [
        lambda epoch, metrics: tracker.log_metrics(metrics, step=epoch),
        writer.write,
        lambda epoch, metrics: labels.append(epoch),
    ]
    epoch_metrics = EpochMetrics(len(dataset.x_train), trainer.batch_size, sinks, on_epoch_end)
    steps_per_epoch = math.ceil(len(dataset.x_train) / trainer.batch_size)
    first_step = trained_steps(model) if segment is not None else 0
    earlier = earlier_val_accuracy(tracker, segment.label(first_step, steps_per_epoch)) if first_step else []
    callbacks = [
        epoch_metrics,
        # A resumed segment keeps the earlier segments' best.keras unless it beats it.
        BestCheckpoint(checkpoints / "best.keras", max((v for _, v in earlier), default=None)),
    ]
    epochs = trainer.epochs
    if trainer.max_steps is not None and segment is None:
        epochs = math.ceil(trainer.max_steps / steps_per_epoch)
        callbacks.append(StepBudget(trainer.max_steps, steps_per_epoch))
    start = time.perf_counter()
    try:
        if segment is not None:
            fit_segment(model, dataset, trainer, callbacks, segment, first_step)
        else:
            fit_run(model, dataset, trainer, callbacks, epochs)
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
    return summarize(epoch_metrics.history, test_metrics, train_seconds, tracker, labels, earlier)


def summarize(
    history: list[dict[str, float]],
    test_metrics: dict[str, float],
    train_seconds: float,
    tracker: RunTracker,
    labels: Sequence[int] | None = None,
    earlier: Sequence[tuple[int, float]] = (),
) -> dict[str, float]:
    """Final metrics: the last epoch's, the best validation accuracy and the test figures.

    `labels` are the metric steps of `history` (1, 2, ... by default); `earlier` the
    (step, val_accuracy) points of the run's earlier segments, which the best includes.
    """
    labels = list(labels) if labels else list(range(1, len(history) + 1))
    curve = [*earlier, *zip(labels, (metrics["val_accuracy"] for metrics in history), strict=True)]
    best_step, best_value = max(curve, key=lambda point: point[1])  # the first best on ties
    summary = {
        "best_val_accuracy": best_value,
        "best_epoch": float(best_step),
        **test_metrics,
        "train_seconds": train_seconds,
    }
    tracker.log_metrics(summary, step=curve[-1][0])
    last = history[-1] if history else {}
    return {**last, **summary, "epochs": float(len(history))}


def fit_run(
    model: keras.Model,
    dataset: Dataset,
    trainer: DictConfig,
    callbacks: list[keras.callbacks.Callback],
    epochs: int,
) -> None:
    """Train `epochs` epochs in one `fit`, fed by `run_inputs`."""
    inputs, reseed = run_inputs(model, dataset, trainer, epochs)
    model.fit(
        **inputs,
        epochs=epochs,
        validation_data=(dataset.x_val, dataset.y_val),
        validation_batch_size=trainer.eval_batch_size,
        callbacks=[*reseed, *callbacks],
        verbose=trainer.verbose,
    )


def run_inputs(
    model: keras.Model, dataset: Dataset, trainer: DictConfig, epochs: int
) -> tuple[dict, list[keras.callbacks.Callback]]:
    """`fit` arguments and callbacks that train `epochs` epochs in one `fit`.

    Under TensorFlow, epoch e reads the examples in the order `epoch_order` gives, and a
    callback sets dropout's stream for it as `seed_random_layers` does, as in `fit_segment`:
    a run gets the same numbers trained in one `fit` or in segments. Other backends: Keras
    shuffles.
    """
    import keras

    from study import backend

    size = len(dataset.x_train)
    orders = np.stack([epoch_order(trainer.seed, epoch, size) for epoch in range(epochs)])
    inputs = backend.batches_in_orders(dataset.x_train, dataset.y_train, trainer.batch_size, orders)
    if inputs is None:
        return {"x": dataset.x_train, "y": dataset.y_train, "batch_size": trainer.batch_size}, []
    reseed = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: seed_random_layers(model, trainer.seed, epoch, 0)
    )
    return inputs, [reseed]


def fit_segment(
    model: keras.Model,
    dataset: Dataset,
    trainer: DictConfig,
    callbacks: list[keras.callbacks.Callback],
    segment: Segment,
    first_step: int,
) -> None:
    """Train from optimizer step `first_step` to the segment's end, one `fit` per epoch or part
    of an epoch, each on that epoch's examples in the order `epoch_order` gives.

    Keras numbers the epoch of each `fit` by its metric step (`initial_epoch`), so the callbacks
    see the run's own x-axis: epochs, or optimizer steps for a segment counted in steps.
    """
    from study import backend

    size = len(dataset.x_train)
    steps_per_epoch = math.ceil(size / trainer.batch_size)
    start, stop = segment.steps(steps_per_epoch)
    if first_step < start:
        raise RuntimeError(
            f"the run's last checkpoint is at step {first_step}; the segment starts at {start}"
        )
    step = first_step
    while step < stop:
        epoch, offset = divmod(step, steps_per_epoch)
        end = min(stop, (epoch + 1) * steps_per_epoch)
        picked = epoch_order(trainer.seed, epoch, size)[
            offset * trainer.batch_size : (end - epoch * steps_per_epoch) * trainer.batch_size
        ]
        label = segment.label(end, steps_per_epoch)
        seed_random_layers(model, trainer.seed, epoch, offset)
        model.fit(
            **backend.in_order_batches(dataset.x_train[picked], dataset.y_train[picked], trainer.batch_size),
            initial_epoch=label - 1,
            epochs=label,
            validation_data=(dataset.x_val, dataset.y_val),
            validation_batch_size=trainer.eval_batch_size,
            callbacks=callbacks,
            verbose=trainer.verbose,
        )
        step = end


def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    """The order of the training examples in `epoch`: a function of (seed, epoch) alone, so a run
    resumed at any step sees the data a run trained straight through would have seen."""
    return np.random.default_rng([seed % 2**32, epoch]).permutation(size)


def seed_random_layers(model: keras.Model, seed: int, epoch: int, offset: int) -> None:
    """Set the random stream of the model's random layers (dropout) to where it is `offset` steps
    into `epoch`: a stream per epoch, drawn from (seed, epoch, layer), advanced one draw per
    train step. A Keras checkpoint does not keep the seed generators' state; this makes a
    resumed run draw the same dropout masks as one trained straight through."""
    import keras

    states = [v for v in model.non_trainable_variables if v.name == "seed_generator_state"]
    for index, state in enumerate(states):
        stream = int(np.random.default_rng([seed % 2**32, epoch, index]).integers(1, 2**31 - 1))
        state.assign(np.array([stream, offset], dtype=keras.backend.standardize_dtype(state.dtype)))


def trained_steps(model: keras.Model) -> int:
    import keras

    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def load_last_checkpoint(tracker: RunTracker, folder: Path) -> keras.Model:
    """The run's last checkpoint, compiled, with its optimizer state (from any machine: the
    checkpoint is an artifact of the run)."""
    import keras

    destination = folder / "resume"
    destination.mkdir(parents=True, exist_ok=True)
    local = tracker.client.download_artifacts(tracker.run_id, LAST_CHECKPOINT, str(destination))
    return keras.saving.load_model(local)


def best_checkpoint(tracker: RunTracker, folder: Path) -> Path:
    """The run's best model: this run's, or an earlier segment's that this one did not beat."""
    local = folder / "checkpoints" / "best.keras"
    if local.exists():
        return local
    destination = folder / "resume"
    destination.mkdir(parents=True, exist_ok=True)
    return Path(tracker.client.download_artifacts(tracker.run_id, "checkpoints/best.keras", str(destination)))


def earlier_val_accuracy(tracker: RunTracker, up_to: int) -> list[tuple[int, float]]:
    """The (step, val_accuracy) points the run logged up to metric step `up_to`, in order.

    Points past it come from an attempt that died before its segment ended; the retry logs
    them again, with the same values (training is deterministic).
    """
    history = tracker.client.get_metric_history(tracker.run_id, "val_accuracy")
    points = {metric.step: metric.value for metric in sorted(history, key=lambda m: m.timestamp)}
    return sorted((step, value) for step, value in points.items() if step <= up_to)


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
