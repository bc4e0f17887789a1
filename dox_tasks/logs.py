"""Structured logs: JSON lines when stderr is not a terminal (containers, log shippers),
Celery's readable format at a terminal; ``DOX_LOG_FORMAT=json|text`` overrides.

Every record written while a step runs carries ``workflow_id``, ``step`` and
``task_id`` — also the lines of modules that know nothing of workflows (the scanner,
the store) — because the runner sets them in a context variable that a filter on
the handlers reads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from pythonjsonlogger.json import JsonFormatter

FIELDS = ("workflow_id", "step", "task_id")
_step: ContextVar[dict[str, str] | None] = ContextVar("dox_step", default=None)


@contextmanager
def step_context(workflow_id: str, step: str, task_id: str | None) -> Iterator[None]:
    token = _step.set({"workflow_id": workflow_id, "step": step, "task_id": task_id or ""})
    try:
        yield
    finally:
        _step.reset(token)


class StepFields(logging.Filter):
    """Copy the running step's ids onto each record (absent outside a step)."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _step.get()
        if current:
            for key, value in current.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


def basic(level: int = logging.WARNING) -> None:
    """The command line's stderr logging (a no-op when the root logger already has handlers).
    Also called by the API app in each ``--workers`` process: uvicorn starts those afresh, so
    the parent's configuration is not there, and a logger with a handler of its own (the
    ``auth.log`` file) would otherwise write nowhere else."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s %(message)s")


def wants_json(stream: object = None) -> bool:
    choice = os.environ.get("DOX_LOG_FORMAT", "").lower()
    if choice in ("json", "text"):
        return choice == "json"
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    return not (isatty and isatty())


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(processName)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "processName": "process"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


def install(logger: logging.Logger) -> None:
    """Give ``logger``'s handlers the step fields, and the JSON format when wanted."""
    as_json = wants_json()
    for handler in logger.handlers:
        if not any(isinstance(f, StepFields) for f in handler.filters):
            handler.addFilter(StepFields())
        if as_json:
            handler.setFormatter(json_formatter())


class AppendLines(logging.Handler):
    """One log line per ``write(2)`` to a file opened with ``O_APPEND``.

    Several server processes (``dox api serve --workers N``) write the same file: with
    ``O_APPEND`` each write lands at the end as one piece, so lines never interleave or
    overwrite each other (``logging.FileHandler`` buffers and may split a long line). Line
    breaks inside a message are escaped, so one record is always one line to ``grep -c``.
    """

    def __init__(self, path: Path, mode: int = 0o640):
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, mode)
        line = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"
        utc = logging.Formatter(line, "%Y-%m-%dT%H:%M:%SZ")
        utc.converter = time.gmtime
        self.setFormatter(utc)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record).replace("\r", "\\r").replace("\n", "\\n") + "\n"
            os.write(self._fd, line.encode("utf-8", "backslashreplace"))
        except Exception:  # noqa: BLE001 - logging must never break the request that logs
            self.handleError(record)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        super().close()


def log_to_file(logger: logging.Logger, path: Path) -> None:
    """Also write ``logger``'s records to ``path`` (once per process, however often called)."""
    if not any(isinstance(h, AppendLines) and h.path == path for h in logger.handlers):
        logger.addHandler(AppendLines(path))
