"""``pids.json``: the processes ``dfs cluster up`` (and ``dfs admin add-meta-shard
--start``) left running in a data folder, so that a later ``dfs cluster down``
or ``status`` finds exactly them.

A recorded PID counts as ours only while it is alive and runs a ``dfs.``
module (a PID the system gave to something else since is left alone).

May import: dfs.local.procs only.
"""

from __future__ import annotations

import json
import os

from dfs.local.procs import Proc, cmdline, pid_alive

PIDFILE = "pids.json"


def path(data: str) -> str:
    return os.path.join(data, PIDFILE)


def record(p: Proc) -> dict:
    return {"name": p.name, "role": p.role, "shard": p.shard, "replica": p.replica, "address": p.address,
            "pid": p.pid, "log": p.log}


def read(data: str) -> list[dict] | None:
    """The records of ``data``'s pid file (None: there is none)."""
    try:
        with open(path(data)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def write(data: str, procs: list[Proc], append: bool = False) -> None:
    """Record ``procs`` (after those already recorded, with ``append``)."""
    recs = (read(data) or []) if append else []
    with open(path(data), "w") as f:
        json.dump(recs + [record(p) for p in procs], f, indent=1)


def running(recs: list[dict]) -> list[dict]:
    """The records whose process still runs a dfs server."""
    return [r for r in recs if pid_alive(r["pid"]) and "dfs." in cmdline(r["pid"])]
