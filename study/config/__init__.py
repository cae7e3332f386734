"""The config layer: typed schemas (`schema`), their checks (`checks`), probes of what a value
points at (`probes`) and composition from Python (`compose`). It imports nothing heavy and no
other layer of the package, so every command checks its input in about a second."""

from study.config.checks import (
    check_fields,
    check_on_this_machine,
    checked_config,
    checked_sweep_config,
    resolved_without_hydra,
)
from study.config.compose import Composer, compose_config, merge_overrides, sweep_composer
from study.config.probes import gpus_problem, storage_problem, tracking_uri_problem, visible_gpus
from study.config.run_dirs import TRAIN_RUN_DIR
from study.config.schema import CONFIG_DIR, SCHEMAS, register_configs
from study.config.study_schema import SWEEP_SCHEMAS

__all__ = [
    "CONFIG_DIR",
    "SCHEMAS",
    "SWEEP_SCHEMAS",
    "TRAIN_RUN_DIR",
    "Composer",
    "check_fields",
    "check_on_this_machine",
    "checked_config",
    "checked_sweep_config",
    "compose_config",
    "gpus_problem",
    "merge_overrides",
    "register_configs",
    "resolved_without_hydra",
    "storage_problem",
    "sweep_composer",
    "tracking_uri_problem",
    "visible_gpus",
]
