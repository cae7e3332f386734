"""One tracked training run: `python -m study.train [overrides]`, or `train(cfg)` from code.

Data flows one way: config -> data -> model -> fit -> tracker. Everything that can be wrong
with the user's input (config keys and values, data files) is checked before the MLflow run
is created, so a bad command leaves the tracking store as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from study.config.checks import checked_config
from study.config.probes import builder_source_digest
from study.core.names import (
    BACKEND_TAG,
    DATA_CLASSES_TAG,
    DATA_DIGEST_TAG,
    DATA_EXAMPLES_TAG,
    DATA_NAME_TAG,
    DATA_SOURCE_TAG,
    DEVICE_GPUS_TAG,
    DEVICE_HOST_TAG,
    DEVICE_KIND_TAG,
    DEVICE_TAG,
    MODEL_SOURCE_TAG,
    REPLAY_OF_TAG,
    VERSION_TAG_PREFIX,
)
from study.training.data import Dataset, load_dataset
from study.training.fit import EpochCallback, Segment, fit_and_evaluate, steps_per_epoch
from study.training.resume import StartingPoint, best_checkpoint

# Keras (and with it TensorFlow) and MLflow are imported where a run needs them, not here:
# a typo on the command line is reported in about a second instead of after their start-up.
if TYPE_CHECKING:
    import keras

    from study.tracking.runs import RunTracker

log = logging.getLogger(__name__)


def train(
    cfg: DictConfig,
    on_epoch_end: EpochCallback | None = None,
    *,
    tracker: RunTracker | None = None,
    output_dir: Path | str | None = None,
    tensorboard_dir: Path | str | None = None,
    evaluate_test: bool = True,
    resume: bool = False,
) -> dict[str, float]:
    """Train the configured model, track it in MLflow and return its final metrics.

    on_epoch_end(epoch, metrics) is called after each epoch's metrics are logged; it may raise
    to stop training (a pruned trial does). `tracker` logs into a run its caller owns (and
    ends: a trial of a study) instead of creating and ending one; `output_dir` keeps the
    local copies of the artifacts (a temporary folder
    when None), `tensorboard_dir` the event files (default: `output_dir/tensorboard`).
    `evaluate_test=False` leaves the test set alone (trials of a study). A config with
    `trainer.resumable` trains in segments (see `Segment`): `resume=True` continues the run of
    `tracker` from its last checkpoint up to the config's budget (a promotion of
    scheduler=asha); the run's best validation accuracy then covers its earlier segments too.
    """
    cfg = checked_config(cfg)
    segment = Segment.of(cfg.trainer)
    if resume and (segment is None or tracker is None):
        raise ValueError(
            "train(resume=True) continues the run of `tracker`; its config needs trainer.resumable"
        )
    dataset = load_dataset(cfg.data, cfg.trainer.seed)  # the last input check: data files
    import keras

    from study.tracking.lineage import log_keras_model, system_metrics
    from study.tracking.runs import RunTracker
    from study.tracking.store import check_tracking_store
    from study.training import backend

    if tracker is None:  # a trial's run exists: the study's driver checked the store
        check_tracking_store(cfg.mlflow)
    backend.seed_everything(cfg.trainer.seed)
    # Built before the run exists: a user's builder that returns no Keras model writes nothing.
    model = None if resume else compile_model(cfg, dataset)
    with tempfile.TemporaryDirectory(prefix="study-") as scratch:
        folder = Path(output_dir) if output_dir is not None else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        owned = tracker is None
        if owned:
            tracker = RunTracker.start(cfg.mlflow, run_name=run_name(cfg), tags=cfg.mlflow.tags)
        interval = cfg.mlflow.system_metrics_interval
        with (
            tracker if owned else contextlib.nullcontext(tracker),
            system_metrics(cfg.mlflow.tracking_uri, tracker, interval),
        ):
            if resume:  # the first segment logged the params; MLflow refuses to change them
                monitor = cfg.trainer.early_stopping.monitor if cfg.trainer.early_stopping.patience else None
                epoch_steps = steps_per_epoch(dataset, cfg.trainer)
                start_at = StartingPoint.resumed(tracker, folder, segment, epoch_steps, monitor)
            else:
                log_run_description(tracker, cfg, dataset)
                start_at = StartingPoint(model)
            logdir = Path(tensorboard_dir) if tensorboard_dir is not None else folder / "tensorboard"
            metrics = fit_and_evaluate(
                cfg, start_at, dataset, tracker, folder, logdir, on_epoch_end, evaluate_test, segment
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

    from study.training.models import build_model
    from study.training.optimizers import build_optimizer

    with dtype_policy(cfg.trainer.precision):  # layers take the policy when they are built
        model = build_model(cfg.model, dataset.image_shape, dataset.num_classes)
    model.compile(
        optimizer=build_optimizer(cfg.optimizer),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[accuracy_metric()],
        steps_per_execution=cfg.trainer.steps_per_execution,
        jit_compile=cfg.trainer.jit_compile,
    )
    build_optimizer_state(model)
    return model


def accuracy_metric() -> keras.metrics.Metric:
    """What metrics=["accuracy"] becomes for integer labels, made now rather than in the first
    train step: a variable made while Keras traces the step makes TensorFlow trace it twice
    (about half a second of every CNN segment of scheduler=asha on a CPU)."""
    import keras

    return keras.metrics.SparseCategoricalAccuracy(name="accuracy")


def build_optimizer_state(model: keras.Model) -> None:
    """The optimizer's slot variables (Adam's moments), made before the first train step is
    traced, for the same reason; a user's model built only when it first sees data waits."""
    if model.built:
        model.optimizer.build(model.trainable_variables)


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Keras' global dtype policy for the block only: the next run starts from float32 again."""
    import keras

    from study.training import backend

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

    from study.tracking.lineage import log_dataset, package_versions
    from study.tracking.runs import flatten
    from study.training import backend

    tracker.log_params(flatten(OmegaConf.to_container(cfg)))
    # The user's model: its module's digest, so that a replay refuses a changed module.
    model_source = (
        {MODEL_SOURCE_TAG: builder_source_digest(cfg.model.builder)} if "builder" in cfg.model else {}
    )
    versions = {f"{VERSION_TAG_PREFIX}{name}": version for name, version in package_versions().items()}
    device = backend.device_name()
    tracker.set_tags(
        {
            # With the config and the data, these decide the run's numbers: study.reproduce
            # restores them in the replay's process.
            BACKEND_TAG: keras.backend.backend(),
            DEVICE_TAG: device,
            DEVICE_KIND_TAG: backend.device_kind(device),
            DEVICE_HOST_TAG: socket.gethostname(),
            **({DEVICE_GPUS_TAG: gpus} if (gpus := os.environ.get("CUDA_VISIBLE_DEVICES")) else {}),
            **backend.Threads.in_effect().as_tags(),
            DATA_NAME_TAG: dataset.name,
            DATA_SOURCE_TAG: dataset.source,
            DATA_DIGEST_TAG: dataset.digest,
            DATA_EXAMPLES_TAG: len(dataset.x_train),
            DATA_CLASSES_TAG: dataset.num_classes,
            **model_source,
            **versions,
        }
    )
    log_dataset(tracker.client, tracker.run_id, dataset)
