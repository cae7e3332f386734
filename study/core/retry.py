"""Store calls that survive an outage: retried with back-off while the store is unreachable, for
a window (`study.store_retry_seconds`), then one error naming the store and the real cause.

A database that restarts, or a network that drops for a while, shows up as a refused or a
dropped connection, wrapped by SQLAlchemy and then by Optuna ("invalid data in the commit") or
MLflow (TEMPORARILY_UNAVAILABLE): `connection_error` looks through the chain of causes for it.
Every other error (bad data, a full disk, a locked SQLite file, which has its own timeout) is
raised at once: waiting cannot fix it. Imports nothing heavy: the driver errors of PostgreSQL
and MySQL are recognised by their class names and codes, not imported.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from study.core.masking import mask_secrets

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_WINDOW_SECONDS = 60  # study.store_retry_seconds
FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 5.0  # a store that is back is used again within seconds
# SQLSTATEs of a refused or lost connection: class 08, and the server shutting down or starting
# up (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now).
CONNECTION_SQLSTATES = ("08", "57P01", "57P02", "57P03")
# MySQL client errors: cannot connect (2002, 2003), server gone away (2006), lost connection (2013).
MYSQL_CONNECTION_CODES = (2002, 2003, 2006, 2013)

_window_seconds: float = DEFAULT_WINDOW_SECONDS
# Set while a retried call runs in this thread: store methods call one another, and only the
# outermost call retries, so nested calls never multiply the window.
_retrying: contextvars.ContextVar[bool] = contextvars.ContextVar("store_retrying", default=False)


def set_window_seconds(seconds: float) -> None:
    """The window of every store of this process; the driver and each worker set it from the
    study's config before they use a store."""
    global _window_seconds
    _window_seconds = seconds


def window_seconds() -> float:
    return _window_seconds


class StoreUnreachableError(RuntimeError):
    """A store stayed unreachable for the whole window. Its message is one line."""


def connection_error(error: BaseException) -> BaseException | None:
    """The error in `error`'s chain of causes that says the store cannot be reached, or None."""
    for link in _causes(error):
        if isinstance(link, StoreUnreachableError):
            return None  # its window was spent already
        if getattr(link, "connection_invalidated", False):  # SQLAlchemy: a connection dropped
            return getattr(link, "orig", None) or link
        if _is_driver_connection_error(link):
            return link
    return None


def _causes(error: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or getattr(error, "orig", None) or _context(error)  # SQLAlchemy: .orig


def _context(error: BaseException) -> BaseException | None:
    """The error being handled when `error` was raised, as a traceback shows it: MLflow's
    SqlAlchemyStore.log_batch raises MlflowException(e) inside `except`, without `from e`."""
    return None if error.__suppress_context__ else error.__context__


def _is_driver_connection_error(error: BaseException) -> bool:
    """A DB-API OperationalError or InterfaceError of PostgreSQL or MySQL about the connection.
    SQLite has no server to lose: its errors are never retried."""
    names = {cls.__name__ for cls in type(error).__mro__}
    if not names & {"OperationalError", "InterfaceError"}:
        return False
    driver = type(error).__module__.split(".")[0]
    if driver in ("psycopg", "psycopg2"):
        state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        return state is None or state.startswith(CONNECTION_SQLSTATES)  # None: the client's own
    if driver in ("pymysql", "MySQLdb"):
        return bool(error.args) and error.args[0] in MYSQL_CONNECTION_CODES
    return False


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class StoreRetry:
    """Runs calls to one store, retrying them while it is unreachable, with back-off, for the
    window; then raises StoreUnreachableError. After giving up, calls are tried once (the
    session is ending: its clean-up must not wait again) until one gets through."""

    def __init__(self, key: str, url: str, window: float | None = None):
        self.key = key  # the config key that names the store, e.g. study.storage
        self.url = url
        self._window = window  # None: the process's window (set_window_seconds)
        self.given_up = False
        # time.monotonic() when this process last saw the store down: a refused call, or the
        # call that found it back (a caller asleep in its back-off saw the outage end later).
        self.last_unreachable: float | None = None

    @property
    def window(self) -> float:
        return _window_seconds if self._window is None else self._window

    def call(self, function: Callable[..., T], *args, **kwargs) -> T:
        if _retrying.get():
            return function(*args, **kwargs)
        token = _retrying.set(True)
        try:
            return self._until_reachable(function, args, kwargs)
        finally:
            _retrying.reset(token)

    def unreachable_within(self, seconds: float) -> bool:
        """Whether this process saw the store down in the last `seconds`: a call refused, or
        only just back."""
        last = self.last_unreachable
        return last is not None and time.monotonic() - last < seconds

    def _until_reachable(self, function: Callable[..., T], args, kwargs) -> T:
        first_failure, delay = None, FIRST_DELAY_SECONDS
        while True:
            try:
                result = function(*args, **kwargs)
            except Exception as error:
                cause = connection_error(error)
                if cause is None:
                    raise
                now = time.monotonic()
                self.last_unreachable = now
                if first_failure is None:
                    first_failure = now
                    self._log_outage(cause)
                remaining = (0 if self.given_up else self.window) - (now - first_failure)
                if remaining <= 0:
                    self.given_up = True
                    raise StoreUnreachableError(self._gave_up(cause, now - first_failure)) from error
                time.sleep(min(delay, remaining))
                delay = min(2 * delay, MAX_DELAY_SECONDS)
                continue
            if first_failure is not None:
                self.last_unreachable = back = time.monotonic()
                log.warning("%s: reachable again after %.0f s", self.key, back - first_failure)
            self.given_up = False
            return result

    def _log_outage(self, cause: BaseException) -> None:
        if not self.given_up:
            log.warning(
                "%s %s unreachable (%s); retrying for up to %g s",
                self.key,
                mask_secrets(self.url),
                first_line(cause),
                self.window,
            )

    def _gave_up(self, cause: BaseException, waited: float) -> str:
        return mask_secrets(
            f"{self.key} {self.url} unreachable: {first_line(cause)} "
            f"(gave up after {waited:.0f} s; study.store_retry_seconds={self.window:g})"
        )


@functools.cache
def store_retry(key: str, url: str) -> StoreRetry:
    """One StoreRetry per store and process: every client of a store shares its outage, so the
    session waits the window once, not once per client."""
    return StoreRetry(key, url)
