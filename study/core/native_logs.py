"""TensorFlow's native log lines that its own log level cannot stop.

TensorFlow 2.21 logs through absl. Messages written before absl::InitializeLog() runs, which
happens while `import tensorflow` loads its shared libraries, go to stderr whatever
TF_CPP_MIN_LOG_LEVEL says (tensorflow/tensorflow#100442): "WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR", then the oneDNN and "Could not find cuda
drivers" INFO lines, twice per process. So the first `import tensorflow` of a process runs with
the C-level stderr captured; afterwards the lines are written back, less the native ones below
TF_CPP_MIN_LOG_LEVEL: what absl would have done had it been initialized. Everything else that
the import printed (Python warnings, native errors at or above the level) is kept.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

# absl's prefix: severity, MMDD hh:mm:ss.micros (before init: seconds since 1970), thread, file:line]
NATIVE_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] ")
PRE_INIT_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def native_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def keep_line(line: str, min_level: int) -> bool:
    """False for absl's pre-init notice and native lines below `min_level` (0-3, as in TF)."""
    if line.rstrip("\n") == PRE_INIT_NOTICE:
        return min_level == 0
    match = NATIVE_LINE.match(line)
    return match is None or SEVERITY[match.group(1)] >= min_level


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, through the normal path finder, with a quieter loader."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # the first import only: later ones are cached
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and isinstance(spec.loader, importlib.abc.Loader):
            spec.loader = _FilteredStderrLoader(spec.loader)
        return spec


class _FilteredStderrLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        with filtered_stderr(native_level()):
            self.loader.exec_module(module)

    def __getattr__(self, name):  # get_resource_reader, is_package, ...: the real loader's
        return getattr(self.loader, name)


class filtered_stderr:
    """Capture file descriptor 2 (where native code writes) and write back the kept lines."""

    def __init__(self, min_level: int):
        self.min_level = min_level

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.capture = tempfile.TemporaryFile(mode="w+b")
        os.dup2(self.capture.fileno(), 2)
        return self

    def __exit__(self, *exc_info) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.capture.seek(0)
        text = self.capture.read().decode(errors="replace")
        self.capture.close()
        kept = "".join(line for line in text.splitlines(keepends=True) if keep_line(line, self.min_level))
        if kept:
            sys.stderr.write(kept)
            sys.stderr.flush()


def quiet_backend_startup() -> None:
    """Install the quiet first import of TensorFlow (a no-op once it is imported)."""
    installed = any(isinstance(finder, _QuietImport) for finder in sys.meta_path)
    if native_level() > 0 and "tensorflow" not in sys.modules and not installed:
        sys.meta_path.insert(0, _QuietImport())
