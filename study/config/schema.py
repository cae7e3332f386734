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

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from study.config.probes import gpus_problem, storage_problem, tracking_uri_problem

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # Keras dtype policies
CHECK = "check"  # the dataclass field metadata key of a value check
MACHINE_CHECK = "machine_check"  # a check of this machine (its GPUs), made by the driver only


# --- value checks, declared on the schema fields ---------------------------------------------


@dataclass(frozen=True)
class Check:
    """What a field's value must be: `problem(value)` says what was expected, or None if valid."""

    problem: Callable[[Any], str | None]


def must(expected: str, is_valid: Callable[[Any], bool]) -> dict[str, Check]:
    """Field metadata: the value must satisfy `is_valid`; `expected` says so in the error."""
    return {CHECK: Check(lambda value: None if is_valid(value) else expected)}


def at_least(low: int, *, optional: bool = False) -> dict[str, Check]:
    expected = f"an integer >= {low}"
    if optional:
        return must(f"null or {expected}", lambda v: v is None or v >= low)
    return must(expected, lambda v: v >= low)


def auto_or_at_least(low: int) -> dict[str, Check]:
    return must(f"'auto' or an integer >= {low}", lambda v: v == "auto" or (_is_int(v) and v >= low))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


POSITIVE = must("a number > 0", lambda v: v > 0)
FRACTION = must("a number in [0, 1)", lambda v: 0 <= v < 1)  # dropout, Adam's betas, RMSprop's rho
FRACTION_CLOSED = must("a number in [0, 1]", lambda v: 0 <= v <= 1)
SEED = must("an integer in [0, 2**32 - 1]", lambda v: 0 <= v < 2**32)  # NumPy's seed range
OPTIONAL_SEED = must("null or an integer in [0, 2**32 - 1]", lambda v: v is None or 0 <= v < 2**32)


# --- data -----------------------------------------------------------------------------------


@dataclass
class DataConfig:
    name: str = MISSING  # mnist | fashion_mnist | digits
    path: str | None = None  # local folder of IDX .gz files or a Keras-format .npz
    validation_size: int = field(default=5000, metadata=at_least(1))  # carved with trainer.seed
    max_train_samples: int | None = field(default=None, metadata=at_least(1, optional=True))


# --- models ---------------------------------------------------------------------------------


@dataclass
class SoftmaxConfig:
    name: str = "softmax"


@dataclass
class MlpConfig:
    name: str = "mlp"
    hidden1_units: int = field(default=128, metadata=at_least(1))
    hidden2_units: int = field(default=32, metadata=at_least(1))
    dropout_rate: float = field(default=0.0, metadata=FRACTION)


@dataclass
class CnnConfig:
    name: str = "cnn"
    filters1: int = field(default=32, metadata=at_least(1))
    filters2: int = field(default=64, metadata=at_least(1))
    kernel_size: int = field(default=5, metadata=at_least(1))
    dense_units: int = field(default=1024, metadata=at_least(1))
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


@dataclass
class MlflowConfig:
    tracking_uri: str = field(
        default="sqlite:///${runs_dir}/mlflow.db", metadata={CHECK: Check(lambda v: tracking_uri_problem(v))}
    )
    experiment_name: str = "study"
    # Where a new experiment keeps its artifacts; ignored when the experiment exists.
    artifact_location: str = "${runs_dir}/mlartifacts"
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
    runs_dir: str = "runs"


# --- studies (python -m study.sweep) -----------------------------------------------------------


@dataclass
class StudyConfig:
    name: str = field(
        default="default",
        metadata=must(
            "letters, digits, '_', '.' and '-'",
            lambda v: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v) is not None,
        ),
    )
    # Complete + pruned trials in the whole study, earlier sessions included.
    n_trials: int = field(default=20, metadata=at_least(1))
    # Seconds; no new trial starts after it (this session).
    timeout: float | None = field(default=None, metadata=must("null or > 0", lambda v: v is None or v > 0))
    # The objective is the best validation accuracy of a trial.
    direction: str = field(
        default="maximize", metadata=must("'maximize' (validation accuracy)", lambda v: v == "maximize")
    )
    # An Optuna storage URL (sqlite:///..., postgresql://..., mysql://...) or a journal file path.
    storage: str = field(
        default="sqlite:///${runs_dir}/optuna.db", metadata={CHECK: Check(lambda v: storage_problem(v))}
    )
    # Worker processes; with gpus, at most len(gpus) * trials_per_gpu.
    n_workers: int = field(default=1, metadata=at_least(1))
    # GPU indices of this machine (nvidia-smi -L), as CUDA_VISIBLE_DEVICES lets the driver see them.
    gpus: list[int] = field(default_factory=list, metadata={MACHINE_CHECK: Check(lambda v: gpus_problem(v))})
    trials_per_gpu: int = field(default=1, metadata=at_least(1))
    enqueue_defaults: bool = True  # trial 0 tries the base config's values: a baseline to beat
    # Seconds; a worker silent for 2x this is declared dead.
    heartbeat_interval: int = field(default=10, metadata=at_least(1))
    max_retry: int = field(default=1, metadata=at_least(0))  # re-runs of a trial whose worker died
    # Stop after this many failed trials (default: n_trials).
    max_failed_trials: int | None = field(default=None, metadata=at_least(1, optional=True))
    output_dir: str = "${runs_dir}/studies/${study.name}"
    # Model Registry name the winner is registered under (models:/NAME/latest); null: not registered.
    registered_model: str | None = "${study.name}"


@dataclass
class ParamSpec:
    """One search-space entry: a group option (`model`) or a value (`optimizer.learning_rate`)."""

    type: str = MISSING  # categorical | float | int
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    # Sample only when these config keys have one of these values, e.g. {model: [mlp, cnn]}.
    when: dict[str, list[Any]] | None = None
    # The config key the value goes to; defaults to the entry's name. Lets two entries with
    # different ranges (one per optimizer, say) set the same key.
    target: str | None = None


@dataclass
class TpeSamplerConfig:
    name: str = "tpe"
    seed: int | None = field(default=42, metadata=OPTIONAL_SEED)
    n_startup_trials: int = field(default=5, metadata=at_least(0))
    multivariate: bool = True
    group: bool = True  # conditional spaces: sample each sub-space jointly
    constant_liar: bool = True  # parallel workers avoid sampling the same point


@dataclass
class RandomSamplerConfig:
    name: str = "random"
    seed: int | None = field(default=42, metadata=OPTIONAL_SEED)


@dataclass
class GridSamplerConfig:
    name: str = "grid"
    seed: int | None = field(default=42, metadata=OPTIONAL_SEED)


@dataclass
class CmaesSamplerConfig:
    name: str = "cmaes"
    seed: int | None = field(default=42, metadata=OPTIONAL_SEED)
    n_startup_trials: int = field(default=1, metadata=at_least(0))


@dataclass
class GpSamplerConfig:
    name: str = "gp"
    seed: int | None = field(default=42, metadata=OPTIONAL_SEED)
    n_startup_trials: int = field(default=10, metadata=at_least(0))


@dataclass
class MedianPrunerConfig:
    name: str = "median"
    n_startup_trials: int = field(default=3, metadata=at_least(0))  # complete trials before any pruning
    n_warmup_steps: int = field(default=0, metadata=at_least(0))  # epochs before a trial can be pruned
    interval_steps: int = field(default=1, metadata=at_least(1))


@dataclass
class HyperbandPrunerConfig:
    name: str = "hyperband"
    min_resource: int = field(default=1, metadata=at_least(1))
    max_resource: Any = field(default="auto", metadata=auto_or_at_least(1))  # "auto" or epochs
    reduction_factor: int = field(default=3, metadata=at_least(2))


@dataclass
class SuccessiveHalvingPrunerConfig:
    name: str = "successive_halving"
    min_resource: Any = field(default="auto", metadata=auto_or_at_least(1))
    reduction_factor: int = field(default=4, metadata=at_least(2))
    min_early_stopping_rate: int = field(default=0, metadata=at_least(0))


@dataclass
class ThresholdPrunerConfig:
    name: str = "threshold"
    lower: float | None = None  # prune a trial whose validation accuracy falls below this
    upper: float | None = None
    n_warmup_steps: int = field(default=0, metadata=at_least(0))


@dataclass
class NopPrunerConfig:
    name: str = "none"


@dataclass
class NoSchedulerConfig:
    """Every trial trains its whole budget in one go; the pruner may stop it early."""

    name: str = "none"


RESOURCE_UNITS = ("epochs", "steps")


@dataclass
class AshaSchedulerConfig:
    """Asynchronous successive halving with promotion (study/scheduler.py)."""

    name: str = "asha"
    # The first rung's budget, in resource_unit. auto: 1 epoch; with resource_unit=steps, the top
    # rung divided by eta until the first rung is about 1/eta of an epoch (scheduler.py).
    min_resource: Any = field(default="auto", metadata=auto_or_at_least(1))
    # eta: the top 1/eta of a rung goes on; budgets grow eta-fold.
    reduction_factor: int = field(default=3, metadata=at_least(2))
    # The top rung's budget; null: trainer.epochs (see scheduler.py).
    max_resource: int | None = field(default=None, metadata=at_least(1, optional=True))
    # epochs | steps (optimizer steps: a rung may end mid-epoch).
    resource_unit: str = field(
        default="epochs", metadata=must(" or ".join(RESOURCE_UNITS), lambda v: v in RESOURCE_UNITS)
    )
    brackets: int = field(
        default=1, metadata=at_least(1)
    )  # Hyperband brackets over ASHA: bracket b starts at rung b


@dataclass
class SweepStudyPart:
    """What a study adds to the train config."""

    study: StudyConfig = field(default_factory=StudyConfig)
    sampler: Any = MISSING
    pruner: Any = MISSING
    scheduler: Any = MISSING
    search_space: dict[str, ParamSpec] = field(default_factory=dict)


@dataclass
class SweepConfig(TrainConfig, SweepStudyPart):
    """The primary schema of `conf/sweep.yaml`: the train config plus the study part."""


SWEEP_KEYS = ("study", "sampler", "pruner", "scheduler", "search_space")

# Group option name -> schema. `checked_config` picks the schema from the node's `name`.
SCHEMAS: dict[str, dict[str, type]] = {
    "data": {"mnist": DataConfig, "fashion_mnist": DataConfig, "digits": DataConfig},
    "model": {"softmax": SoftmaxConfig, "mlp": MlpConfig, "cnn": CnnConfig},
    "optimizer": {"sgd": SgdConfig, "adam": AdamConfig, "rmsprop": RmspropConfig},
}
SWEEP_SCHEMAS: dict[str, dict[str, type]] = {
    "sampler": {
        "tpe": TpeSamplerConfig,
        "random": RandomSamplerConfig,
        "grid": GridSamplerConfig,
        "cmaes": CmaesSamplerConfig,
        "gp": GpSamplerConfig,
    },
    "pruner": {
        "median": MedianPrunerConfig,
        "hyperband": HyperbandPrunerConfig,
        "successive_halving": SuccessiveHalvingPrunerConfig,
        "threshold": ThresholdPrunerConfig,
        "none": NopPrunerConfig,
    },
    "scheduler": {"none": NoSchedulerConfig, "asha": AshaSchedulerConfig},
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
