"""Composing a config the way the command line does, from Python: the sweep config with the
user's overrides, then each trial's sampled values.

The driver and every worker process compose from the same (config folder, config name,
overrides), so a trial's config is the one the user's command would have composed.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from study.config.schema import CONFIG_DIR
from study.core.config_files import guard_hydra_config_files

Composer = Callable[[list[str]], DictConfig]  # overrides -> the composed config


def sweep_composer(config_dir: str, config_name: str, overrides: list[str]) -> Composer:
    """compose(extra) -> the sweep config with the user's overrides, then `extra` (sampled).

    Hydra composes once per set of config group choices (a few hundred ms); the sampled
    values (`optimizer.learning_rate=0.01`) are then set on a copy, with Hydra's override
    parser and `OmegaConf.update`, as Hydra itself applies value overrides after composing.
    Every config file Hydra reads is checked first, as in the commands.
    """
    guard_hydra_config_files()

    @functools.lru_cache(maxsize=16)
    def compose_groups(merged: tuple[str, ...]) -> DictConfig:
        if GlobalHydra.instance().is_initialized():  # inside @hydra.main: its search path
            return compose(config_name, overrides=list(merged))
        with initialize_config_dir(config_dir, version_base="1.3"):
            return compose(config_name, overrides=list(merged))

    def compose_with(extra: list[str]) -> DictConfig:
        values = [override for override in extra if is_value_override(override)]
        kept = merge_overrides(overrides, extra)  # a sampled key beats a command-line one
        cfg = copy.deepcopy(compose_groups(tuple(o for o in kept if o not in values)))
        for override in OverridesParser.create().parse_overrides(values):
            try:
                OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
            except OmegaConfBaseException as error:  # the exception Hydra's compose raises
                raise ConfigCompositionException(f"Error merging override {override.input_line}") from error
        return cfg

    return compose_with


def is_value_override(override: str) -> bool:
    """`a.b=value`: sets a config value (a dotted key never names a config group)."""
    key = override.split("=", 1)[0]
    return "." in key and not key.startswith(("+", "~")) and not any(c in key for c in "@/")


def merge_overrides(base: list[str], extra: list[str]) -> list[str]:
    """`extra` wins over `base` for the same key (a sampled value over a command-line one)."""
    extra_keys = {override.split("=", 1)[0].lstrip("+~") for override in extra}
    return [o for o in base if o.split("=", 1)[0].lstrip("+~") not in extra_keys] + extra


def compose_config(
    config_name: str = "train", overrides: list[str] | tuple[str, ...] = (), config_dir: str | None = None
) -> DictConfig:
    """The config `python -m study.<config_name> OVERRIDES` composes, for code and notebooks:
    Hydra's compose API over the package's conf/ (or `config_dir`)."""
    composer = sweep_composer(str(config_dir or CONFIG_DIR), config_name, list(overrides))
    return composer([])
