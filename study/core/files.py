"""Output files that more than one process may write at once, published whole.

Two drivers that finish one study together both write its outputs (the plots, the leaderboard,
the winner's confusion matrix) into the same study folder, and each uploads them to the parent
run. A file written in place can be read half written: an upload takes its Content-Length from
the file's size, then sends the file up to its end, so a file that grew in between puts the
extra bytes in front of the next request on that connection (which an `mlflow server` then
refuses: "400 Invalid HTTP request received"). `publish` writes a private file and moves it onto
the name at once: whoever opens the name reads one whole version, never two mixed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path


def publish(path: Path, write: Callable[[Path], object]) -> Path:
    """`write` the file to a private name beside `path`, then move it onto `path` in one step;
    the private name keeps the suffix, which some writers (matplotlib) read the format from."""
    private = path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}{path.suffix}")
    try:
        write(private)
        os.replace(private, path)
    finally:
        private.unlink(missing_ok=True)
    return path


def publish_text(path: Path, text: str) -> Path:
    return publish(path, lambda private: private.write_text(text))
