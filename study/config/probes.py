"""What a config value points at, probed without starting a backend or writing anything:
storage and tracking URLs (parsed, their files and folders looked at), this machine's GPUs, and
the user's model builder (`model.builder`, imported the way `python -m` imports a module).

Each `*_problem` function returns what was expected, or None when the value is usable; the
schema declares them on its fields, so a bad value fails as any other range check.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import re
import sqlite3
import subprocess
import sys
import types
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from study.core.errors import ConfigError

# scheme: at the start of a value: a URL, never a file path (`sqlite:/x` is a broken URL).
URL_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


SQLITE_FILE = re.compile(r"sqlite:///(?P<database>[^?]+)(\?.*)?")


DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb", "mssql", "oracle")


TRACKING_SCHEMES = ("file", "http", "https", "databricks", "databricks-uc", "uc")


STORAGE_FORMS = (
    "an Optuna storage URL (dialect://user@host:port/database, e.g. sqlite:///runs/optuna.db) "
    "or a journal file path"
)


def storage_problem(storage: str) -> str | None:
    """What is wrong with `study.storage`, found without connecting to it."""
    if not URL_LIKE.match(storage):
        return _file_problem(Path(storage), "a journal file path")
    return _database_url_problem(storage, STORAGE_FORMS) or _foreign_sqlite(storage, "Optuna")


# MLflow 3 refuses new runs in its file store (a folder such as ./mlruns, or file:).
FILE_STORE_REFUSED = (
    "a database URL (e.g. sqlite:///runs/mlflow.db) or a tracking server (http://host:5000); "
    "MLflow 3 no longer takes runs in a folder (its file store; `mlflow migrate-filestore` moves one)"
)


def tracking_uri_problem(uri: str) -> str | None:
    """What is wrong with `mlflow.tracking_uri`, found without connecting to it."""
    if uri == "databricks":  # MLflow's name for the workspace of the configured profile
        return None
    scheme = uri.split(":", 1)[0].lower() if URL_LIKE.match(uri) else "file"
    if scheme == "file":  # a folder, or file:
        return FILE_STORE_REFUSED
    if scheme.split("+", 1)[0] in DATABASE_SCHEMES:
        return _database_url_problem(uri, "a database URL MLflow can open") or _foreign_sqlite(uri, "MLflow")
    if scheme in ("http", "https"):
        try:
            parts = urllib.parse.urlsplit(uri)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as error:
            return f"an {scheme} URL with a numeric port ({error})"
        return None if parts.hostname else f"an {scheme} URL with a host name"
    if scheme in TRACKING_SCHEMES or scheme in _tracking_plugin_schemes():
        return None
    return (
        "a tracking URI MLflow knows (a folder, file:, sqlite:, postgresql:, mysql:, mssql:, http:, https:, "
        f"databricks:), not scheme '{scheme}'"
    )


def _tracking_plugin_schemes() -> set[str]:
    from importlib.metadata import entry_points

    return {entry.name for entry in entry_points(group="mlflow.tracking_store")}


def _database_url_problem(url: str, forms: str) -> str | None:
    sqlite = SQLITE_FILE.fullmatch(url)
    if sqlite:  # the default: no need to start SQLAlchemy for it
        return _sqlite_problem(sqlite["database"])
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return f"{forms}; SQLAlchemy cannot parse this URL"
    except ValueError as error:  # a port that is not a number
        return f"{forms} with a numeric port ({error})"
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        return f"{forms}; SQLAlchemy has no database dialect '{parsed.drivername}'"
    try:
        dialect.import_dbapi()
    except ImportError as error:
        return f"{forms} whose driver is installed ({parsed.drivername}: {error})"
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_problem(parsed.database)
    return None


def _sqlite_problem(database: str | None) -> str | None:
    if not database or database == ":memory:":
        return "a SQLite database file (sqlite:///path/to/file.db), not an in-memory database"
    return _file_problem(Path(database), "a SQLite database file")


def _file_problem(path: Path, what: str) -> str | None:
    if path.is_dir():
        return f"{what}, but {path} is a folder"
    return _folder_problem(path.parent, f"{what} in a folder")


def _folder_problem(path: Path, what: str) -> str | None:
    """A folder that exists or can be made: the nearest existing ancestor must be a folder
    this process may write in (a read-only file system or folder is said now, not mid-run)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return f"{what}, but {existing} is a file"
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        return f"{what}, but {existing} cannot be written (read-only)"
    return None


def folder_problem(path: str) -> str | None:
    """For a schema field naming a local folder (runs_dir, study.output_dir); URLs are the
    tracking server's business."""
    return None if URL_LIKE.match(path) else _folder_problem(Path(path), "a folder that can be made")


# Tables that tell whose SQLite file it is: a store given as the other tool's is refused
# before either writes its own tables into it.
STORE_TABLES = {"Optuna": {"studies", "trials"}, "MLflow": {"experiments", "runs"}}


def _foreign_sqlite(url: str, expected: str) -> str | None:
    match = SQLITE_FILE.fullmatch(url)
    path = Path(match["database"]) if match else None
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return None  # not a database: the store itself says so, naming the file
    return foreign_store_problem(tables, expected, str(path))


def foreign_store_problem(tables: set[str], expected: str, where: str) -> str | None:
    """A database that holds the other tool's tables and not this one's: what was expected."""
    other = "MLflow" if expected == "Optuna" else "Optuna"
    if STORE_TABLES[other] <= tables and not STORE_TABLES[expected] <= tables:
        return f"an {expected} database, but {where} is {other}'s"
    return None


def gpus_problem(gpus: list[int]) -> str | None:
    if not gpus:
        return None
    visible, source = visible_gpus()
    if all(gpu in visible for gpu in gpus):
        return None
    if not visible:
        return f"no GPUs: this machine has none visible ({source})"
    return f"indices of this machine's GPUs ({', '.join(map(str, visible))}; {source})"


NVIDIA_PROC_DIR = Path("/proc/driver/nvidia/gpus")  # one entry per GPU the driver sees


def visible_gpus() -> tuple[list[int], str]:
    """Indices of the NVIDIA GPUs this process may use, and where they were found.

    Found without starting a backend: `nvidia-smi -L`, else the driver's /proc entries. When
    CUDA_VISIBLE_DEVICES is set, only the GPUs it lists (by index or UUID) are visible.
    """
    gpus, source = _machine_gpus()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return sorted(gpus), source
    visible = []
    for entry in (part.strip() for part in listed.split(",")):
        by_uuid = (index for index, uuid in gpus.items() if uuid and uuid == entry)
        index = int(entry) if entry.isdigit() else next(by_uuid, None)
        if index is None or index not in gpus:
            break  # CUDA ignores the entries after the first invalid one
        visible.append(index)
    return visible, f"{source}, CUDA_VISIBLE_DEVICES={listed!r}"


def _machine_gpus() -> tuple[dict[int, str], str]:
    """{index: UUID} of the machine's NVIDIA GPUs."""
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        listed = None
    if listed is not None and listed.returncode == 0:
        found = re.finditer(r"^GPU (\d+):.*?(?:\(UUID: (\S+)\))?$", listed.stdout, re.MULTILINE)
        return {int(match[1]): match[2] or "" for match in found}, "nvidia-smi -L"
    if NVIDIA_PROC_DIR.is_dir():
        return {index: "" for index in range(len(list(NVIDIA_PROC_DIR.iterdir())))}, str(NVIDIA_PROC_DIR)
    return {}, "no nvidia-smi and no NVIDIA driver found"


BUILDER_FORM = "'module:function' or 'path/to/file.py:function'"


def import_builder(path: str) -> Callable:
    """The user's model builder named by `model.builder`: `my_models:tiny_cnn` (a module found
    from the working directory, as `python -m` finds it) or `models/my_models.py:tiny_cnn`.
    Anything that keeps it from being called raises ConfigError naming the key."""
    module_name, _, attribute = path.rpartition(":")
    if not module_name or not attribute.isidentifier():
        raise ConfigError(f"model.builder: expected {BUILDER_FORM}, got {path!r}")
    try:
        module = _import_user_module(module_name)
    except ConfigError:
        raise
    except Exception as error:  # the user's code raised while importing
        raise ConfigError(
            f"model.builder: {path}: importing {module_name} failed ({type(error).__name__}: {error})"
        ) from None
    builder = getattr(module, attribute, None)
    if builder is None:
        raise ConfigError(f"model.builder: {path}: {module_name} has no {attribute!r}")
    if not callable(builder):
        raise ConfigError(f"model.builder: {path}: expected a function, got {type(builder).__name__}")
    return builder


def builder_source_digest(path: str) -> str:
    """sha256 of the source file of the builder's module, found without running it: a replay
    compares it with the original run's before any of the module's code runs."""
    module_name = path.rpartition(":")[0]
    if module_name.endswith(".py"):
        source = Path(module_name)
    else:
        _add_working_directory()
        spec = importlib.util.find_spec(module_name)
        source = Path(spec.origin) if spec is not None and spec.origin else None
    if source is None or not source.is_file():
        return ""
    return "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()


def _add_working_directory() -> None:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the user's modules beside their conf/


def _import_user_module(name: str) -> types.ModuleType:
    if name.endswith(".py"):
        file = Path(name).resolve()
        if not file.is_file():
            raise ConfigError(f"model.builder: {name} is not a file")
        module_name = f"study_user_model_{hashlib.sha256(str(file).encode()).hexdigest()[:12]}"
        if module_name in sys.modules:
            return sys.modules[module_name]
        spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module
    _add_working_directory()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name.split(".")[0] and error.name != name:
            raise
        raise ConfigError(
            f"model.builder: no module {name!r} importable from {os.getcwd()} (expected {BUILDER_FORM})"
        ) from None


KERAS_BACKENDS = ("tensorflow", "jax", "torch", "numpy", "openvino")


def check_keras_backend() -> None:
    """KERAS_BACKEND names a backend Keras has: said now, not by a traceback once a model is built."""
    name = os.environ.get("KERAS_BACKEND")
    if name is not None and name not in KERAS_BACKENDS:
        raise ConfigError(f"KERAS_BACKEND: expected one of {', '.join(KERAS_BACKENDS)}, got {name!r}")
