"""Config schemas, their registration in Hydra's ConfigStore, and the value checks declared on
their fields.

The dataclasses are the single source of truth for which keys exist and what type each has.
Every group option in `conf/` extends its schema (`defaults: [/schema/model/cnn@_here_]`),
so a typo or a wrong type in a YAML file or a command-line override fails at compose time.
`checked_config` applies the same schemas again to a config that did not come through
composition (a replayed `config.yaml`, a hand-made `DictConfig`) and checks value ranges
that types cannot express. Each range check is declared on its field
(`field(default=..., metadata=must(...))`), so a new key and its check are one line.

Nothing here imports Keras, TensorFlow or MLflow: a bad value is reported in about a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from study.config.fields import CHECK, FRACTION, FRACTION_CLOSED, POSITIVE, SEED, UNITS, Check, at_least, must
from study.config.probes import folder_problem, tracking_uri_problem
from study.config.study_schema import SWEEP_SCHEMAS, SweepStudyPart

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # Keras dtype policies


# --- data -----------------------------------------------------------------------------------


DOWNLOADABLE_DATA = ("mnist", "fashion_mnist", "cifar10", "cifar100")  # keras.datasets


@dataclass
class DataConfig:
    # What the data set is called in MLflow; without data.path, one of DOWNLOADABLE_DATA or digits.
    name: str = field(default=MISSING, metadata=must("a non-empty name", lambda v: bool(v.strip())))
    # A local folder of IDX files or of images in class subfolders, or a Keras-format .npz.
    path: str | None = None
    validation_size: int = field(default=5000, metadata=at_least(1))  # carved with trainer.seed
    max_train_samples: int | None = field(default=None, metadata=at_least(1, optional=True))
    # Classes 0..num_classes-1; null: one more than the largest label found.
    num_classes: int | None = field(default=None, metadata=at_least(2, optional=True))


# --- models ---------------------------------------------------------------------------------


@dataclass
class SoftmaxConfig:
    name: str = "softmax"


@dataclass
class MlpConfig:
    name: str = "mlp"
    hidden1_units: int = field(default=128, metadata=UNITS)
    hidden2_units: int = field(default=32, metadata=UNITS)
    dropout_rate: float = field(default=0.0, metadata=FRACTION)


@dataclass
class CnnConfig:
    name: str = "cnn"
    filters1: int = field(default=32, metadata=UNITS)
    filters2: int = field(default=64, metadata=UNITS)
    kernel_size: int = field(default=5, metadata=must("an integer in [1, 64]", lambda v: 1 <= v <= 64))
    dense_units: int = field(default=1024, metadata=UNITS)
    dropout_rate: float = field(default=0.5, metadata=FRACTION)


# --- optimizers -----------------------------------------------------------------------------


@dataclass
class SgdConfig:
    name: str = "sgd"
    learning_rate: float = field(default=0.01, metadata=POSITIVE)
    momentum: float = field(default=0.0, metadata=FRACTION_CLOSED)
    nesterov: bool = False


@dataclass
class AdamConfig:
    name: str = "adam"
    learning_rate: float = field(default=0.001, metadata=POSITIVE)
    beta_1: float = field(default=0.9, metadata=FRACTION)
    beta_2: float = field(default=0.999, metadata=FRACTION)
    epsilon: float = field(default=1e-7, metadata=POSITIVE)


@dataclass
class RmspropConfig:
    name: str = "rmsprop"
    learning_rate: float = field(default=0.001, metadata=POSITIVE)
    rho: float = field(default=0.9, metadata=FRACTION)
    momentum: float = field(default=0.0, metadata=FRACTION)
    epsilon: float = field(default=1e-7, metadata=POSITIVE)


# --- trainer and tracking -------------------------------------------------------------------

MONITORS = ("val_accuracy", "val_loss")


@dataclass
class EarlyStoppingConfig:
    """Keras' EarlyStopping: the run stops when `monitor` has not improved by `min_delta` for
    `patience` validations (epochs; with scheduler.resource_unit=steps a rung's end counts too).
    The run still ends FINISHED, with its test evaluation and model, and logs `stopped_epoch`."""

    patience: int | None = field(default=None, metadata=at_least(1, optional=True))  # null: off
    monitor: str = field(
        default="val_accuracy", metadata=must(" or ".join(MONITORS), lambda v: v in MONITORS)
    )
    min_delta: float = field(default=0.0, metadata=must("a number >= 0", lambda v: 0 <= v < float("inf")))
    # A run trained in one fit ends with the weights of its best epoch (test set, last.keras);
    # a run trained in segments keeps its last weights (its best is checkpoints/best.keras).
    restore_best_weights: bool = True


@dataclass
class TrainerConfig:
    epochs: int = field(default=3, metadata=at_least(1))
    batch_size: int = field(default=50, metadata=at_least(1))
    # When set, train exactly this many optimizer steps; the number of epochs follows from it.
    max_steps: int | None = field(default=None, metadata=at_least(1, optional=True))
    seed: int = field(default=42, metadata=SEED)
    eval_batch_size: int = field(default=1000, metadata=at_least(1))
    steps_per_execution: int = field(default=1, metadata=at_least(1))
    # "auto", true or false, as keras.Model.compile takes it.
    jit_compile: Any = field(
        default="auto", metadata=must("'auto', true or false", lambda v: v in ("auto", True, False))
    )
    # Keras dtype policy: float32, or mixed_float16 / mixed_bfloat16 (GPUs with tensor cores).
    precision: str = field(
        default="float32", metadata=must(" or ".join(PRECISIONS), lambda v: v in PRECISIONS)
    )
    # Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch.
    verbose: int = field(default=2, metadata=must("0, 1 or 2", lambda v: v in (0, 1, 2)))
    # One fit per epoch (or part of one), so a run can stop and resume at any step with the
    # same numbers (scheduler=asha trains its trials so). Under TensorFlow a run trained in one
    # fit draws each epoch's data order and dropout from (seed, epoch) too: the same numbers.
    resumable: bool = False
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class MlflowConfig:
    tracking_uri: str = field(
        default="sqlite:///${runs_dir}/mlflow.db", metadata={CHECK: Check(lambda v: tracking_uri_problem(v))}
    )
    experiment_name: str = field(
        default="study", metadata=must("a non-empty name", lambda v: 0 < len(v.strip()) <= 500)
    )
    # Where a new experiment keeps its artifacts; ignored when the experiment exists.
    artifact_location: str = field(
        default="${runs_dir}/mlartifacts", metadata={CHECK: Check(lambda v: folder_problem(v))}
    )
    run_name: str | None = None  # default: what the run is, e.g. cnn-adam-mnist
    tags: dict[str, str] = field(default_factory=dict)  # extra run tags: +mlflow.tags.team=vision
    # Seconds between samples of CPU, memory and GPU use (MLflow system metrics); null: off.
    system_metrics_interval: float | None = field(
        default=10.0, metadata=must("null or a number of seconds > 0", lambda v: v is None or v > 0)
    )


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = MISSING
    optimizer: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    runs_dir: str = field(default="runs", metadata={CHECK: Check(lambda v: folder_problem(v))})


@dataclass
class SweepConfig(TrainConfig, SweepStudyPart):
    """The primary schema of `conf/sweep.yaml`: the train config plus the study part."""


# The config groups a search-space entry may pick an option of (`model: {type: categorical, ...}`).
GROUPS = ("data", "model", "optimizer")
# Group option name -> schema. `checked_config` picks the schema from the node's `name`; every
# data set shares DataConfig (TrainConfig.data types it).
SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"softmax": SoftmaxConfig, "mlp": MlpConfig, "cnn": CnnConfig},
    "optimizer": {"sgd": SgdConfig, "adam": AdamConfig, "rmsprop": RmspropConfig},
}


def register_configs() -> None:
    """Store the schemas where the YAML group options (and Hydra) can find them."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="sweep_schema", node=SweepConfig)
    groups = {"model": SCHEMAS["model"], "optimizer": SCHEMAS["optimizer"], **SWEEP_SCHEMAS}
    for group, options in groups.items():
        for option, schema in options.items():
            store.store(group=f"schema/{group}", name=option, node=schema)


register_configs()
