"""What every layer shares and nothing else provides: the names stored in Optuna and MLflow
(`names`), an error's one line (`errors`), credentials kept out of every output (`masking`),
the commands' plumbing (`cli`), output files published whole (`files`) and TensorFlow's
start-up lines filtered (`native_logs`).
Imports nothing heavy and no other package of `study`."""

from study.core.errors import ConfigError, describe_error, error_line, short_error
from study.core.masking import mask_secrets

__all__ = ["ConfigError", "describe_error", "error_line", "mask_secrets", "short_error"]
