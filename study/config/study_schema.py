"""The schemas of a study's part of `conf/sweep.yaml`: the study itself, its search space
entries, samplers, pruners and schedulers (`python -m study.sweep`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from study.config.fields import (
    CHECK,
    MACHINE_CHECK,
    NAME,
    NAME_EXPECTED,
    OPTIONAL_SEED,
    Check,
    at_least,
    auto_or_at_least,
    is_name,
    must,
)
from study.config.launcher_schema import LAUNCHER_SCHEMAS
from study.config.probes import folder_problem, gpus_problem, storage_problem


@dataclass
class StudyConfig:
    name: str = field(default="default", metadata=NAME)
    # Complete + pruned trials in the whole study, earlier sessions included.
    n_trials: int = field(default=20, metadata=at_least(1))
    # Seconds; no new trial starts after it (this session).
    timeout: float | None = field(
        default=None,
        metadata=must("null or a finite number > 0", lambda v: v is None or 0 < v < float("inf")),
    )
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
    # Seconds a call to the study storage or the tracking store waits out an outage (a refused or
    # dropped connection, retried with back-off) before the session gives up; 0: at once.
    store_retry_seconds: int = field(default=60, metadata=at_least(0))
    # Stop after this many failed trials (default: n_trials).
    max_failed_trials: int | None = field(default=None, metadata=at_least(1, optional=True))
    output_dir: str = field(
        default="${runs_dir}/studies/${study.name}", metadata={CHECK: Check(lambda v: folder_problem(v))}
    )
    # Model Registry name the winner is registered under (models:/NAME/latest); null: not registered.
    registered_model: str | None = field(
        default="${study.name}",
        metadata=must(f"null or {NAME_EXPECTED}", lambda v: v is None or is_name(v)),
    )
    # After the search: the best confirm_top configurations trained again with confirm_seeds
    # other seeds each (trainer.seed + 1, + 2, ...); the winner is the best mean over the seeds.
    # 0 (either): off. A finished study run again with them only confirms (study/execution/confirmation.py).
    confirm_top: int = field(default=0, metadata=at_least(0))
    confirm_seeds: int = field(default=3, metadata=at_least(0))


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


# How a model-based sampler picks its first n_startup_trials configurations: at random, or
# spread over the space by one Sobol sequence (study/search/startup.py).
STARTUPS = ("random", "stratified")
STARTUP = must(" or ".join(STARTUPS), lambda v: v in STARTUPS)


@dataclass
class TpeSamplerConfig:
    name: str = "tpe"
    seed: int | None = field(default=42, metadata=OPTIONAL_SEED)
    n_startup_trials: int = field(default=5, metadata=at_least(0))
    startup: str = field(default="random", metadata=STARTUP)
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
    startup: str = field(default="random", metadata=STARTUP)


@dataclass
class GpSamplerConfig:
    name: str = "gp"
    seed: int | None = field(default=42, metadata=OPTIONAL_SEED)
    n_startup_trials: int = field(default=10, metadata=at_least(0))
    startup: str = field(default="random", metadata=STARTUP)


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
    """Asynchronous successive halving with promotion (study/search/asha.py)."""

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
    launcher: Any = MISSING
    search_space: dict[str, ParamSpec] = field(default_factory=dict)


SWEEP_KEYS = ("study", "sampler", "pruner", "scheduler", "launcher", "search_space")


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
    "launcher": LAUNCHER_SCHEMAS,
}
