"""Value checks declared on schema fields: `field(default=..., metadata=must(...))` makes a new
key and its range check one line. `checks.check_fields` applies them."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CHECK = "check"  # the dataclass field metadata key of a value check


MACHINE_CHECK = "machine_check"  # a check of this machine (its GPUs), made by the driver only


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


POSITIVE = must("a finite number > 0", lambda v: 0 < v < float("inf"))


# Layer widths and filter counts: a typo such as 1e9 is refused, not tried for hours.
MAX_UNITS = 65536
UNITS = must(f"an integer in [1, {MAX_UNITS}]", lambda v: 1 <= v <= MAX_UNITS)


NAME_LENGTH = 100  # MLflow, Optuna and folders all take this many characters
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


def is_name(value: str) -> bool:
    """Letters, digits, '_', '.' and '-', at most NAME_LENGTH: a study, a folder, a model name."""
    return len(value) <= NAME_LENGTH and re.fullmatch(NAME_PATTERN, value) is not None


NAME_EXPECTED = f"letters, digits, '_', '.' and '-' (at most {NAME_LENGTH})"
NAME = must(NAME_EXPECTED, is_name)


FRACTION = must("a number in [0, 1)", lambda v: 0 <= v < 1)  # dropout, Adam's betas, RMSprop's rho


FRACTION_CLOSED = must("a number in [0, 1]", lambda v: 0 <= v <= 1)


SEED = must("an integer in [0, 2**32 - 1]", lambda v: 0 <= v < 2**32)  # NumPy's seed range


OPTIONAL_SEED = must("null or an integer in [0, 2**32 - 1]", lambda v: v is None or 0 <= v < 2**32)
