"""Config schemas, their registration in Hydra's ConfigStore, and value checks.

The dataclasses are the single source of truth for which keys exist and what type each has.
Every group option in `conf/` extends its schema (`defaults: [/schema/model/cnn@_here_]`),
so a typo or a wrong type in a YAML file or a command-line override fails at compose time.
`checked_config` applies the same schemas again to a config that did not come through
composition (a replayed `config.yaml`, a hand-made `DictConfig`) and checks value ranges
that types cannot express.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # Keras dtype policies


class ConfigError(ValueError):
    """Bad user input: a config key, a value or a data file. Its message is one line."""


# --- data -----------------------------------------------------------------------------------


@dataclass
class DataConfig:
    name: str = MISSING  # mnist | fashion_mnist | digits
    path: str | None = None  # local folder of IDX .gz files or a Keras-format .npz
    validation_size: int = 5000  # carved from the training set with trainer.seed
    max_train_samples: int | None = None  # keep only this many training examples


# --- models ---------------------------------------------------------------------------------


@dataclass
class SoftmaxConfig:
    name: str = "softmax"


@dataclass
class MlpConfig:
    name: str = "mlp"
    hidden1_units: int = 128
    hidden2_units: int = 32
    dropout_rate: float = 0.0


@dataclass
class CnnConfig:
    name: str = "cnn"
    filters1: int = 32
    filters2: int = 64
    kernel_size: int = 5
    dense_units: int = 1024
    dropout_rate: float = 0.5


# --- optimizers -----------------------------------------------------------------------------


@dataclass
class SgdConfig:
    name: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class AdamConfig:
    name: str = "adam"
    learning_rate: float = 0.001
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7


@dataclass
class RmspropConfig:
    name: str = "rmsprop"
    learning_rate: float = 0.001
    rho: float = 0.9
    momentum: float = 0.0
    epsilon: float = 1e-7


# --- trainer and tracking -------------------------------------------------------------------


@dataclass
class TrainerConfig:
    epochs: int = 3
    batch_size: int = 50
    # When set, train exactly this many optimizer steps; the number of epochs follows from it.
    max_steps: int | None = None
    seed: int = 42
    eval_batch_size: int = 1000
    steps_per_execution: int = 1
    jit_compile: Any = "auto"  # "auto", true or false, as keras.Model.compile takes it
    # Keras dtype policy: float32, or mixed_float16 / mixed_bfloat16 (GPUs with tensor cores).
    precision: str = "float32"
    verbose: int = 2  # Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch
    # One fit per epoch, each epoch's data order and dropout drawn from (seed, epoch): a run can
    # stop and resume at any step with the same numbers (scheduler=asha trains its trials so).
    resumable: bool = False


@dataclass
class MlflowConfig:
    tracking_uri: str = "sqlite:///${runs_dir}/mlflow.db"
    experiment_name: str = "study"
    # Where a new experiment keeps its artifacts; ignored when the experiment exists.
    artifact_location: str = "${runs_dir}/mlartifacts"
    run_name: str | None = None  # default: what the run is, e.g. cnn-adam-mnist
    tags: dict[str, str] = field(default_factory=dict)  # extra run tags: +mlflow.tags.team=vision
    # Seconds between samples of CPU, memory and GPU use (MLflow system metrics); null: off.
    system_metrics_interval: float | None = 10.0


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
    name: str = "default"
    n_trials: int = 20  # complete + pruned trials in the whole study, earlier sessions included
    timeout: float | None = None  # seconds; no new trial starts after it (this session)
    direction: str = "maximize"  # the objective is the best validation accuracy of a trial
    # An Optuna storage URL (sqlite:///..., postgresql://..., mysql://...) or a journal file path.
    storage: str = "sqlite:///${runs_dir}/optuna.db"
    n_workers: int = 1  # worker processes; with gpus, at most len(gpus) * trials_per_gpu
    gpus: list[int] = field(default_factory=list)
    trials_per_gpu: int = 1
    enqueue_defaults: bool = True  # trial 0 tries the base config's values: a baseline to beat
    heartbeat_interval: int = 10  # seconds; a worker silent for 2x this is declared dead
    max_retry: int = 1  # re-runs of a trial whose worker died
    max_failed_trials: int | None = None  # stop after this many failed trials (default: n_trials)
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
    seed: int | None = 42
    n_startup_trials: int = 5
    multivariate: bool = True
    group: bool = True  # conditional spaces: sample each sub-space jointly
    constant_liar: bool = True  # parallel workers avoid sampling the same point


@dataclass
class RandomSamplerConfig:
    name: str = "random"
    seed: int | None = 42


@dataclass
class GridSamplerConfig:
    name: str = "grid"
    seed: int | None = 42


@dataclass
class CmaesSamplerConfig:
    name: str = "cmaes"
    seed: int | None = 42
    n_startup_trials: int = 1


@dataclass
class GpSamplerConfig:
    name: str = "gp"
    seed: int | None = 42
    n_startup_trials: int = 10


@dataclass
class MedianPrunerConfig:
    name: str = "median"
    n_startup_trials: int = 3  # complete trials before any pruning
    n_warmup_steps: int = 0  # epochs reported before a trial can be pruned
    interval_steps: int = 1


@dataclass
class HyperbandPrunerConfig:
    name: str = "hyperband"
    min_resource: int = 1
    max_resource: Any = "auto"  # "auto" or a number of epochs
    reduction_factor: int = 3


@dataclass
class SuccessiveHalvingPrunerConfig:
    name: str = "successive_halving"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0


@dataclass
class ThresholdPrunerConfig:
    name: str = "threshold"
    lower: float | None = None  # prune a trial whose validation accuracy falls below this
    upper: float | None = None
    n_warmup_steps: int = 0


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
    min_resource: int = 1  # the first rung's budget, in resource_unit
    reduction_factor: int = 3  # eta: the top 1/eta of a rung goes on; budgets grow eta-fold
    max_resource: int | None = None  # the top rung's budget; null: trainer.epochs (see scheduler.py)
    resource_unit: str = "epochs"  # epochs | steps (optimizer steps: a rung may end mid-epoch)
    brackets: int = 1  # Hyperband brackets over ASHA: bracket b starts at rung b

    @staticmethod
    def checks(cfg: Any) -> list[tuple[str, bool, str, Any]]:
        return [
            ("scheduler.min_resource", cfg.min_resource >= 1, "an integer >= 1", cfg.min_resource),
            (
                "scheduler.reduction_factor",
                cfg.reduction_factor >= 2,
                "an integer >= 2",
                cfg.reduction_factor,
            ),
            (
                "scheduler.max_resource",
                cfg.max_resource is None or cfg.max_resource >= 1,
                "null or an integer >= 1",
                cfg.max_resource,
            ),
            (
                "scheduler.resource_unit",
                cfg.resource_unit in RESOURCE_UNITS,
                " or ".join(RESOURCE_UNITS),
                cfg.resource_unit,
            ),
            ("scheduler.brackets", cfg.brackets >= 1, "an integer >= 1", cfg.brackets),
        ]


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


# --- checks ---------------------------------------------------------------------------------


def checked_config(cfg: DictConfig) -> DictConfig:
    """Return `cfg` typed by its schemas, resolved and read-only, or raise ConfigError."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(plain, dict):
            raise ConfigError(f"the config must be a mapping, got {type(plain).__name__}")
        for key in ("hydra", *SWEEP_KEYS):  # a study's config trains like a plain run
            plain.pop(key, None)
        typed = OmegaConf.merge(OmegaConf.structured(TrainConfig), _typed_groups(plain, SCHEMAS))
        OmegaConf.resolve(typed)  # schema defaults may interpolate, e.g. ${runs_dir}
        OmegaConf.to_container(typed, throw_on_missing=True)
    except OmegaConfBaseException as error:
        raise ConfigError(describe_omegaconf_error(error)) from None
    _check_values(typed)
    OmegaConf.set_readonly(typed, True)
    return typed


def _typed_groups(plain: dict, schemas: dict[str, dict[str, type]]) -> dict:
    typed = dict(plain)
    for group, options in schemas.items():
        node = plain.get(group)
        if not isinstance(node, dict):
            raise ConfigError(f"{group}: expected a config group with a 'name', got {node!r}")
        name = node.get("name")
        if name not in options:
            raise ConfigError(f"{group}.name: expected one of {sorted(options)}, got {name!r}")
        try:
            typed[group] = OmegaConf.merge(OmegaConf.structured(options[name]), node)
        except OmegaConfBaseException as error:
            # The group node is merged on its own, so its keys lack the group prefix.
            raise ConfigError(f"{group}.{describe_omegaconf_error(error)}") from None
    return typed


def checked_sweep_config(cfg: DictConfig) -> DictConfig:
    """The study part of a sweep config (study, sampler, pruner, search space), typed and checked.

    The train part is checked by `checked_config`; each trial's config is checked again.
    """
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
        sweep_part = {key: plain.get(key) for key in SWEEP_KEYS}
        typed = OmegaConf.merge(
            OmegaConf.structured(SweepStudyPart), _typed_groups(sweep_part, SWEEP_SCHEMAS)
        )
        OmegaConf.to_container(typed, throw_on_missing=True)
    except OmegaConfBaseException as error:
        raise ConfigError(describe_omegaconf_error(error)) from None
    study = typed.study
    checks = [
        ("study.n_trials", study.n_trials >= 1, "an integer >= 1", study.n_trials),
        ("study.n_workers", study.n_workers >= 1, "an integer >= 1", study.n_workers),
        ("study.trials_per_gpu", study.trials_per_gpu >= 1, "an integer >= 1", study.trials_per_gpu),
        (
            "study.direction",
            study.direction == "maximize",
            "'maximize' (validation accuracy)",
            study.direction,
        ),
        ("study.timeout", study.timeout is None or study.timeout > 0, "null or > 0", study.timeout),
        (
            "study.heartbeat_interval",
            study.heartbeat_interval >= 1,
            "an integer >= 1",
            study.heartbeat_interval,
        ),
        ("study.max_retry", study.max_retry >= 0, "an integer >= 0", study.max_retry),
        (
            "study.name",
            re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study.name) is not None,
            "letters, digits, '_', '.' and '-'",
            study.name,
        ),
        (
            "study.max_failed_trials",
            study.max_failed_trials is None or study.max_failed_trials >= 1,
            "null or an integer >= 1",
            study.max_failed_trials,
        ),
    ]
    if typed.scheduler.name == "asha":
        checks += AshaSchedulerConfig.checks(typed.scheduler)
        checks.append(
            (
                "pruner",
                typed.pruner.name == "none",
                "none with scheduler=asha (the scheduler decides which trials go on; "
                "or pick scheduler=none to prune)",
                typed.pruner.name,
            )
        )
    for key, is_valid, expected, value in checks:
        if not is_valid:
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    if not typed.search_space:
        raise ConfigError("search_space: expected at least one entry, got an empty search space")
    OmegaConf.set_readonly(typed, True)
    return typed


def _check_values(cfg: DictConfig) -> None:
    checks = [
        ("optimizer.learning_rate", cfg.optimizer.learning_rate, lambda v: v > 0, "a number > 0"),
        ("trainer.epochs", cfg.trainer.epochs, lambda v: v >= 1, "an integer >= 1"),
        ("trainer.batch_size", cfg.trainer.batch_size, lambda v: v >= 1, "an integer >= 1"),
        ("trainer.eval_batch_size", cfg.trainer.eval_batch_size, lambda v: v >= 1, "an integer >= 1"),
        (
            "trainer.steps_per_execution",
            cfg.trainer.steps_per_execution,
            lambda v: v >= 1,
            "an integer >= 1",
        ),
        ("trainer.max_steps", cfg.trainer.max_steps, lambda v: v is None or v >= 1, "null or >= 1"),
        ("trainer.verbose", cfg.trainer.verbose, lambda v: v in (0, 1, 2), "0, 1 or 2"),
        (
            "trainer.jit_compile",
            cfg.trainer.jit_compile,
            lambda v: v in ("auto", True, False),
            "'auto', true or false",
        ),
        (
            "trainer.precision",
            cfg.trainer.precision,
            lambda v: v in PRECISIONS,
            " or ".join(PRECISIONS),
        ),
        ("data.validation_size", cfg.data.validation_size, lambda v: v >= 1, "an integer >= 1"),
        (
            "mlflow.system_metrics_interval",
            cfg.mlflow.system_metrics_interval,
            lambda v: v is None or v > 0,
            "null or a number of seconds > 0",
        ),
        (
            "data.max_train_samples",
            cfg.data.max_train_samples,
            lambda v: v is None or v >= 1,
            "null or an integer >= 1",
        ),
    ]
    if "dropout_rate" in cfg.model:
        checks.append(
            ("model.dropout_rate", cfg.model.dropout_rate, lambda v: 0 <= v < 1, "a number in [0, 1)")
        )
    for key in ("hidden1_units", "hidden2_units", "filters1", "filters2", "kernel_size", "dense_units"):
        if key in cfg.model:
            checks.append((f"model.{key}", cfg.model[key], lambda v: v >= 1, "an integer >= 1"))
    if "momentum" in cfg.optimizer:
        checks.append(
            ("optimizer.momentum", cfg.optimizer.momentum, lambda v: 0 <= v <= 1, "a number in [0, 1]")
        )
    for key, value, is_valid, expected in checks:
        if not is_valid(value):
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def describe_omegaconf_error(error: OmegaConfBaseException) -> str:
    """One line naming the key, from OmegaConf's multi-line message."""
    message = (getattr(error, "msg", None) or str(error)).strip().splitlines()[0]
    key = getattr(error, "full_key", None)
    return f"{key}: {message}" if key else message


def describe_error(error: BaseException) -> str:
    """One line for an error of user input raised by Hydra, OmegaConf or this package."""
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return describe_omegaconf_error(cause)
    if isinstance(error, OmegaConfBaseException):
        return describe_omegaconf_error(error)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if "Available options in" in str(error):
        # Hydra lists a group's options one per line; keep them, drop the search path dump.
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options"))
        options = []
        for line in lines[start + 1 :]:
            if line.startswith("Config search path"):
                break
            options.append(line)
        return f"{lines[0]}; available: {', '.join(options)}"
    return lines[0]
