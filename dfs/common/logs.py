"""Structured logs: one JSON object per line, one file per process, with the
operation id of the request being served.

Every server process calls ``setup(proc)`` once (``proc`` names it in every
line: ``meta[0.1]``, ``data[2]``, ``mgmt[0]``, ``mount``); its stderr is the
per-process log file (``dfs cluster up`` and LocalCluster redirect it; systemd
hands it to the journal). A line looks like::

    {"time": "2026-12-05 03:20:01,123", "level": "INFO", "logger": "dfs.meta.service",
     "proc": "meta[0.1]", "op": "9f1c...", "message": "..."}

``op`` is the id of the operation being served when the line was written: a
metadata request's request id (hex; the one the client retries with), a data
plane request's ``<connection>.<request>``; absent outside requests. It is a
context variable, so every line written while serving a request, in any task
the request awaits, carries it. ``DFS_LOG_FORMAT=text`` gives the classic
one-line text format instead, with the same fields.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys

from pythonjsonlogger.json import JsonFormatter

_op: contextvars.ContextVar[str | None] = contextvars.ContextVar("dfs_op", default=None)

FIELDS = ["asctime", "levelname", "name", "proc", "op", "message"]
TEXT = "%(asctime)s %(proc)s %(levelname)s %(name)s%(op_text)s: %(message)s"


def set_op(op: str | bytes | None) -> contextvars.Token:
    """Name the operation this task is serving (bytes are shown in hex); ``reset_op`` undoes it."""
    if isinstance(op, bytes):
        op = op.hex() if op else None
    return _op.set(op or None)


def reset_op(token: contextvars.Token) -> None:
    _op.reset(token)


def current_op() -> str | None:
    return _op.get()


class _Context(logging.Filter):
    def __init__(self, proc: str) -> None:
        super().__init__()
        self.proc = proc

    def filter(self, record: logging.LogRecord) -> bool:
        op = _op.get()
        record.proc = self.proc
        record.op = op
        record.op_text = f" [op {op}]" if op else ""
        return True


class _Json(JsonFormatter):
    def process_log_record(self, log_record: dict) -> dict:
        log_record.pop("op_text", None)  # the text format's
        if log_record.get("op") is None:
            log_record.pop("op", None)  # outside requests: no empty field
        return log_record


def setup(proc: str, level: int | str = logging.INFO, stream=None, fmt: str | None = None) -> logging.Handler:
    """Log every record of this process to ``stream`` (stderr) as JSON lines, or as text
    with ``fmt="text"`` (default: $DFS_LOG_FORMAT, else json)."""
    fmt = fmt or os.environ.get("DFS_LOG_FORMAT", "json")
    if fmt not in ("json", "text"):
        raise ValueError(f"log format {fmt!r}: json or text")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(_Context(proc))
    if fmt == "json":
        handler.setFormatter(_Json(FIELDS, rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    return handler
