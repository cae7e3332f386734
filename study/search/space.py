"""The typed search space of a study: checking it, sampling it into Hydra overrides.

An entry either picks a config group option (`model: {type: categorical, choices: [mlp, cnn]}`)
or sets a value (`optimizer.learning_rate: {type: float, low: 1e-4, high: 1e-1, log: true}`).
Entries are sampled in file order; an entry with `when` is sampled only when its conditions
hold for the values sampled so far (or, for keys not searched, for the base config).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from omegaconf import DictConfig, ListConfig, OmegaConf

from study.config.checks import checked_config
from study.config.compose import Composer
from study.config.schema import GROUPS, SCHEMAS
from study.core.errors import ConfigError, describe_error

TYPES = ("categorical", "float", "int")
# What a trial may vary: the training config. Where runs are stored (mlflow.*, runs_dir) and the
# study itself (study.*, sampler, ...) are the same for every trial.
SEARCHABLE_PREFIXES = tuple(f"{part}." for part in ("model", "optimizer", "trainer", "data"))
_NOT_FOUND = object()


@dataclass(frozen=True)
class Entry:
    name: str  # the Optuna parameter name
    target: str  # the config key it sets
    spec: DictConfig

    @property
    def is_group(self) -> bool:
        return self.target in GROUPS

    def distribution(self) -> optuna.distributions.BaseDistribution:
        spec = self.spec
        if spec.type == "categorical":
            return optuna.distributions.CategoricalDistribution(list(spec.choices))
        if spec.type == "int":
            return optuna.distributions.IntDistribution(
                int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1)
            )
        return optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)

    def extreme_values(self) -> list[Any]:
        """The values that test an entry: every choice, or both ends of a range."""
        spec = self.spec
        if spec.type == "categorical":
            return list(spec.choices)
        ends = [spec.low, spec.high]
        return [int(end) for end in ends] if spec.type == "int" else ends

    def contains(self, value: Any) -> bool:
        if self.spec.type == "categorical":
            return value in list(self.spec.choices)
        return isinstance(value, int | float) and self.spec.low <= value <= self.spec.high

    def describe_values(self) -> str:
        if self.spec.type == "categorical":
            return ", ".join(map(str, self.spec.choices))
        return f"values in [{self.spec.low}, {self.spec.high}]"

    def grid_values(self) -> list[Any]:
        """Every value this entry takes on a grid (sampler=grid)."""
        spec = self.spec
        if spec.type == "categorical":
            return list(spec.choices)
        if spec.step is None and spec.type == "float":
            raise ConfigError(f"search_space.{self.name}: sampler=grid needs choices or a step")
        step = spec.step or 1
        count = math.floor((spec.high - spec.low) / step + 1e-9) + 1
        values = [spec.low + i * step for i in range(count)]
        return [int(v) for v in values] if spec.type == "int" else values


def same_kind(value: Any, current: Any) -> bool:
    """Could `value` be the config's `current` value of a key (a number for a number, ...)?"""
    if current is None or value is None:
        return True
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool)
    if isinstance(current, int | float):
        return isinstance(value, int | float)
    return isinstance(value, type(current))


class SearchSpace:
    def __init__(self, space: Mapping[str, DictConfig]):
        self.entries = [Entry(name, spec.target or name, spec) for name, spec in space.items()]
        self._check_structure()

    def _check_structure(self) -> None:
        known: set[str] = set()
        for entry in self.entries:
            spec, where = entry.spec, f"search_space.{entry.name}"
            if spec.type not in TYPES:
                raise ConfigError(f"{where}.type: expected one of {list(TYPES)}, got {spec.type!r}")
            if spec.type == "categorical":
                if not spec.choices:
                    raise ConfigError(f"{where}.choices: expected a non-empty list for a categorical")
            else:
                if spec.low is None or spec.high is None:
                    raise ConfigError(f"{where}: a {spec.type} entry needs low and high")
                if not all(math.isfinite(bound) for bound in (spec.low, spec.high)):
                    raise ConfigError(f"{where}: expected finite low and high, got {spec.low}, {spec.high}")
                if spec.low > spec.high:
                    raise ConfigError(f"{where}: expected low <= high, got {spec.low} > {spec.high}")
                if spec.log and spec.low <= 0:
                    raise ConfigError(f"{where}.low: expected > 0 with log: true, got {spec.low}")
                if spec.step is not None and (spec.step <= 0 or spec.log):
                    raise ConfigError(f"{where}.step: expected > 0 and log: false, got {spec.step}")
            if not (entry.is_group or entry.target.startswith(SEARCHABLE_PREFIXES)):
                raise ConfigError(
                    f"{where}: {entry.target} cannot be searched; expected a config group "
                    f"({', '.join(GROUPS)}) or a key under {', '.join(SEARCHABLE_PREFIXES)}"
                )
            if entry.target in (spec.when or {}):
                raise ConfigError(f"{where}.when.{entry.target}: an entry cannot depend on its own value")
            if entry.is_group and spec.type != "categorical":
                raise ConfigError(f"{where}: a config group ({entry.target}) is searched as a categorical")
            for key in spec.when or {}:
                if key in {e.target for e in self.entries} and key not in known:
                    raise ConfigError(f"{where}.when: {key} is searched after this entry; list it first")
            known.add(entry.target)

    def check_against(self, compose: Composer) -> None:
        """Compose and check a config for each entry's extreme values, before any trial runs.

        Catches unknown keys, wrong types, out-of-range values and unknown group options,
        naming the search-space entry; and conditions (`when`) that can never hold.
        """
        self.check_conditions(compose([]))
        groups = {e.target: list(e.spec.choices) for e in self.entries if e.is_group}
        for entry in self.entries:
            probes = entry.extreme_values()
            for setting in self._group_settings(entry, groups):
                for value in probes:
                    overrides = [*as_overrides(setting), f"{entry.target}={as_override_value(value)}"]
                    try:
                        checked_config(compose(overrides))
                    except Exception as error:
                        raise ConfigError(
                            f"search_space.{entry.name}: {entry.target}={value!r} does not make a valid "
                            f"config ({describe_error(error)})"
                        ) from None

    def check_conditions(self, base: DictConfig) -> None:
        """Each `when` names a searched key, a config group or a key of the config, and values
        it can take: a condition that can never hold would silently never sample its entry."""
        searched = {entry.target: entry for entry in self.entries}
        for entry in self.entries:
            for key, allowed in (entry.spec.when or {}).items():
                where = f"search_space.{entry.name}.when.{key}"
                values = list(allowed) if isinstance(allowed, list | ListConfig) else [allowed]
                if key in searched:
                    unknown = [value for value in values if not searched[key].contains(value)]
                    takes = searched[key].describe_values()
                elif key in GROUPS:  # the built-in options, and the base config's own (a user's model)
                    options = {*SCHEMAS.get(key, ()), OmegaConf.select(base, f"{key}.name")}
                    unknown = [value for value in values if value not in options] if key != "data" else []
                    takes = ", ".join(sorted(str(option) for option in options))
                elif OmegaConf.select(base, key, default=_NOT_FOUND) is _NOT_FOUND:
                    raise ConfigError(
                        f"{where}: {key!r} is not a key of the config; expected a searched key, a config "
                        f"group ({', '.join(GROUPS)}) or a config key such as trainer.epochs"
                    )
                else:
                    current = OmegaConf.select(base, key)
                    unknown = [value for value in values if not same_kind(value, current)]
                    takes = f"values like {current!r}"
                if unknown:
                    raise ConfigError(f"{where}: {key} never takes {unknown}; it takes {takes}")

    @staticmethod
    def _group_settings(entry: Entry, groups: dict[str, list[Any]]) -> list[dict[str, Any]]:
        """Every combination of the searched groups' options that the entry can meet."""
        allowed = {
            group: [c for c in choices if c in (entry.spec.when or {}).get(group, choices)]
            for group, choices in groups.items()
            if group != entry.target
        }
        combinations = itertools.product(*allowed.values())
        return [dict(zip(allowed, values, strict=True)) for values in combinations] or [{}]

    def sample(self, trial: optuna.Trial, base: DictConfig) -> dict[str, Any]:
        """Sample the entries whose conditions hold; returns {config key: value}."""
        sampled: dict[str, Any] = {}
        for entry in self.entries:
            if not self._conditions_hold(entry, sampled, base):
                continue
            distribution = entry.distribution()
            spec = entry.spec
            if spec.type == "categorical":
                value = trial.suggest_categorical(entry.name, distribution.choices)
            elif spec.type == "int":
                value = trial.suggest_int(
                    entry.name, distribution.low, distribution.high, step=distribution.step, log=spec.log
                )
            else:
                value = trial.suggest_float(entry.name, spec.low, spec.high, step=spec.step, log=spec.log)
            sampled[entry.target] = value
        return sampled

    def base_values(self, base: DictConfig) -> dict[str, Any]:
        """The base config's value for each entry that applies to it: a trial to enqueue."""
        params: dict[str, Any] = {}
        chosen: dict[str, Any] = {}
        for entry in self.entries:
            if not self._conditions_hold(entry, chosen, base):
                continue
            value = config_value(base, entry.target)
            chosen[entry.target] = value
            if entry.contains(value):  # a base value outside the range is left to the sampler
                params[entry.name] = value
        return params

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {entry.name: entry.distribution() for entry in self.entries}

    def grid(self) -> dict[str, list[Any]]:
        return {entry.name: entry.grid_values() for entry in self.entries}

    @staticmethod
    def _conditions_hold(entry: Entry, sampled: Mapping[str, Any], base: DictConfig) -> bool:
        for key, allowed in (entry.spec.when or {}).items():
            value = sampled[key] if key in sampled else config_value(base, key)
            if value not in list(allowed):
                return False
        return True


def config_value(cfg: DictConfig, key: str) -> Any:
    """A config value; for a group key, the name of its selected option."""
    if key in GROUPS:
        return cfg[key].name
    return OmegaConf.select(cfg, key)


def as_overrides(sampled: Mapping[str, Any]) -> list[str]:
    return [f"{key}={as_override_value(value)}" for key, value in sampled.items()]


def as_override_value(value: Any) -> str:
    """A value in Hydra's override grammar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if re.fullmatch(r"[A-Za-z_][\w\-./]*", str(value)) and str(value) not in ("true", "false", "null"):
        return str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
