"""An error's one line: what a user reads when input is bad or a trial fails.

`ConfigError` is bad user input (a config key, a value, a data file, a store); its message is
one line naming the key or file. `describe_error` turns the errors of Hydra, OmegaConf and
YAML into such a line; `error_line` and `short_error` shorten any exception for a report or
a run's `error` tag. Every one of them masks credentials. Imports nothing heavy: errors are
reported before any backend starts.
"""

from __future__ import annotations

import yaml
from omegaconf.errors import OmegaConfBaseException

from study.core.masking import mask_secrets

MAX_ERROR_LENGTH = 300  # the `error` tag: one line a person reads in the runs list


class ConfigError(ValueError):
    """Bad user input: a config key, a value or a data file. Its message is one line."""


def error_line(error: BaseException) -> str:
    """The first line of an exception's message, masked: for one-line error reports."""
    text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return mask_secrets(lines[0]) if lines else type(error).__name__


def short_error(error: BaseException | str, limit: int = MAX_ERROR_LENGTH) -> str:
    """One readable line: the type and the first line of the message, masked and cut short.

    Some messages carry whole arrays; the full text goes to the run's error.txt instead.
    """
    if isinstance(error, str):
        text = error
    else:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    text = mask_secrets(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_omegaconf_error(error: OmegaConfBaseException) -> str:
    """One line naming the key, from OmegaConf's multi-line message."""
    message = (getattr(error, "msg", None) or str(error)).strip().splitlines()[0]
    key = getattr(error, "full_key", None)
    return f"{key}: {message}" if key else message


def describe_error(error: BaseException) -> str:
    """One line for an error of user input raised by Hydra, OmegaConf or this package."""
    if isinstance(error, yaml.YAMLError):
        return describe_yaml_error(error)
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return describe_omegaconf_error(cause)
    if isinstance(error, OmegaConfBaseException):
        return describe_omegaconf_error(error)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    full_key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
    if full_key and len(lines) > 1:
        # Hydra: "In 'group/option': ConfigKeyError raised while composing config:", then
        # OmegaConf's message and the key it names.
        detail = lines[1] if lines[0].endswith("while composing config:") else lines[0]
        return f"{full_key}: {detail}"
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


def describe_yaml_error(error: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: the file, where, and what the parser expected."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).strip().splitlines()[0]
    if mark is None:
        return f"not valid YAML: {problem}"
    return f"{mark.name}: not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
