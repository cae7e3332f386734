"""Checking a config against its schemas: `checked_config` (the train part) and
`checked_sweep_config` (the study part).

They apply the schemas again to a config that did not come through composition (a replayed
`config.yaml`, a hand-made `DictConfig`) and run the value checks declared on the schema fields
(`field(default=..., metadata=must(...))`). Every problem is a one-line `ConfigError`.
"""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from study.config.fields import CHECK, MACHINE_CHECK
from study.config.probes import check_keras_backend, import_builder
from study.config.schema import SCHEMAS, TrainConfig
from study.config.study_schema import SWEEP_KEYS, SWEEP_SCHEMAS, SweepStudyPart
from study.core.errors import ConfigError, describe_omegaconf_error
from study.core.masking import mask_secrets


def checked_config(cfg: DictConfig) -> DictConfig:
    """Return `cfg` typed by its schemas, resolved and read-only, or raise ConfigError."""
    try:
        plain = resolved_without_hydra(cfg)
        for key in SWEEP_KEYS:  # a study's config trains like a plain run
            plain.pop(key, None)
        typed = OmegaConf.merge(OmegaConf.structured(TrainConfig), _typed_groups(plain, SCHEMAS))
        OmegaConf.resolve(typed)  # schema defaults may interpolate, e.g. ${runs_dir}
        OmegaConf.to_container(typed, throw_on_missing=True)
    except OmegaConfBaseException as error:
        raise ConfigError(describe_omegaconf_error(error)) from None
    check_fields(typed)
    check_keras_backend()
    OmegaConf.set_readonly(typed, True)
    return typed


def resolved_without_hydra(cfg: DictConfig) -> dict:
    """The config as plain containers, resolved, without Hydra's own block.

    The `hydra:` block of a replayed config.yaml is dropped unresolved: it interpolates
    `${now:...}`, a resolver that exists only inside a running Hydra app.
    """
    plain = OmegaConf.to_container(cfg, resolve=False)
    if not isinstance(plain, dict):
        raise ConfigError(f"the config must be a mapping, got {type(plain).__name__}")
    plain.pop("hydra", None)
    return OmegaConf.to_container(OmegaConf.create(plain), resolve=True)


def _typed_groups(plain: dict, schemas: dict[str, dict[str, type]]) -> dict:
    typed = dict(plain)
    for group, options in schemas.items():
        node = plain.get(group)
        if not isinstance(node, dict):
            raise ConfigError(f"{group}: expected a config group with a 'name', got {node!r}")
        name = node.get("name")
        if group == "model" and "builder" in node:  # the user's model: its keys are its own
            import_builder(str(node["builder"]))
            typed[group] = OmegaConf.create(node)
            continue
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
        plain = resolved_without_hydra(cfg)
        sweep_part = {key: plain.get(key) for key in SWEEP_KEYS}
        typed = OmegaConf.merge(
            OmegaConf.structured(SweepStudyPart), _typed_groups(sweep_part, SWEEP_SCHEMAS)
        )
        OmegaConf.to_container(typed, throw_on_missing=True)
    except OmegaConfBaseException as error:
        raise ConfigError(describe_omegaconf_error(error)) from None
    check_fields(typed)
    if typed.scheduler.name == "asha" and typed.pruner.name != "none":
        raise ConfigError(
            "pruner: expected none with scheduler=asha (the scheduler decides which trials go on; "
            f"or pick scheduler=none to prune), got {typed.pruner.name!r}"
        )
    if not typed.search_space:
        raise ConfigError("search_space: expected at least one entry, got an empty search space")
    if typed.pruner.name == "threshold" and typed.pruner.lower is None and typed.pruner.upper is None:
        raise ConfigError("pruner: threshold needs pruner.lower or pruner.upper, got neither")
    OmegaConf.set_readonly(typed, True)
    return typed


def check_fields(node: DictConfig, prefix: str = "", key: str = CHECK) -> None:
    """Apply the checks declared on the schema fields of `node` and of every node below it."""
    schema = OmegaConf.get_type(node)
    fields = dataclasses.fields(schema) if dataclasses.is_dataclass(schema) else ()
    checks = {f.name: f.metadata[key] for f in fields if key in f.metadata}
    for name in node:
        value = node[name]
        if isinstance(value, DictConfig):
            check_fields(value, f"{prefix}{name}.", key)
            continue
        if name not in checks:
            continue
        plain = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
        expected = checks[name].problem(plain)
        if expected is not None:
            raise ConfigError(mask_secrets(f"{prefix}{name}: expected {expected}, got {plain!r}"))


def check_on_this_machine(settings: DictConfig) -> None:
    """The checks of a sweep config that depend on the machine the driver runs on (its GPUs).

    Not part of `checked_sweep_config`: a worker sees only its own GPU.
    """
    check_fields(settings, key=MACHINE_CHECK)
