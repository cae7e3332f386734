"""Credentials in storage and tracking URLs never leave the process unmasked.

`mask_secrets` hides them in text; the console streams, the log records and the files Hydra
writes for each command (`<output dir>/.hydra/*.yaml`) go through it too. This module
imports nothing heavy: error messages use it before any backend starts.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import TextIO

from study.core.files import publish_text

# scheme://user:password@host -> scheme://user:***@host; ?password=... and the like too.
# Generated passwords hold "/", "+", "%2F" and even "@", and text shows URLs escaped: Hydra
# writes "postgresql\://user\:pw@" (multirun), URL-encoding "%3A%2F%2F", "%40". So the
# password is anything up to the LAST "@" before the next URL of the same word (over-masking
# "host:5000/a@b" is the safe mistake), and each separator may come in either escaped form.
# Bounded repeats: every console write goes through this, and unbounded ones made a long
# word (a progress bar, a base64 blob) cost quadratic time.
_COLON = r"(?:\\?:|%3[aA])"
_AT = r"(?:@|%40)"
_SCHEME = rf"[a-zA-Z][\w+.-]{{0,31}}{_COLON}(?://|%2[fF]%2[fF])"
_USER = r"(?:[^:/@\s\\%]|%(?!3[aA]|40)[0-9a-fA-F]{2}){0,256}"
_PASSWORD = rf"(?:(?!{_SCHEME})\S){{0,1024}}"
_URL_PASSWORD = re.compile(rf"(\b{_SCHEME}{_USER}{_COLON})({_PASSWORD})({_AT})")
_QUERY_SECRET = re.compile(
    r"((?:password|passwd|pwd|token|secret|access_key|secret_key)(?:\\?=|%3[dD]))([^&\s]+)", re.I
)


def mask_secrets(text: str) -> str:
    """Hide credentials in URLs before anything is logged, written as an artifact or printed."""
    return _QUERY_SECRET.sub(r"\1***", _URL_PASSWORD.sub(r"\1***\3", text))


def write_masked(path: Path, text: str) -> Path:
    return publish_text(path, mask_secrets(text))


class MaskedStream:
    """A text stream that masks credentials in everything written through it.

    Python's tracebacks, `print`, `logging` and Hydra's "Error executing job with overrides"
    line all write to `sys.stdout`/`sys.stderr`, so wrapping those two covers the console,
    including the text of exceptions raised by MLflow or SQLAlchemy with the URL in them.
    """

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(mask_secrets(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def mask_console() -> None:
    """Mask credentials in what this process writes to stdout and stderr (idempotent)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, MaskedStream):
            setattr(sys, name, MaskedStream(stream))


class MaskSecretsFilter(logging.Filter):
    """Masks credentials in a log record before any handler formats it (console or file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_secrets(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        return True


def mask_log_records() -> None:
    """Mask credentials in every record the root logger's handlers write (idempotent)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, MaskSecretsFilter) for f in handler.filters):
            handler.addFilter(MaskSecretsFilter())


def private_files() -> None:
    """What this process (and every process it starts) creates is readable by its owner only.

    Hydra writes the command line's overrides, passwords included, to `.hydra/*.yaml`,
    `multirun.yaml` and its log before any code here can mask them, and a run's artifacts may
    quote its config: masking is the second line, a umask of 077 the first (idempotent).
    """
    os.umask(os.umask(0o077) | 0o077)


def mask_files(folder: Path, pattern: str = "*.yaml") -> None:
    """Rewrite the matching files of `folder` with their credentials masked."""
    if not folder.is_dir():
        return
    for file in folder.glob(pattern):
        text = file.read_text()
        if mask_secrets(text) != text:
            write_masked(file, text)
