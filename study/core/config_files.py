"""Config files a user or a tracking store hands over, read as data.

- YAML is bounded: a file over `MAX_YAML_BYTES`, nested deeper than `MAX_YAML_DEPTH`, or with
  anchors and aliases (`&a`, `*a`: a few hundred bytes of them expand to gigabytes) is refused
  with one line naming it, after a token scan that takes milliseconds, before it is parsed.
- A logged config (a run's config.yaml) is data: its `hydra:` block is dropped (Hydra would
  call the callbacks and logging factories it names) and a resolver call in it
  (`${oc.env:VAR}` would log the variable's value) is refused; references to its own keys
  (`${runs_dir}`) and calls of the project's own resolvers (`OWN_RESOLVERS`) stay.
- `guard_hydra_config_files()` puts every file Hydra composes through the YAML checks, and
  takes Hydra's own settings only from the package's conf/ and the command line; the primary
  config of a `--config-path` folder (a replayed config.yaml) is read as a logged config.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from hydra._internal.core_plugins.file_config_source import FileConfigSource
from hydra._internal.sources_registry import SourcesRegistry
from hydra.core.plugins import Plugins
from hydra.plugins.config_source import ConfigResult
from omegaconf import DictConfig, OmegaConf

from study.core.errors import ConfigError, describe_yaml_error

MAX_YAML_BYTES = 1_000_000
MAX_YAML_DEPTH = 64

# The same folder as study.config.CONFIG_DIR (this layer may not import it).
PACKAGE_CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"

_SCANNER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml scans 1 MB in a fraction of a second
_OPENING = (
    yaml.BlockMappingStartToken,
    yaml.BlockSequenceStartToken,
    yaml.FlowMappingStartToken,
    yaml.FlowSequenceStartToken,
)
_CLOSING = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)
RESOLVER_CALL = re.compile(r"\$\{\s*([\w.\-]+)\s*:")  # ${oc.env:X}; ${a.b} is a reference
# Registered by study.config.run_dirs (tests/core/test_config_files.py checks the list).
OWN_RESOLVERS = frozenset({"process_token"})
HYDRA_WORD = re.compile(r"\bhydra\b")


def check_yaml_file(path: str | Path) -> None:
    """Refuse a YAML file that is too large, too deep or uses anchors and aliases."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_YAML_BYTES + 1)  # a FIFO or /dev/zero stops here too
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror or error})") from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_YAML_BYTES} bytes; expected a YAML config of at most 1 MB"
        )
    check_yaml_text(data, str(path))


def check_yaml_text(data: bytes | str, name: str) -> None:
    depth = 0
    try:
        for token in yaml.scan(data, Loader=_SCANNER):
            if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
                raise ConfigError(
                    f"{name}: line {token.start_mark.line + 1}: YAML anchors and aliases (&, *) "
                    "are not accepted; expected the values written out"
                )
            depth += isinstance(token, _OPENING) - isinstance(token, _CLOSING)
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(
                    f"{name}: line {token.start_mark.line + 1}: nested deeper than {MAX_YAML_DEPTH} levels"
                )
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        if mark is not None:
            # libyaml's marks name a byte string, not the file
            error.problem_mark = yaml.Mark(name, mark.index, mark.line, mark.column, None, None)
            raise ConfigError(describe_yaml_error(error)) from None
        raise ConfigError(f"{name}: {describe_yaml_error(error)}") from None


def load_logged_config(path: str | Path, name: str | None = None) -> DictConfig:
    """A config.yaml from a tracking store, checked and read as data (see `as_data`); errors
    call it `name` (a download's scratch path means nothing to a user)."""
    name = name or str(path)
    try:
        check_yaml_file(path)
        cfg = OmegaConf.load(path)
    except (ConfigError, yaml.YAMLError) as error:
        line = str(error) if isinstance(error, ConfigError) else describe_yaml_error(error)
        raise ConfigError(line.replace(str(path), name)) from None
    return as_data(cfg, name)


def as_data(cfg: DictConfig, name: str) -> DictConfig:
    """`cfg` without its `hydra:` block; a resolver call in it is refused with one line."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    if not isinstance(plain, dict):
        raise ConfigError(f"{name}: expected a mapping of config keys, got a {type(plain).__name__}")
    plain.pop("hydra", None)
    for key, value in _strings(plain):
        call = next((c for c in RESOLVER_CALL.finditer(value) if c.group(1) not in OWN_RESOLVERS), None)
        if call:
            raise ConfigError(
                f"{name}: {key}: calls the resolver {call.group(1)}; a logged config is data "
                "(expected values and ${key} references only)"
            )
    return OmegaConf.create(plain)


def _strings(node, prefix: str = ""):
    """(dotted key, value) of every string in a plain config."""
    if isinstance(node, dict):
        children = ((f"{prefix}.{key}" if prefix else str(key), value) for key, value in node.items())
    elif isinstance(node, list):
        children = ((f"{prefix}[{index}]", value) for index, value in enumerate(node))
    else:
        return
    for path, value in children:
        if isinstance(value, str):
            yield path, value
        else:
            yield from _strings(value, path)


class CheckedFileConfigSource(FileConfigSource):
    """Hydra's file config source, with the checks of this module on every file it loads."""

    def load_config(self, config_path: str) -> ConfigResult:
        file = Path(self.path) / self._normalize_file_name(config_path)
        if file.is_file():
            check_yaml_file(file)
        result = super().load_config(config_path)
        if Path(self.path).resolve() != PACKAGE_CONFIG_DIR:
            result.config = _without_hydra_settings(result, config_path, str(file), self.provider == "main")
        return result


def _without_hydra_settings(result: ConfigResult, config_path: str, name: str, primary: bool) -> DictConfig:
    """A config from outside the package's conf/ sets no Hydra settings: its `hydra:` block is
    dropped (a logged config.yaml of study < 0.3 has one), and a file placed in Hydra's own
    groups or packages is refused."""
    if config_path.lstrip("/").startswith("hydra/") or HYDRA_WORD.search(
        str(result.header.get("package") or "")
    ):
        raise ConfigError(
            f"{name}: sets Hydra's own settings; expected them in the package's conf/ or as overrides"
        )
    cfg = result.config
    defaults = cfg.get("defaults") if isinstance(cfg, DictConfig) else None
    for entry in defaults or ():
        text = entry if isinstance(entry, str) else " ".join(str(key) for key in entry)
        if HYDRA_WORD.search(text):
            raise ConfigError(
                f"{name}: defaults: {text} selects Hydra's own settings; expected them as overrides"
            )
    if not isinstance(cfg, DictConfig):
        return cfg
    if primary:  # the replayed config.yaml of `--config-path DIR --config-name config`
        return as_data(cfg, name)
    return OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])


def guard_hydra_config_files() -> None:
    """Every config file Hydra loads from a folder goes through `CheckedFileConfigSource`."""
    Plugins.instance()  # registers Hydra's own sources first (it refuses a second "file" source)
    SourcesRegistry.instance().types[CheckedFileConfigSource.scheme()] = CheckedFileConfigSource
